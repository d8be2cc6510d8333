# shellcheck shell=sh
# `lvmsync replicate VG/LV DEST` on a thin LV, three rounds with writes and discards between
# them: the first sends the whole snapshot, the later ones the changes since the base, read
# from the new snapshot; after each, DEST equals the round's snapshot and exactly one snapshot
# is left, tagged as DEST's base. A remote DEST (through a remote shell) has a base of its
# own; while its run holds the LV's lock, another run is refused, and one with --wait waits.
# --status lists both.
. "$VMTEST_LIB"
VG=rthin
MiB=1048576
DEST=/dev/$VG/standby

# "NAME TAGS" of every snapshot replicate made
snaps() { lvs --noheadings -o lv_name,lv_tags $VG | awk '$1 ~ /-lvmsync-/ { print $1, $2 }'; }

round() {
  step "round $1"
  save "round$1.txt" sh -c "lvmsync replicate -v $VG/origin $DEST 2>&1"
  cat "$FILES/round$1.txt"
  grep -q "$DEST now holds $VG/origin-lvmsync-$1" "$FILES/round$1.txt" || fail "no summary"
  check_eq "snapshots after round $1" "$(snaps)" "origin-lvmsync-$1 lvmsync-base:$DEST"
  same_content $DEST /dev/$VG/origin-lvmsync-$1
}

step "thin origin (20 MiB mapped of 32 MiB) and a standby LV of old data"
make_vg $VG
thin_origin $VG 128M 20M 4
patterned_lvs $VG 32M 60 standby

round 1
grep -q "copied 32.00 MiB" "$FILES/round1.txt" || fail "round 1 is not a whole copy"
write_every /dev/$VG/origin 0 $((3 * MiB)) 10 20000 R1
run blkdiscard -o $((4 * MiB)) -l $MiB /dev/$VG/origin
run sync

round 2
grep -q "sent .* ranges" "$FILES/round2.txt" || fail "round 2 did not send changes"
write_every /dev/$VG/origin $((2 * MiB)) $((7 * MiB)) 4 70000 R2
run blkdiscard -o $((12 * MiB)) -l $((2 * MiB)) /dev/$VG/origin
write_at /dev/$VG/origin $((30 * MiB)) 8192 NEVER-MAPPED
run sync

round 3

step "a remote DEST (a remote shell that waits for a word) while a local run is tried"
patterned_lvs $VG 32M 61 standby2
mkfifo "$TMP/go"
cat > "$TMP/rsh" << SH
#!/bin/sh
# rsh HOST WORDS...: say it started, wait for a word on $TMP/go, run the words like sshd
shift
touch "$TMP/started"
read -r word < "$TMP/go"
exec sh -c "\$*"
SH
chmod 755 "$TMP/rsh"
lvmsync replicate -e "$TMP/rsh" --remote-path "$(command -v lvmsync)" \
  $VG/origin somehost:/dev/$VG/standby2 > "$TMP/remote.out" 2>&1 &
remote=$!
n=0
while [ $n -lt 600 ] && [ ! -e "$TMP/started" ]; do
  usleep 100000
  n=$((n + 1))
done
[ -e "$TMP/started" ] || fail "the remote run never reached its remote shell"
expect_error "another lvmsync replicate of $VG/origin is running" \
  lvmsync replicate $VG/origin $DEST
grep -q -- "--wait waits for it" "$TMP/err" || fail "no word of --wait"
lvmsync replicate --wait $VG/origin $DEST > "$TMP/wait.out" 2>&1 &
waiting=$!
echo go > "$TMP/go"
wait $remote
rc=$?
cat "$TMP/remote.out"
check_eq "exit status of the remote run" $rc 0
wait $waiting
rc=$?
cat "$TMP/wait.out"
check_eq "exit status of the run that waited" $rc 0
check_eq "snapshots: one base per destination" "$(snaps | sort)" \
  "origin-lvmsync-4 lvmsync-base:somehost:/dev/$VG/standby2
origin-lvmsync-5 lvmsync-base:$DEST"
same_content /dev/$VG/standby2 /dev/$VG/origin-lvmsync-4
same_content $DEST /dev/$VG/origin-lvmsync-5

step "--status"
save status.txt lvmsync replicate --status $VG/origin
cat "$FILES/status.txt"
check_eq "status lines" "$(wc -l < "$FILES/status.txt")" 3
grep -q "^$DEST  *$VG/origin-lvmsync-5  .*  -$" "$FILES/status.txt" || fail "unexpected status"
grep -q "^somehost:/dev/$VG/standby2  *$VG/origin-lvmsync-4  " "$FILES/status.txt" ||
  fail "unexpected status"
