# Live classic snapshot with --snapback: the sync saves what it overwrites; applying the
# snapback rolls the copy back to the snapshot's state (what /dev/VG/snap shows). The same sync
# run again finds everything applied and keeps the snapback; any other file in its place is
# not overwritten.
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
md5sum < $TMP/snapback > $TMP/snapback.md5
run lvmsync --snapback $TMP/snapback /dev/$VG/snap /dev/$VG/copy 2> $TMP/again
cat $TMP/again
grep -q "kept the snapback" $TMP/again || fail "the second run did not keep the snapback"
check_eq "snapback unchanged" "$(md5sum < $TMP/snapback)" "$(cat $TMP/snapback.md5)"
echo "not a snapback" > $TMP/other
expect_error "already exists" lvmsync --snapback $TMP/other /dev/$VG/snap /dev/$VG/copy

step "roll back with the snapback"
run lvmsync --apply $TMP/snapback /dev/$VG/copy
same_content /dev/$VG/copy /dev/$VG/snap
