# shellcheck shell=sh
# Several thin snapshots: two snapshots of one origin taken at different times
# (each lists the changes since itself), and a snapshot of a snapshot (its
# origin is the older snapshot, written to and discarded in); each is synced
# to a linear copy that ends equal to its origin. Then the refusals: an
# inactive snapshot is still found by name but an inactive origin is refused,
# and a thin LV without an origin, the pool, a plain LV and a plain LV passed
# as thin metadata are refused with a message saying what they are.
. "$VMTEST_LIB"
VG=tsos
POOL=$VG-pool-tpool
MiB=1048576
BLK=65536

step "pool (64 KiB blocks), 32 MiB origin mapped in 0-8 MiB; s1, writes A, s2, writes B"
make_vg $VG
thin_origin $VG 64M 8M 5
run lvcreate -y -s -n s1 $VG/origin
run lvchange -ay -K $VG/s1
WRITES=$FILES/writes-A.txt write_at /dev/$VG/origin $((10 * BLK)) 4096 A1-block10
WRITES=$FILES/writes-A.txt write_at /dev/$VG/origin $((16 * MiB)) 4096 A2-block256-never-mapped
run sync
run lvcreate -y -s -n s2 $VG/origin
run lvchange -ay -K $VG/s2
WRITES=$FILES/writes-B.txt write_at /dev/$VG/origin 0 4096 B1-block0
WRITES=$FILES/writes-B.txt write_at /dev/$VG/origin $((10 * BLK + 4096)) 4096 B2-block10-again
WRITES=$FILES/writes-B.txt write_at /dev/$VG/origin $((24 * MiB)) 4096 B3-block384-never-mapped
run sync

step "each snapshot lists the changes since itself"
expected_extents 64k 32M "$FILES/writes-B.txt" > "$FILES/expected-s2.txt"
save changes-s2.txt lvmsync changes /dev/$VG/s2
check_files_eq "s2: writes B" "$FILES/changes-s2.txt" "$FILES/expected-s2.txt"
cat "$FILES/writes-A.txt" "$FILES/writes-B.txt" > "$TMP/writes-AB"
expected_extents 64k 32M "$TMP/writes-AB" > "$FILES/expected-s1.txt"
save changes-s1.txt lvmsync changes /dev/$VG/s1
check_files_eq "s1: writes A and B" "$FILES/changes-s1.txt" "$FILES/expected-s1.txt"

step "s1s, a snapshot of s1; writes C and a discard to s1"
run lvcreate -y -s -n s1s $VG/s1
run lvchange -ay -K $VG/s1s
for lv in dest dest1s; do run lvcreate -y -Wy -Zy -L 32M -n $lv $VG; done
run dd if=/dev/$VG/s2 of=/dev/$VG/dest bs=1M iflag=direct conv=fsync status=none
run dd if=/dev/$VG/s1s of=/dev/$VG/dest1s bs=1M iflag=direct conv=fsync status=none
WRITES=$FILES/writes-C.txt write_at /dev/$VG/s1 $((3 * BLK + 5)) 5000 C1-block3
WRITES=$FILES/writes-C.txt write_at /dev/$VG/s1 $((28 * MiB)) 4096 C2-block448-never-mapped
run sync
run blkdiscard -o $((4 * MiB)) -l $MiB /dev/$VG/s1
{
  expected_extents 64k 32M "$FILES/writes-C.txt"
  echo "$((4 * MiB)) $MiB zero"
} | sort -n > "$FILES/expected-s1s.txt"
save changes-s1s.txt lvmsync changes /dev/$VG/s1s
check_files_eq "s1s: writes C, discard" "$FILES/changes-s1s.txt" "$FILES/expected-s1s.txt"

step "sync from the newer snapshot of the origin, and from the snapshot of the snapshot"
run lvmsync /dev/$VG/s2 /dev/$VG/dest
run lvmsync /dev/$VG/s1s /dev/$VG/dest1s
check_eq "no metadata snapshot held" "$(held_metadata_root $POOL)" "-"

step "an inactive snapshot is found by name; an inactive origin is refused"
run lvchange -an $VG/s2
[ -e /dev/$VG/s2 ] && fail "/dev/$VG/s2 still exists after deactivation"
save changes-s2-inactive.txt lvmsync changes /dev/$VG/s2
check_files_eq "inactive s2 by /dev/VG/LV" "$FILES/changes-s2-inactive.txt" "$FILES/expected-s2.txt"
save changes-s2-vglv.txt lvmsync changes $VG/s2
check_files_eq "inactive s2 by VG/LV" "$FILES/changes-s2-vglv.txt" "$FILES/expected-s2.txt"
run lvchange -an $VG/s1
expect_error "its origin $VG/s1 is not active" lvmsync changes /dev/$VG/s1s

step "what is not a thin snapshot is refused, and the destinations stay as synced"
expect_error "$VG/origin is not a snapshot (it is a thin LV without an origin)" \
  lvmsync /dev/$VG/origin /dev/$VG/dest
expect_error "$VG/pool is not a snapshot (it is a thin pool)" lvmsync changes $VG/pool
expect_error "$VG/dest1s is not a snapshot (it is a linear LV)" lvmsync /dev/$VG/dest1s /dev/$VG/dest
expect_error "not thin-pool metadata" \
  lvmsync changes --thin-metadata /dev/$VG/dest1s --thin-ids 2:1
check_eq "no metadata snapshot held" "$(held_metadata_root $POOL)" "-"
same_content /dev/$VG/dest /dev/$VG/origin
run lvchange -ay -K $VG/s1
same_content /dev/$VG/dest1s /dev/$VG/s1
