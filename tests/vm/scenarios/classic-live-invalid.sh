# An overflowed (invalid) classic snapshot is refused and the destination stays unchanged;
# a plain LV is refused with a message naming what it is.
. "$VMTEST_LIB"
VG=badvg
SEED=9

step "origin, copy, reference copy, a 4 MiB snapshot overflowed by 6 MiB of writes"
make_vg $VG
patterned_lvs $VG 8M $SEED origin copy ref
run lvcreate -y -s -c 4k -L 4M -n snap $VG/origin
run dd if=/dev/zero of=/dev/$VG/origin bs=1M count=6 conv=fsync status=none
run sync
dmsetup status $(dm_name $VG snap) | grep -q Invalid || fail "snapshot did not overflow"

step "sync refused"
expect_fail sh -c "lvmsync /dev/$VG/snap /dev/$VG/copy 2> $FILES/invalid.err"
cat "$FILES/invalid.err"
grep -q "snapshot $VG/snap is invalid (it overflowed)" "$FILES/invalid.err" ||
  fail "no clear message for an invalid snapshot"
expect_fail sh -c "lvmsync --stdout /dev/$VG/snap > $TMP/out 2> /dev/null"

step "a plain LV is not a snapshot"
expect_fail sh -c "lvmsync /dev/$VG/copy /dev/$VG/origin 2> $FILES/plain.err"
cat "$FILES/plain.err"
grep -q "$VG/copy is not a snapshot (it is a linear LV)" "$FILES/plain.err" ||
  fail "no clear message for a plain LV"
expect_fail sh -c "lvmsync /dev/$VG/origin /dev/$VG/copy 2> $FILES/origin.err"
grep -q "$VG/origin is not a snapshot" "$FILES/origin.err" || fail "origin accepted as snapshot"

step "the destination is unchanged"
same_content /dev/$VG/copy /dev/$VG/ref
