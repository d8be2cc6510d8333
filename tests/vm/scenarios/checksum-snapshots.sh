# shellcheck shell=sh
# lvmsync --checksum with a snapshot as SOURCE, on real LVM. A classic snapshot of an origin
# written after it was taken, synced onto a copy that differs in two places: only those two
# blocks are sent, and DEST ends equal to the snapshot, not to the origin. Then an inactive
# thin snapshot (as LVM creates them) as SOURCE: read through lvmsync's own read-only device,
# gone afterwards; DEST ends equal to it. Last, a MiB discarded in SOURCE is sent as a zero
# range, which a thin DEST unmaps.
. "$VMTEST_LIB"
VG=ckvg
SEED=31
MiB=1048576

step "origin and copy (32 MiB), a classic snapshot, then writes to the origin and to the copy"
make_vg $VG
patterned_lvs $VG 32M $SEED origin copy
run lvcreate -y -s -c 4k -L 8M -n snap $VG/origin
write_at /dev/$VG/origin 4096 8192 O1-after-the-snapshot
write_at /dev/$VG/copy 100000 10 C1-block24
write_at /dev/$VG/copy $((32 * MiB - 4096)) 4096 C2-last-block
run sync

step "lvmsync --checksum SNAP DEST: the two differing blocks are sent"
save classic.txt sh -c "lvmsync --checksum /dev/$VG/snap /dev/$VG/copy 2>&1"
cat "$FILES/classic.txt"
grep -q "2 ranges differed: sent 8.00 KiB" "$FILES/classic.txt" || fail "unexpected summary"
run lvmsync verify --chunk 4K /dev/$VG/snap /dev/$VG/copy
same_content /dev/$VG/copy /dev/$VG/snap

step "an inactive thin snapshot as SOURCE"
run lvcreate -y --type thin-pool -L 96M -c 64k --poolmetadatasize 4M -n pool $VG
run lvcreate -y -V 32M -T $VG/pool -n thin
fill_pattern /dev/$VG/thin 32M $SEED
run lvcreate -y -s -n tsnap $VG/thin
check_eq "the snapshot is inactive" "$(lvs --noheadings -o lv_attr $VG/tsnap | tr -d ' ' | cut -c5)" "-"
write_at /dev/$VG/thin 0 4096 T1-after-the-snapshot
write_at /dev/$VG/copy $((1000 * 4096)) 4096 C3-block1000
run sync
save thin.txt sh -c "lvmsync --checksum $VG/tsnap /dev/$VG/copy 2>&1"
cat "$FILES/thin.txt"
grep -q "1 ranges differed: sent 4.00 KiB" "$FILES/thin.txt" || fail "unexpected summary"
check_eq "no lvmsync device left" "$(dmsetup ls | grep -c lvmsync)" 0
same_content /dev/$VG/copy /dev/$VG/snap

step "blocks that are zeros in SOURCE: a thin DEST unmaps them"
run lvcreate -y -V 32M -T $VG/pool -n tdest
# No block of zeros in that MiB (the pattern has some): every block of it will differ.
run dd if=/dev/urandom of=/dev/$VG/thin bs=1M seek=8 count=1 oflag=direct status=none
run dd if=/dev/$VG/thin of=/dev/$VG/tdest bs=1M oflag=direct status=none
run blkdiscard -o $((8 * MiB)) -l $MiB /dev/$VG/thin
run sync
mapped_before=$(thin_mapped_sectors $VG-tdest)
check_eq "DEST maps all of its 32 MiB (sectors)" "$mapped_before" $((32 * MiB / 512))
run lvmsync --checksum /dev/$VG/thin /dev/$VG/tdest
check_eq "DEST no longer maps the MiB of zeros (sectors)" \
  "$(thin_mapped_sectors $VG-tdest)" $((31 * MiB / 512))
same_content /dev/$VG/tdest /dev/$VG/thin
