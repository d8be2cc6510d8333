# shellcheck shell=sh
# Thin snapshot, offline change source: the pool metadata is copied to an
# image with the pool inactive (as a backup tool would), then
# `lvmsync changes --thin-metadata IMG --thin-ids SNAP:ORIGIN` lists exactly
# the 64 KiB blocks written or discarded after the snapshot, the stream
# brings a copy of the snapshot up to date, and the live form
# `lvmsync changes /dev/VG/SNAP` agrees.
. "$VMTEST_LIB"
VG=tmvg
SIZE=32M
BS=65536

step "pool (64 KiB blocks), $SIZE thin LV with data, thin snapshot, a thick copy of it"
make_vg $VG
run lvcreate -y --type thin-pool -L 64M -c 64k --poolmetadatasize 4M -n pool $VG
run lvcreate -y -V $SIZE -T $VG/pool -n thin1
fill_pattern /dev/$VG/thin1 16M 0 # blocks 256-511 stay unprovisioned
run lvcreate -y -s -n tsnap $VG/thin1
run lvchange -ay -K $VG/tsnap
run lvcreate -y -Wy -Zy -L $SIZE -n copy $VG
run dd if=/dev/$VG/tsnap of=/dev/$VG/copy bs=1M iflag=direct oflag=direct status=none

step "writes and a discard to the origin"
write_at /dev/$VG/thin1 0 4096 T1-block0
write_at /dev/$VG/thin1 3145828 200 T2-block48-unaligned
write_at /dev/$VG/thin1 $((BS * 64 - 4)) 8 T3-blocks63-64
write_at /dev/$VG/thin1 $((BS * 300)) $((BS * 2)) T4-blocks300-301-unprovisioned-before
write_at /dev/$VG/thin1 $((BS * 512 - 4096)) 4096 T5-last-block511
run blkdiscard -o $((BS * 100)) -l $((BS * 4)) /dev/$VG/thin1
echo "$((BS * 100)) $((BS * 4)) D1-discard-blocks100-103" >> "$WRITES"
run sync
SNAP_ID=$(run lvs --noheadings -o thin_id $VG/tsnap | tr -d ' ')
ORIGIN_ID=$(run lvs --noheadings -o thin_id $VG/thin1 | tr -d ' ')

step "metadata image from the inactive pool"
run vgchange -an $VG
run lvchange -ay -y $VG/pool_tmeta
run dd if=/dev/$VG/pool_tmeta of="$TMP/tmeta.img" bs=1M iflag=direct status=none
run lvchange -an $VG/pool_tmeta
run vgchange -ay $VG
run lvchange -ay -K $VG/tsnap

# the set of blocks listed, whatever their kind (a discarded range may be sent as zeros)
blocks_of() { awk -v bs=$BS '{ for (o = $1; o < $1 + $2; o += bs) print int(o / bs) }' "$1" | sort -n -u; }
expected_extents 64k $SIZE > "$FILES/expected-extents.txt"
blocks_of "$FILES/expected-extents.txt" > "$TMP/expected-blocks"

step "lvmsync changes --thin-metadata"
save changes.txt lvmsync changes --thin-metadata "$TMP/tmeta.img" --thin-ids "$SNAP_ID:$ORIGIN_ID" \
  --data-source /dev/$VG/thin1
blocks_of "$FILES/changes.txt" > "$TMP/changed-blocks"
check_files_eq "blocks listed by --thin-metadata" "$TMP/changed-blocks" "$TMP/expected-blocks"
grep -qx "$((BS * 100)) $((BS * 4)) zero" "$FILES/changes.txt" || fail "the discarded blocks are not listed as zero"

step "stream from the offline source, applied to the copy"
run lvmsync --stdout --thin-metadata "$TMP/tmeta.img" --thin-ids "$SNAP_ID:$ORIGIN_ID" \
  --data-source /dev/$VG/thin1 > "$TMP/stream"
echo "stream: $(stat -c %s "$TMP/stream") bytes"
run lvmsync --apply "$TMP/stream" /dev/$VG/copy
same_content /dev/$VG/copy /dev/$VG/thin1

step "live form: lvmsync changes /dev/$VG/tsnap"
save changes-live.txt lvmsync changes /dev/$VG/tsnap
check_files_eq "live thin changes vs offline" "$FILES/changes-live.txt" "$FILES/changes.txt"
