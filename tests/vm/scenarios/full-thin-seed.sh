# shellcheck shell=sh
# The whole seed workflow on a thin snapshot, with no dd: snapshot (left inactive, as LVM
# creates thin snapshots), `lvmsync --full VG/SNAP DEST` onto a fresh thin LV, writes and a
# discard to the origin, `lvmsync VG/SNAP DEST`: DEST ends equal to the origin. The inactive
# snapshot is read through lvmsync's own read-only device, gone afterwards (also when lvmsync
# is killed mid-copy), and LVM's state is unchanged. The copy maps only the source's mapped
# blocks that hold data (a mapped MiB of zeros and the zero blocks of the pattern are not
# allocated); onto a thin LV fully written before, the zero ranges unmap the rest. The sync
# of the inactive snapshot carries a manifest (the snapshot read through the same kind of
# device), so a copy with one changed sector is refused before any write.
. "$VMTEST_LIB"
VG=fullthin
POOL=$VG-pool-tpool
MiB=1048576
BLK=65536

step "pool (64 KiB blocks), 32 MiB thin origin mapped in 0-12 MiB and 20 MiB + 128 KiB"
make_vg $VG
thin_origin $VG 128M 12M 0
write_at /dev/$VG/origin $((20 * MiB)) $((2 * BLK)) mapped-blocks320-321
run dd if=/dev/zero of=/dev/$VG/origin bs=1M seek=4 count=1 conv=fsync status=none
run sync
src_mapped=$(thin_mapped_sectors $VG-origin)
check_eq "origin maps 12 MiB + 128 KiB (sectors)" "$src_mapped" $(((12 * MiB + 2 * BLK) / 512))

step "an inactive thin snapshot; destinations: a fresh thin LV, and a thin LV fully written"
run lvcreate -y -s -n snap $VG/origin
snap_attr=$(lvs --noheadings -o lv_attr $VG/snap | tr -d ' ')
check_eq "the snapshot is inactive" "$(echo "$snap_attr" | cut -c5)" "-"
[ ! -e /dev/$VG/snap ] || fail "/dev/$VG/snap exists"
run lvcreate -y -V 32M -T $VG/pool -n dest
run lvcreate -y -V 32M -T $VG/pool -n used
fill_pattern /dev/$VG/used 32M 50
check_eq "the used LV maps everything (sectors)" "$(thin_mapped_sectors $VG-used)" $((32 * MiB / 512))
dmsetup table > "$TMP/tables-before"

step "lvmsync --full VG/snap DEST: read through a private read-only device"
save full.txt sh -c "lvmsync --full -v $VG/snap /dev/$VG/dest 2>&1"
cat "$FILES/full.txt"
grep -q "reading it through /dev/mapper/lvmsync-thin" "$FILES/full.txt" ||
  fail "lvmsync did not say it read through its own device"
# Of the 194 mapped blocks, the MiB of zeros (16) and the pattern disk's zero blocks in its
# first 12 MiB outside that MiB (25) read as zeros: 153 blocks (9.5625 MiB) hold data.
grep -q "copied 32.00 MiB in .*: 9.56 MiB of data, 22.44 MiB of zeros" "$FILES/full.txt" ||
  fail "unexpected summary"
check_eq "no lvmsync device left" "$(dmsetup ls | grep -c lvmsync)" 0
check_eq "no metadata snapshot held" "$(held_metadata_root $POOL)" "-"
check_eq "the snapshot is still inactive" \
  "$(lvs --noheadings -o lv_attr $VG/snap | tr -d ' ')" "$snap_attr"
dmsetup table > "$TMP/tables-after"
check_files_eq "device-mapper tables unchanged" "$TMP/tables-after" "$TMP/tables-before"
check_eq "DEST maps the source's mapped blocks that hold data (sectors)" \
  "$(thin_mapped_sectors $VG-dest)" $((153 * BLK / 512))
same_content /dev/$VG/dest /dev/$VG/origin

