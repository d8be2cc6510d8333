# Live classic snapshot to a HOST:DEST destination. The VM has no ssh server, so the remote
# shell is a stand-in that does what sshd does with its arguments: join them with spaces and
# run the result with `sh -c`. The receiver's options (-b, -v) travel with the command.
. "$VMTEST_LIB"
VG=remvg
SEED=13

step "origin, copy, snapshot, writes"
make_vg $VG
patterned_lvs $VG 16M $SEED origin copy
run lvcreate -y -s -c 4k -L 4M -n snap $VG/origin
write_at /dev/$VG/origin 8192 4096 R1
write_at /dev/$VG/origin 7000000 123456 R2
run sync

cat > "$TMP/rsh" << 'SH'
#!/bin/sh
# rsh HOST WORDS...: like sshd, run the joined words with a shell
echo "$1" > "$VMTEST_TMP/rsh-host"
shift
exec sh -c "$*"
SH
chmod 755 "$TMP/rsh"
export VMTEST_TMP=$TMP

step "sync to somehost:/dev/$VG/copy, snapback on the receiving side"
run lvmsync -e "$TMP/rsh" --remote-path "$(command -v lvmsync)" -b "$TMP/remote snapback" \
  /dev/$VG/snap "somehost:/dev/$VG/copy"
check_eq "host given to the remote shell" "$(cat $TMP/rsh-host)" somehost
same_content /dev/$VG/copy /dev/$VG/origin
[ -s "$TMP/remote snapback" ] || fail "no snapback file on the receiving side"

step "a failing receiver fails the sync"
expect_fail sh -c "lvmsync -e '$TMP/rsh' --remote-path /nonexistent/lvmsync /dev/$VG/snap somehost:/dev/$VG/copy 2> $FILES/missing.err"
cat "$FILES/missing.err"
grep -q "remote apply on somehost failed (exit status 127" "$FILES/missing.err" ||
  fail "no clear message for a missing remote binary"

step "roll back with the snapback"
run lvmsync --apply "$TMP/remote snapback" /dev/$VG/copy
same_content /dev/$VG/copy /dev/$VG/snap
