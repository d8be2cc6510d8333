# shellcheck shell=sh
# Classic (dm-snapshot) snapshot, LVM only: the exception store holds exactly
# the 4 KiB chunks the writes touched, the snapshot keeps the old data, and the
# artefacts (COW store image, origin before/after, LVM/dm reports) are kept
# for the fixtures (capture-fixtures.sh).
. "$VMTEST_LIB"
VG=capvg
SEED=64 # the labelled half of the pattern disk: compresses well

step "origin LV of 16 MiB filled with pattern data, 4 KiB-chunk snapshot"
make_vg $VG
run lvcreate -y -Wy -Zy -L 16M -n origin $VG
fill_pattern /dev/$VG/origin 16M $SEED
run dd if=/dev/$VG/origin of="$FILES/origin-before.img" bs=1M iflag=direct status=none
run lvcreate -y -s -c 4k -L 8M -n snap $VG/origin

step "writes to the origin"
write_at /dev/$VG/origin 0 512 W1-chunk0
write_at /dev/$VG/origin 21480 100 W2-chunk5-unaligned
write_at /dev/$VG/origin 4095 2 W3-chunks0-1
write_at /dev/$VG/origin 1048576 4096 W4-chunk256
write_at /dev/$VG/origin 5249049 50000 W5-chunks1281-1293
write_at /dev/$VG/origin 8388608 1052672 W6-chunks2048-2304-two-metadata-areas
write_at /dev/$VG/origin 16773120 4096 W7-last-chunk4095
write_at /dev/$VG/origin 2048 16 W8-chunk0-again
run sync

step "reports"
save dmsetup-table.txt dmsetup table
save dmsetup-status.txt dmsetup status
save dmsetup-ls-tree.txt dmsetup ls --tree
save lvs.json lvs -a --reportformat json --units b --nosuffix \
  -o lv_name,vg_name,lv_attr,lv_size,origin,snap_percent,chunk_size,lv_dm_path,devices $VG
save vgcfgbackup.log vgcfgbackup -f "$FILES/$VG.vgcfg" $VG
run dd if=/dev/mapper/$VG-snap-cow of="$FILES/snap-cow.img" bs=1M iflag=direct status=none
run dd if=/dev/$VG/origin of="$FILES/origin-after.img" bs=1M iflag=direct status=none

step "checks"
check_eq "COW header (magic valid version chunk-sectors)" \
  "$(od -A n -t x4 -N 16 "$FILES/snap-cow.img" | tr -s ' ' | sed 's/^ //')" "70416e53 00000001 00000001 00000008"
grep -q "snapshot .* P 8\$" "$FILES/dmsetup-table.txt" || fail "no persistent 8-sector snapshot target in dmsetup table"
cow_old_chunks "$FILES/snap-cow.img" | chunks_to_extents 4k 16M > "$TMP/cow-extents"
expected_extents 4k 16M > "$FILES/expected-extents.txt"
check_files_eq "exception store vs writes" "$TMP/cow-extents" "$FILES/expected-extents.txt"
same_content /dev/$VG/snap "$FILES/origin-before.img"
same_content /dev/$VG/origin "$FILES/origin-after.img"
