# shellcheck shell=sh
# `lvmsync replicate --converge` moves a thin LV in use to somehost:DEST (through a remote
# shell that runs the words like sshd) while a writer keeps writing 64 KiB pieces, direct,
# to the origin's first 2 MiB: the first pass copies the whole 32 MiB, more than --until 2M;
# the next can hold no more than the 2 MiB written to, so it is within --until; then the final
# hook stops the writer and waits for it, the final pass sends what was written meanwhile and
# the after hook runs. The hooks log in order, with their environment; the --progress=json
# events come in that order too; one snapshot is left, DEST's base, and DEST equals the
# origin, which nothing writes after the final hook.
. "$VMTEST_LIB"
VG=rconv
MiB=1048576
DEST=/dev/$VG/standby
LOG=$TMP/hooks.log

snaps() { lvs --noheadings -o lv_name,lv_tags $VG | awk '$1 ~ /-lvmsync-/ { print $1, $2 }'; }

step "thin origin (20 MiB mapped of 32 MiB), a standby LV of old data, a remote shell"
make_vg $VG
thin_origin $VG 128M 20M 4
patterned_lvs $VG 32M 60 standby
cat > "$TMP/rsh" << 'SH'
#!/bin/sh
# rsh HOST WORDS...: like sshd, run the joined words with a shell
shift
exec sh -c "$*"
SH
chmod 755 "$TMP/rsh"

step "a writer: 64 KiB pieces to the first 2 MiB until $TMP/stop exists"
start_writer /dev/$VG/origin W

cat > "$TMP/final-hook" << SH
#!/bin/sh
touch "$TMP/stop"
while [ ! -e "$TMP/stopped" ]; do usleep 50000; done
echo "final \$LVMSYNC_HOOK \$LVMSYNC_PASS \$LVMSYNC_LV \$LVMSYNC_DEST writes=\$(cat "$TMP/writes")" >> "$LOG"
SH
cat > "$TMP/after-hook" << SH
#!/bin/sh
echo "after \$LVMSYNC_HOOK \$LVMSYNC_PASS \$LVMSYNC_BASE writes=\$(cat "$TMP/writes")" >> "$LOG"
SH
chmod 755 "$TMP/final-hook" "$TMP/after-hook"

step "converge and cut over"
save converge.txt sh -c "lvmsync replicate --converge --until 2M --progress=json \
  --final-hook '$TMP/final-hook' --after-hook '$TMP/after-hook' \
  -e '$TMP/rsh' --remote-path '$(command -v lvmsync)' $VG/origin somehost:$DEST 2>&1"
grep -v '^{' "$FILES/converge.txt"
wait $writer
cat "$LOG"
writes=$(cat "$TMP/writes")
echo "the writer wrote $writes pieces"
check_eq "hook log" "$(cat "$LOG")" \
  "final final 3 $VG/origin somehost:$DEST writes=$writes
after after 3 $VG/origin-lvmsync-3 writes=$writes"
check_eq "events in order" \
  "$(grep -o '"event":"[a-z_]*"' "$FILES/converge.txt" | grep -v '"plan"\|"progress"\|"done"' | tr '\n' ' ')" \
  '"event":"pass" "event":"pass" "event":"hook_start" "event":"hook_end" "event":"pass" "event":"hook_start" "event":"hook_end" "event":"downtime" '
grep '"event":"pass"' "$FILES/converge.txt" > "$TMP/passes"
cat "$TMP/passes"
sed -n 1p "$TMP/passes" | grep -q '"final":false,"full":true,"bytes":33554432,.*"within_until":false' ||
  fail "pass 1 is not a whole copy larger than --until"
sed -n 2p "$TMP/passes" | grep -q '"final":false,"full":false,.*"within_until":true' ||
  fail "pass 2 is not within --until"
bytes2=$(sed -n 2p "$TMP/passes" | sed 's/.*"bytes":\([0-9]*\),.*/\1/')
[ "$bytes2" -gt 0 ] && [ "$bytes2" -le $((2 * MiB)) ] || fail "pass 2 sent $bytes2 bytes"
sed -n 3p "$TMP/passes" | grep -q '"final":true,"full":false' || fail "no final pass of changes"
grep -q "^lvmsync: pass 1: 32.00 MiB (a whole copy) in .* s; more than --until 2.00 MiB: another pass$" \
  "$FILES/converge.txt" || fail "no line for pass 1"
grep -q "^lvmsync: pass 2: .* s; within --until 2.00 MiB: the cut-over$" "$FILES/converge.txt" ||
  fail "no line for pass 2"
grep -q "^lvmsync: downtime [0-9.]* s, from the start of the final hook to the end of the after hook$" \
  "$FILES/converge.txt" || fail "no downtime"
check_eq "snapshots" "$(snaps)" "origin-lvmsync-3 lvmsync-base:somehost:$DEST"
same_content $DEST /dev/$VG/origin
same_content $DEST /dev/$VG/origin-lvmsync-3
