# shellcheck shell=sh
# A local sync with a snapback killed (SIGKILL) half-way through writing, run again: the second
# run finds what the first one wrote, keeps its snapback, writes the rest and reports what was
# already applied; the destination equals the origin, and the snapback rolls it back to the
# snapshot exactly.
. "$VMTEST_LIB"
VG=kresume
MiB=1048576

step "origin and its copy; snapshot; 24 MiB of writes"
make_vg $VG
patterned_lvs $VG 64M 5 origin copy
run lvcreate -y -s -c 64k -L 48M -n snap $VG/origin
run dd if="$VMTEST_PATTERN" of=/dev/$VG/origin bs=1M count=24 skip=20 seek=12 conv=fsync status=none

step "sync killed half-way through writing the destination"
# The sync writes (write(2)) each changed byte twice: the snapback first, whole, before the
# destination is touched, then onto the destination. 36 of its 48 MiB is half of the
# destination's writes (and still inside them if the receiver were fed through a pipe, which
# would write each byte once more).
lvmsync -b "$TMP/snapback" /dev/$VG/snap /dev/$VG/copy 2> "$TMP/first-err" &
pid=$!
while :; do
  w=$(sed -n 's/^wchar: //p' /proc/$pid/io 2> /dev/null)
  [ -n "$w" ] || fail "the sync ended before it could be killed: $(cat "$TMP/first-err")"
  [ "$w" -lt $((36 * MiB)) ] || break
done
kill -KILL $pid
wait $pid && fail "the killed sync exited 0"
echo "killed after $((w / MiB)) MiB written"
cmp -s /dev/$VG/copy /dev/$VG/origin && fail "the first sync was not interrupted"

step "the same sync again: finishes, keeps the snapback, reports what was there"
run lvmsync -b "$TMP/snapback" /dev/$VG/snap /dev/$VG/copy 2> "$TMP/again"
cat "$TMP/again"
grep -q "kept the snapback" "$TMP/again" || fail "the snapback was not kept"
grep -q "were already on the destination" "$TMP/again" || fail "nothing was found already applied"
same_content /dev/$VG/copy /dev/$VG/origin

step "the snapback rolls back to the snapshot"
run lvmsync --apply "$TMP/snapback" /dev/$VG/copy
same_content /dev/$VG/copy /dev/$VG/snap
