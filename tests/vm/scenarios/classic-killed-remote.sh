# shellcheck shell=sh
# A sync to HOST:DEST interrupted at about 80% of its stream, once by killing the receiving
# lvmsync (SIGKILL) and once by killing the connection, run again: the destination ends equal to
# the origin, the re-run says what was already there, and the bytes sent again are counted.
# The remote shell is a stand-in for ssh (the VM has no network): it passes the stream through a
# relay process that stands for the connection (tee, which keeps a copy: the bytes sent), and
# runs the receiver with `sh -c`, as sshd does. The receiver works in 1 MiB batches (LVMSYNC_TEST_BATCH_BYTES), so that what was not
# yet on disk when it died is small next to the 32 MiB stream.
. "$VMTEST_LIB"
VG=kremote
MiB=1048576

step "origin and three copies; snapshot; 32 MiB of writes"
make_vg $VG 2
patterned_lvs $VG 48M 7 origin reference copy1 copy2
run lvcreate -y -s -c 64k -L 40M -n snap $VG/origin
run dd if="$VMTEST_PATTERN" of=/dev/$VG/origin bs=1M count=32 skip=40 seek=8 conv=fsync status=none

cat > "$TMP/rsh" << 'SH'
#!/bin/sh
# rsh HOST WORDS...: relay the stream, keeping a copy, and run the joined words with a shell;
# the relay and the receiver each write their pid first.
shift
sh -c 'echo $$ > "$VMTEST_TMP/relay.pid"; exec tee "$VMTEST_TMP/stream"' |
  LVMSYNC_TEST_BATCH_BYTES=1048576 sh -c "echo \$\$ > \"\$VMTEST_TMP/receiver.pid\"; exec $*"
SH
chmod 755 "$TMP/rsh"
export VMTEST_TMP=$TMP

# start_sync DEST: the sync to somehost:DEST in the background; its pid in $pid.
start_sync() {
  rm -f "$TMP/relay.pid" "$TMP/receiver.pid" "$TMP/stream"
  lvmsync -e "$TMP/rsh" --remote-path "$(command -v lvmsync)" /dev/$VG/snap "somehost:$1" \
    2> "$TMP/err" &
  pid=$!
}
# relayed: the bytes of the stream relayed so far.
relayed() {
  stat -c %s "$TMP/stream" 2> /dev/null || echo 0
}
# running: whether the sync started last still runs (not a zombie the shell has yet to wait for).
running() {
  [ -e "/proc/$pid" ] && ! grep -q '^State:.Z' "/proc/$pid/status" 2> /dev/null
}
# finish_sync: waits for the sync started last; $rc is its exit status, $sent the bytes relayed.
finish_sync() {
  wait $pid
  rc=$?
  cat "$TMP/err"
  sent=$(relayed)
}

step "an uninterrupted sync: the stream's size"
start_sync /dev/$VG/reference
finish_sync
[ $rc = 0 ] || fail "the sync failed ($rc)"
same_content /dev/$VG/reference /dev/$VG/origin
whole=$sent
[ "$whole" -gt $((32 * MiB)) ] || fail "the stream is only $whole bytes"
echo "stream: $whole bytes"

# interrupted DEST WHO: the sync to DEST, and once its sender has written 80% of the stream,
# kill the receiver (WHO=receiver) or the relay (WHO=relay, the connection); it must fail.
interrupted() {
  start_sync "$1"
  while [ "$(relayed)" -lt $((whole * 8 / 10)) ]; do
    running || fail "the sync ended before it could be interrupted: $(cat "$TMP/err")"
  done
  kill -KILL "$(cat "$TMP/$2.pid")"
  finish_sync
  [ $rc != 0 ] || fail "the interrupted sync exited 0"
  first=$sent
  # The receiver of a killed connection sees its input end, and stops.
  while [ -e "/proc/$(cat "$TMP/receiver.pid")" ]; do sleep 0.1; done
  echo "$2 killed after $((first / MiB)) MiB of $((whole / MiB)) MiB sent"
  [ "$first" -ge $((whole * 6 / 10)) ] && [ "$first" -lt "$whole" ] ||
    fail "interrupted at $first of $whole bytes"
}

# resumed DEST WHO: the same sync again finishes; what it sent beyond the rest of the stream
# is what was sent twice.
resumed() {
  start_sync "$1"
  finish_sync
  [ $rc = 0 ] || fail "the re-run failed ($rc)"
  grep -q "were already on the destination and were not sent again" "$TMP/err" ||
    fail "the re-run did not find what had arrived"
  same_content "$1" /dev/$VG/origin
  resent=$((first + sent - whole))
  echo "$2 killed: the re-run sent $sent bytes; $resent bytes ($((resent * 100 / whole))% of the stream) sent twice" |
    tee -a "$FILES/resent.txt"
  [ "$resent" -le $((whole / 4)) ] || fail "$resent of $whole bytes sent twice"
}

step "receiver killed at 80%, then the same sync again"
interrupted /dev/$VG/copy1 receiver
resumed /dev/$VG/copy1 receiver

step "connection killed at 80%, then the same sync again"
interrupted /dev/$VG/copy2 relay
resumed /dev/$VG/copy2 connection
