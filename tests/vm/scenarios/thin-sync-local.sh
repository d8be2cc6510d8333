# shellcheck shell=sh
# Thin snapshot synced to a local linear LV: the change list names exactly the
# 64 KiB blocks written to the origin (mapped and never-mapped regions), the
# discarded blocks (zero), and the blocks written to the snapshot itself (data
# where the origin has data, zero where only the snapshot mapped one); after
# `lvmsync SNAP DEST` the destination equals the origin, and no metadata
# snapshot is left held in the pool; `--dry-run` lists the same ranges and
# writes nothing.
. "$VMTEST_LIB"
VG=tsync
POOL=$VG-pool-tpool
MiB=1048576
BLK=65536

step "pool (64 KiB blocks), 32 MiB thin origin mapped in 0-12 MiB and 20 MiB + 128 KiB"
make_vg $VG
thin_origin $VG 64M 12M 0
WRITES=$TMP/writes-before write_at /dev/$VG/origin $((20 * MiB)) $((2 * BLK)) before-snap-blocks320-321
run sync
run lvcreate -y -s -n snap $VG/origin
run lvchange -ay -K $VG/snap

step "writes to the snapshot (data where the origin is mapped, zero where it is not)"
WRITES=$FILES/writes-snap.txt write_at /dev/$VG/snap $((8 * MiB)) 4096 S1-block128-mapped
WRITES=$FILES/writes-snap-unmapped.txt write_at /dev/$VG/snap $((28 * MiB)) 4096 S2-block448-unmapped
run sync

step "destination: a linear LV holding a copy of the snapshot"
run lvcreate -y -Wy -Zy -L 32M -n dest $VG
run dd if=/dev/$VG/snap of=/dev/$VG/dest bs=1M iflag=direct conv=fsync status=none

step "writes and discards to the origin"
write_at /dev/$VG/origin 0 4096 O1-block0
write_at /dev/$VG/origin $((3 * BLK - 100)) 200 O2-blocks2-3-unaligned
write_at /dev/$VG/origin $((320 * BLK + BLK + 10)) 10 O3-block321
write_at /dev/$VG/origin $((24 * MiB)) 4096 O4-block384-never-mapped
write_at /dev/$VG/origin $((32 * MiB - 4096)) 4096 O5-last-block511-never-mapped
run sync
run blkdiscard -o $((4 * MiB)) -l $MiB /dev/$VG/origin      # blocks 64-79, mapped in both
run blkdiscard -o $((16 * MiB)) -l $MiB /dev/$VG/origin     # never mapped: no change
check_eq "discarded range reads zeros" \
  "$(dd if=/dev/$VG/origin bs=64k skip=64 count=16 iflag=direct status=none | tr -d '\0' | wc -c)" 0

step "a write still in the page cache when lvmsync starts"
# the origin is held open (as by a running VM), so dd's close is not the last
# one and does not flush the written page
exec 7< /dev/$VG/origin
write_at /dev/$VG/origin $((10 * MiB)) 4096 O6-block160-unflushed

step "lvmsync changes: exactly the written, discarded and snapshot-written blocks"
cat "$WRITES" "$FILES/writes-snap.txt" > "$TMP/data-writes"
{
  expected_extents 64k 32M "$TMP/data-writes"
  echo "$((4 * MiB)) $MiB zero"
  echo "$((28 * MiB)) $BLK zero"
} | sort -n > "$FILES/expected-changes.txt"
save changes.txt lvmsync changes /dev/$VG/snap
check_files_eq "lvmsync changes vs writes" "$FILES/changes.txt" "$FILES/expected-changes.txt"
save changes-mapper.txt lvmsync changes /dev/mapper/$VG-snap
check_files_eq "same list through /dev/mapper" "$FILES/changes-mapper.txt" "$FILES/expected-changes.txt"
check_eq "no metadata snapshot held after 'changes'" "$(held_metadata_root $POOL)" "-"

step "lvmsync --dry-run: the same ranges, nothing written, nothing held"
dest_md5=$(md5sum < /dev/$VG/dest)
save dry-run.txt lvmsync --dry-run /dev/$VG/snap /dev/$VG/dest
check_files_eq "dry-run ranges vs writes" "$FILES/dry-run.txt" "$FILES/expected-changes.txt"
check_eq "destination untouched by --dry-run" "$(md5sum < /dev/$VG/dest)" "$dest_md5"
check_eq "no metadata snapshot held after --dry-run" "$(held_metadata_root $POOL)" "-"

step "lvmsync SNAP DEST"
run lvmsync -v /dev/$VG/snap /dev/$VG/dest
check_eq "no metadata snapshot held after the sync" "$(held_metadata_root $POOL)" "-"
same_content /dev/$VG/dest /dev/$VG/origin
