# Live classic snapshot with --snapback: the sync saves what it overwrites; applying the
# snapback rolls the copy back to the snapshot's state (what /dev/VG/snap shows).
. "$VMTEST_LIB"
VG=sbvg
SEED=7

step "origin, copy, snapshot, writes"
make_vg $VG
patterned_lvs $VG 16M $SEED origin copy
run lvcreate -y -s -c 4k -L 4M -n snap $VG/origin
write_at /dev/$VG/origin 0 4096 S1
write_at /dev/$VG/origin 9000000 300000 S2
run sync

step "sync with a snapback file"
run lvmsync --snapback $TMP/snapback /dev/$VG/snap /dev/$VG/copy
same_content /dev/$VG/copy /dev/$VG/origin
expect_fail lvmsync --snapback $TMP/snapback /dev/$VG/snap /dev/$VG/copy

step "roll back with the snapback"
run lvmsync --apply $TMP/snapback /dev/$VG/copy
same_content /dev/$VG/copy /dev/$VG/snap
