# shellcheck shell=sh
# A destination that is not the snapshot's copy is refused before anything is written, with one
# line naming the first byte that differs: a copy of an earlier state of the origin (as a copy
# of another snapshot is), and a copy of the snapshot with one sector changed inside a range the
# sync writes. Nothing is written to either; --force applies anyway. The snapshot's real copy
# syncs, and syncing it again finds everything applied.
. "$VMTEST_LIB"
VG=foreign
MiB=1048576

step "origin and its copy before an early write; snapshot and two copies of it"
make_vg $VG
patterned_lvs $VG 16M 11 origin earlier
write_at /dev/$VG/origin $MiB 65536 EARLY
run sync
run lvcreate -y -s -c 4k -L 4M -n snap $VG/origin
run lvcreate -y -Wy -Zy -L 16M -n copy $VG
run lvcreate -y -Wy -Zy -L 16M -n tampered $VG
run dd if=/dev/$VG/snap of=/dev/$VG/copy bs=1M conv=fsync status=none
run dd if=/dev/$VG/snap of=/dev/$VG/tampered bs=1M conv=fsync status=none

step "writes after the snapshot: one inside the early write's range, one at 8 MiB"
write_at /dev/$VG/origin $((MiB + 4096)) 4096 LATE
write_at /dev/$VG/origin $((8 * MiB)) 8192 LATE2
run sync
# One sector of the tampered copy, inside the second 4 KiB chunk written at 8 MiB.
printf 'tampered sector' | dd of=/dev/$VG/tampered bs=512 seek=$(((8 * MiB + 4096) / 512)) conv=notrunc,fsync status=none
run sync

step "the copy of an earlier state is refused, nothing written"
before=$(md5sum < /dev/$VG/earlier)
expect_error "not a copy of the snapshot" lvmsync /dev/$VG/snap /dev/$VG/earlier
grep -q "at byte $((MiB + 4096)) " "$TMP/err" || fail "the refusal does not name byte $((MiB + 4096)): $(cat "$TMP/err")"
grep -q -- "--force" "$TMP/err" || fail "the refusal does not mention --force"
check_eq "refused destination unchanged" "$(md5sum < /dev/$VG/earlier)" "$before"

step "the tampered copy is refused, nothing written"
before=$(md5sum < /dev/$VG/tampered)
expect_error "not a copy of the snapshot" lvmsync /dev/$VG/snap /dev/$VG/tampered
grep -q "at byte $((8 * MiB + 4096)) " "$TMP/err" || fail "the refusal does not name byte $((8 * MiB + 4096)): $(cat "$TMP/err")"
check_eq "refused destination unchanged" "$(md5sum < /dev/$VG/tampered)" "$before"
sh -c "lvmsync --stdout /dev/$VG/snap | lvmsync --apply - /dev/$VG/tampered" 2> "$TMP/pipe-err" &&
  fail "a stream through a pipe was applied to the tampered copy"
cat "$TMP/pipe-err"
grep -q "at byte $((8 * MiB + 4096)) .*cannot be told from a pipe" "$TMP/pipe-err" || fail "the pipe refusal does not say why"
check_eq "refused destination unchanged (stream through a pipe)" "$(md5sum < /dev/$VG/tampered)" "$before"

step "--force applies anyway: the tampered sector was inside a written range"
run lvmsync --force /dev/$VG/snap /dev/$VG/tampered
same_content /dev/$VG/tampered /dev/$VG/origin

step "the snapshot's copy syncs; again, everything is already applied"
run lvmsync /dev/$VG/snap /dev/$VG/copy
same_content /dev/$VG/copy /dev/$VG/origin
run lvmsync /dev/$VG/snap /dev/$VG/copy 2> "$TMP/again"
cat "$TMP/again"
grep -q "already" "$TMP/again" || fail "the second sync did not find the changes already applied"
