# shellcheck shell=sh
# Thin snapshot sent to a file (`lvmsync --stdout`) and applied later
# (`lvmsync --apply FILE DEST`), in format 4 (plain and compressed) and format
# 3, onto thin destinations in the same pool: each ends equal to the origin.
# Format 4 zero records discard the blocks on the thin destination (it maps
# exactly what the origin maps); format 3 has no zero record, so the zeros are
# written and stay mapped.
. "$VMTEST_LIB"
VG=tstdout
POOL=$VG-pool-tpool
MiB=1048576
BLK=65536

step "pool (64 KiB blocks), 32 MiB thin origin mapped in 0-12 MiB, thin snapshot"
make_vg $VG
thin_origin $VG 96M 12M 0
run lvcreate -y -s -n snap $VG/origin
run lvchange -ay -K $VG/snap
write_at /dev/$VG/snap $((28 * MiB)) 4096 S1-snapshot-only-block448
run sync

step "thin destinations holding the snapshot's contents"
# a full copy (every block mapped) and two thin snapshots of the snapshot
run lvcreate -y -V 32M -T $VG/pool -n copy4
run dd if=/dev/$VG/snap of=/dev/$VG/copy4 bs=1M iflag=direct conv=fsync status=none
for d in snap4z snap3; do
  run lvcreate -y -s -n $d $VG/snap
  run lvchange -ay -K $VG/$d
done

step "writes and a discard to the origin"
write_at /dev/$VG/origin 0 4096 O1-block0
write_at /dev/$VG/origin $((5 * BLK + 7)) 100000 O2-blocks5-6
write_at /dev/$VG/origin $((20 * MiB)) 4096 O3-block320-never-mapped
run sync
run blkdiscard -o $((2 * MiB)) -l $((2 * MiB)) /dev/$VG/origin
save changes.txt lvmsync changes /dev/$VG/snap
zero_sectors=$(awk '$3 == "zero" { s += $2 } END { print s / 512 }' "$FILES/changes.txt")
check_eq "zero ranges (discard + snapshot-only block), sectors" "$zero_sectors" $(((2 * MiB + BLK) / 512))
origin_mapped=$(thin_mapped_sectors $VG-origin)

step "lvmsync --stdout: format 4, format 4 compressed, format 3"
run sh -c "lvmsync --stdout /dev/$VG/snap > $TMP/f4"
run sh -c "lvmsync --stdout -z /dev/$VG/snap > $TMP/f4z"
run sh -c "lvmsync --stdout --format 3 /dev/$VG/snap > $TMP/f3"
check_eq "no metadata snapshot held" "$(held_metadata_root $POOL)" "-"
ls -l "$TMP"/f4 "$TMP"/f4z "$TMP"/f3
check_eq "format 4 header" "$(head -c 17 "$TMP/f4")" "lvmsync PROTO[4]"
check_eq "format 3 header" "$(head -c 17 "$TMP/f3")" "lvmsync PROTO[3]"
[ "$(stat -c %s "$TMP/f4z")" -lt "$(stat -c %s "$TMP/f4")" ] || fail "the compressed stream is not smaller"
# format 3 carries the zero ranges as data
[ "$(stat -c %s "$TMP/f3")" -gt "$(awk '{ s += $2 } END { print s }' "$FILES/changes.txt")" ] ||
  fail "the format 3 stream does not carry the zero ranges as data"

step "lvmsync --apply FILE DEST, one destination per stream"
run lvmsync --apply "$TMP/f4" /dev/$VG/copy4
run lvmsync --apply "$TMP/f4z" /dev/$VG/snap4z
run lvmsync --apply "$TMP/f3" /dev/$VG/snap3
same_content /dev/$VG/copy4 /dev/$VG/origin
same_content /dev/$VG/snap4z /dev/$VG/origin
same_content /dev/$VG/snap3 /dev/$VG/origin

step "what the thin destinations map"
check_eq "format 4 on a full copy: mapped sectors" "$(thin_mapped_sectors $VG-copy4)" $((32 * MiB / 512 - zero_sectors))
check_eq "format 4 -z on a snapshot of the snapshot: mapped sectors (as the origin)" \
  "$(thin_mapped_sectors $VG-snap4z)" "$origin_mapped"
check_eq "format 3 on a snapshot of the snapshot: mapped sectors (zeros written)" \
  "$(thin_mapped_sectors $VG-snap3)" $((origin_mapped + zero_sectors))