step "onto a thin LV fully written: its zero ranges are unmapped"
run lvmsync --full $VG/snap /dev/$VG/used
check_eq "the used LV maps what DEST maps (sectors)" \
  "$(thin_mapped_sectors $VG-used)" "$(thin_mapped_sectors $VG-dest)"
same_content /dev/$VG/used /dev/$VG/origin

step "killed mid-copy: the private device is removed"
mkfifo "$TMP/fifo"
lvmsync --full --stdout $VG/snap > "$TMP/fifo" &
pid=$!
exec 8< "$TMP/fifo"
n=0
while [ $n -lt 300 ] && ! dmsetup ls | grep -q lvmsync-thin; do
  usleep 100000
  n=$((n + 1))
done
dmsetup ls | grep -q lvmsync-thin || fail "lvmsync never made its device"
# it has filled the pipe and waits for room
usleep 500000
kill -TERM $pid
wait $pid
rc=$?
exec 8<&-
check_eq "exit status after SIGTERM" $rc 143
check_eq "no lvmsync device left" "$(dmsetup ls | grep -c lvmsync)" 0
check_eq "no metadata snapshot held" "$(held_metadata_root $POOL)" "-"

step "writes and a discard to the origin, then lvmsync VG/snap DEST"
write_at /dev/$VG/origin 0 4096 O1-block0
write_at /dev/$VG/origin $((3 * BLK - 100)) 200 O2-blocks2-3-unaligned
write_at /dev/$VG/origin $((24 * MiB)) 4096 O3-block384-never-mapped
write_at /dev/$VG/origin $((4 * MiB + 8192)) 4096 O4-in-the-zeros
run sync
run blkdiscard -o $((8 * MiB)) -l $MiB /dev/$VG/origin

step "the stream of the inactive snapshot carries a manifest (read through the private device)"
lvmsync --stdout $VG/snap > "$TMP/delta.lvmsync" 2> "$TMP/send-err" || fail "send failed: $(cat "$TMP/send-err")"
grep -q "no manifest" "$TMP/send-err" && fail "the sender sent no manifest: $(cat "$TMP/send-err")"
save info.txt lvmsync info "$TMP/delta.lvmsync"
grep -q "^manifest: " "$FILES/info.txt" || fail "info has no manifest line"
grep -q "^manifest: none" "$FILES/info.txt" && fail "the stream has no manifest"
check_eq "no lvmsync device left" "$(dmsetup ls | grep -c lvmsync)" 0
check_eq "the snapshot is still inactive" \
  "$(lvs --noheadings -o lv_attr $VG/snap | tr -d ' ')" "$snap_attr"

step "a copy with one changed sector is refused before any write; --force overrides"
printf 'tampered sector' | dd of=/dev/$VG/used bs=512 seek=$(((3 * BLK) / 512)) conv=notrunc,fsync status=none
before=$(md5sum < /dev/$VG/used)
expect_error "not a copy of the snapshot" lvmsync $VG/snap /dev/$VG/used
grep -q "at byte $((3 * BLK)) " "$TMP/err" || fail "the refusal does not name byte $((3 * BLK)): $(cat "$TMP/err")"
check_eq "refused destination unchanged" "$(md5sum < /dev/$VG/used)" "$before"
check_eq "no lvmsync device left after the refusal" "$(dmsetup ls | grep -c lvmsync)" 0
run lvmsync --force $VG/snap /dev/$VG/used
same_content /dev/$VG/used /dev/$VG/origin

step "lvmsync VG/snap DEST: the checked sync of the snapshot's copy"
run lvmsync $VG/snap /dev/$VG/dest
check_eq "no lvmsync device left" "$(dmsetup ls | grep -c lvmsync)" 0
same_content /dev/$VG/dest /dev/$VG/origin
run lvmsync $VG/snap /dev/$VG/dest 2> "$TMP/again"
cat "$TMP/again"
grep -q "already" "$TMP/again" || fail "the second sync did not find the changes already applied"
same_content /dev/$VG/dest /dev/$VG/origin
