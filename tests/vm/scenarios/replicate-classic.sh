# shellcheck shell=sh
# `lvmsync replicate VG/LV DEST` on a plain LV (classic snapshots), three rounds with writes
# between them: the first sends the whole snapshot, the later ones the changes in the base's
# exception store, read from the new snapshot; after each, DEST equals the round's snapshot
# and exactly one snapshot is left, tagged as DEST's base. Then the base overflows between two
# rounds: the next run says so, copies the whole volume, and DEST is exact again. A snapshot
# the volume group has no room for is refused before anything is made.
. "$VMTEST_LIB"
VG=rclassic
MiB=1048576
DEST=/dev/$VG/standby

snaps() { lvs --noheadings -o lv_name,lv_tags $VG | awk '$1 ~ /-lvmsync-/ { print $1, $2 }'; }

round() {
  step "round $1 ${2:-}"
  # shellcheck disable=SC2086 # $2: options
  save "round$1.txt" sh -c "lvmsync replicate -v ${2:-} $VG/origin $DEST 2>&1"
  cat "$FILES/round$1.txt"
  grep -q "$DEST now holds $VG/origin-lvmsync-$1" "$FILES/round$1.txt" || fail "no summary"
  check_eq "snapshots after round $1" "$(snaps)" "origin-lvmsync-$1 lvmsync-base:$DEST"
  same_content $DEST /dev/$VG/origin-lvmsync-$1
}

step "origin and a standby LV of other data"
make_vg $VG
patterned_lvs $VG 32M 3 origin
patterned_lvs $VG 32M 60 standby

round 1
grep -q "copied 32.00 MiB" "$FILES/round1.txt" || fail "round 1 is not a whole copy"
# the default size: 20% of 32 MiB is less than 64 MiB, so the whole LV (8 extents)
check_eq "snapshot size" "$(lv_bytes $VG/origin-lvmsync-1)" $((32 * MiB))
write_every /dev/$VG/origin 0 $((3 * MiB)) 10 20000 R1
run sync

round 2
grep -q "sent .* ranges" "$FILES/round2.txt" || fail "round 2 did not send changes"
write_every /dev/$VG/origin $((2 * MiB)) $((7 * MiB)) 4 70000 R2
write_at /dev/$VG/origin $((32 * MiB - 4096)) 4096 LAST
run sync

round 3 "--snapshot-size 4M"
check_eq "snapshot size" "$(lv_bytes $VG/origin-lvmsync-3)" $((4 * MiB))

step "the 4 MiB base overflows"
run dd if="$VMTEST_PATTERN" of=/dev/$VG/origin bs=1M count=8 skip=70 conv=fsync status=none
check_eq "base state" "$(lvs --noheadings -o lv_attr $VG/origin-lvmsync-3 | tr -d ' ' | cut -c5)" I
round 4
grep -q "base snapshot $VG/origin-lvmsync-3 overflowed (invalid): its change list is incomplete, so the whole volume is copied" \
  "$FILES/round4.txt" || fail "the overflow was not reported"
grep -q "copied 32.00 MiB" "$FILES/round4.txt" || fail "round 4 is not a whole copy"

step "no room for a snapshot"
expect_error "too few for a" lvmsync replicate --snapshot-size 1G $VG/origin $DEST
check_eq "snapshots after the refused run" "$(snaps)" "origin-lvmsync-4 lvmsync-base:$DEST"
