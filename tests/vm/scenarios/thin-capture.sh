# shellcheck shell=sh
# Thin pool with a thin snapshot, LVM only: thin_delta between the snapshot and
# its origin names exactly the 64 KiB blocks written after the snapshot, and
# the artefacts (metadata device images live with a held metadata snapshot and
# offline, thin_dump/thin_delta XML, lvs JSON, dmsetup output, write lists) are
# kept for the fixtures (capture-fixtures.sh).
. "$VMTEST_LIB"
VG=thinvg
POOL=$VG-pool-tpool

step "pool (64 KiB blocks), 128 MiB thin LV with data, thin snapshot"
make_vg $VG
run lvcreate -y --type thin-pool -L 64M -c 64k --poolmetadatasize 4M -n pool $VG
run lvcreate -y -V 128M -T $VG/pool -n thin1
fill_pattern /dev/$VG/thin1 8M 64
echo "# before the snapshot: bytes 0-8MiB filled from the pattern disk" > "$FILES/writes-before.txt"
WRITES=$FILES/writes-before.txt write_at /dev/$VG/thin1 104857600 4096 T0-before-snap-block1600
run sync
run lvcreate -y -s -n tsnap $VG/thin1
run lvchange -ay -K $VG/tsnap

step "writes after the snapshot, to the origin (writes.txt) and the snapshot (writes-snap.txt)"
write_at /dev/$VG/thin1 0 4096 T1-block0
write_at /dev/$VG/thin1 3145828 200 T2-block48-unaligned
write_at /dev/$VG/thin1 4194300 8 T3-blocks63-64
write_at /dev/$VG/thin1 125829120 65536 T4-block1920-unmapped-before
write_at /dev/$VG/thin1 134213632 4096 T5-last-block2047
WRITES=$FILES/writes-snap.txt write_at /dev/$VG/tsnap 5242880 4096 S1-snapshot-block80
run sync

step "reports"
save lvs.json lvs -a --reportformat json --units b --nosuffix \
  -o lv_name,vg_name,lv_attr,lv_size,segtype,pool_lv,origin,thin_id,chunk_size,lv_dm_path,devices $VG
THIN_ID=$(run lvs --noheadings -o thin_id $VG/thin1 | tr -d ' ')
SNAP_ID=$(run lvs --noheadings -o thin_id $VG/tsnap | tr -d ' ')
echo "thin1=$THIN_ID tsnap=$SNAP_ID" > "$FILES/thin-ids.txt"
save dmsetup-table.txt dmsetup table
save dmsetup-ls-tree.txt dmsetup ls --tree
save pool-status-before.txt dmsetup status $POOL
save vgcfgbackup.log vgcfgbackup -f "$FILES/$VG.vgcfg" $VG

step "live metadata through a held metadata snapshot"
run dmsetup message $POOL 0 reserve_metadata_snap
save pool-status-held.txt dmsetup status $POOL
save thin_dump-held.xml thin_dump --metadata-snap /dev/mapper/$VG-pool_tmeta
save thin_delta.xml thin_delta --metadata-snap --snap1 "$SNAP_ID" --snap2 "$THIN_ID" /dev/mapper/$VG-pool_tmeta
run dd if=/dev/mapper/$VG-pool_tmeta of="$FILES/tmeta-held.img" bs=1M iflag=direct status=none
run dmsetup message $POOL 0 release_metadata_snap
save pool-status-released.txt dmsetup status $POOL

step "offline metadata (pool inactive, metadata LV active read-only)"
run vgchange -an $VG
run lvchange -ay -y $VG/pool_tmeta
save thin_dump-offline.xml thin_dump /dev/$VG/pool_tmeta
run dd if=/dev/$VG/pool_tmeta of="$FILES/tmeta.img" bs=1M iflag=direct status=none
run lvchange -an $VG/pool_tmeta

step "checks"
held=$(awk '{ print $7 }' "$FILES/pool-status-held.txt")
[ "$held" -gt 0 ] 2> /dev/null || fail "no held metadata root in pool status: $(cat "$FILES/pool-status-held.txt")"
check_eq "metadata snapshot released" "$(awk '{ print $7 }' "$FILES/pool-status-released.txt")" "-"
check_eq "superblock magic of the metadata image" "$(od -A n -t u8 -j 32 -N 8 "$FILES/tmeta.img" | tr -d ' ')" 27022010
sed -n 's/.*<\(different\|left_only\|right_only\) begin="\([0-9]*\)" length="\([0-9]*\)".*/\2 \3/p' "$FILES/thin_delta.xml" |
  awk '{ for (b = $1; b < $1 + $2; b++) print b }' | chunks_to_extents 64k 128M > "$TMP/delta-extents"
cat "$FILES/writes.txt" "$FILES/writes-snap.txt" > "$TMP/all-writes"
expected_extents 64k 128M "$TMP/all-writes" > "$FILES/expected-extents.txt"
check_files_eq "thin_delta vs writes" "$TMP/delta-extents" "$FILES/expected-extents.txt"
grep -q '<right_only begin="1920" length="1"/>' "$FILES/thin_delta.xml" || fail "block 1920 is not right_only"
