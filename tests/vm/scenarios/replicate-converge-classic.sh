# shellcheck shell=sh
# `lvmsync replicate --converge` on a plain LV (classic snapshots) with a writer running: a
# run that cannot converge within --max-passes fails and runs no hook; a final hook that fails
# ends the run before the last pass, runs no after hook, and leaves DEST's base in place; the
# next run converges (its first pass holds only the writer's 2 MiB), cuts over, and DEST
# equals the origin.
. "$VMTEST_LIB"
VG=rconvc
MiB=1048576
DEST=/dev/$VG/standby
LOG=$TMP/hooks.log

snaps() { lvs --noheadings -o lv_name,lv_tags $VG | awk '$1 ~ /-lvmsync-/ { print $1, $2 }'; }

step "origin (64 MiB) and a standby LV of other data"
make_vg $VG
patterned_lvs $VG 64M 3 origin
patterned_lvs $VG 64M 60 standby
cat > "$TMP/final-hook" << SH
#!/bin/sh
touch "$TMP/stop"
while [ ! -e "$TMP/stopped" ]; do usleep 50000; done
echo "final \$LVMSYNC_PASS \$LVMSYNC_LV \$LVMSYNC_DEST" >> "$LOG"
exit \${1:-0}
SH
cat > "$TMP/after-hook" << SH
#!/bin/sh
echo "after \$LVMSYNC_PASS \$LVMSYNC_BASE" >> "$LOG"
SH
chmod 755 "$TMP/final-hook" "$TMP/after-hook"
: > "$LOG"
start_writer /dev/$VG/origin A

step "no pass within --until 0b in --max-passes 1: a failure, no hook run"
expect_error "$VG/origin did not converge: each of 1 passes was larger than --until 0 B" \
  lvmsync replicate -q --snapshot-size 16M --converge --until 0b --max-passes 1 \
  --final-hook "$TMP/final-hook" --after-hook "$TMP/after-hook" $VG/origin $DEST
grep -q "no hook was run and nothing was stopped; $DEST holds $VG/origin-lvmsync-1" "$TMP/err" ||
  fail "the failure does not say what DEST holds"
check_eq "hook log" "$(cat "$LOG")" ""
[ ! -e "$TMP/stop" ] || fail "the writer was stopped"
check_eq "snapshots" "$(snaps)" "origin-lvmsync-1 lvmsync-base:$DEST"

step "a final hook that fails: no final pass, no after hook"
expect_error "the final hook failed (exit status 4): $TMP/final-hook 4; the final pass was not made" \
  lvmsync replicate -q --snapshot-size 16M --converge --until 2M \
  --final-hook "$TMP/final-hook 4" --after-hook "$TMP/after-hook" $VG/origin $DEST
grep -q "what the hook stopped may be stopped; $DEST holds $VG/origin-lvmsync-2 (pass 1)$" \
  "$TMP/err" || fail "the failure does not say what DEST holds"
wait $writer
check_eq "hook log" "$(cat "$LOG")" "final 2 $VG/origin $DEST"
check_eq "snapshots" "$(snaps)" "origin-lvmsync-2 lvmsync-base:$DEST"
same_content $DEST /dev/$VG/origin-lvmsync-2

step "again with the writer running: converge and cut over"
: > "$LOG"
start_writer /dev/$VG/origin B
save converge.txt sh -c "lvmsync replicate --snapshot-size 16M --converge --until 2M \
  --final-hook '$TMP/final-hook' --after-hook '$TMP/after-hook' $VG/origin $DEST 2>&1"
cat "$FILES/converge.txt"
wait $writer
check_eq "hook log" "$(cat "$LOG")" "final 2 $VG/origin $DEST
after 2 $VG/origin-lvmsync-4"
grep -q "^lvmsync: pass 1: .* s; within --until 2.00 MiB: the cut-over$" "$FILES/converge.txt" ||
  fail "pass 1 is not within --until"
grep -q "^lvmsync: final pass: " "$FILES/converge.txt" || fail "no final pass"
grep -q "^lvmsync: downtime [0-9.]* s, from the start of the final hook to the end of the after hook$" \
  "$FILES/converge.txt" || fail "no downtime"
check_eq "snapshots" "$(snaps)" "origin-lvmsync-4 lvmsync-base:$DEST"
same_content $DEST /dev/$VG/origin
