# shellcheck shell=sh
# The whole seed workflow on a classic snapshot, with no dd: snapshot, `lvmsync --full SNAP
# DEST` while the origin is written, more writes, `lvmsync SNAP DEST`: DEST ends equal to the
# origin. The full copy is the snapshot's point in time (read from the snapshot's own
# device), its zeros go as zero ranges; the same over a remote shell in format 3,
# whose stream starts with the volume's last 4 KiB, so that a destination too small is
# refused with nothing written.
. "$VMTEST_LIB"
VG=fullclassic
SEED=3
MiB=1048576

step "origin of 32 MiB: data, with 8 MiB of zeros at 12 MiB; a 4 KiB-chunk snapshot"
make_vg $VG
patterned_lvs $VG 32M $SEED origin
run dd if=/dev/zero of=/dev/$VG/origin bs=1M seek=12 count=8 conv=fsync status=none
patterned_lvs $VG 32M 40 dest remote
run lvcreate -y -Wy -Zy -L 28M -n small $VG
run dd if=/dev/zero of=/dev/$VG/small bs=1M count=1 conv=fsync status=none
run lvcreate -y -s -c 4k -L 8M -n snap $VG/origin

step "writes to the origin before the copy"
write_at /dev/$VG/origin 0 4096 W1-chunk0
write_at /dev/$VG/origin $((13 * MiB)) 5000 W2-in-the-zeros
run sync

step "lvmsync --full SNAP DEST: the snapshot's contents"
save full.txt sh -c "lvmsync --full /dev/$VG/snap /dev/$VG/dest 2>&1"
cat "$FILES/full.txt"
# zeros: the 8 MiB, and the 54 zero 64 KiB blocks of the pattern disk's MiB 3-35 outside them
grep -q "copied 32.00 MiB in .*: 20.62 MiB of data, 11.38 MiB of zeros" "$FILES/full.txt" ||
  fail "unexpected summary"
same_content /dev/$VG/dest /dev/$VG/snap

cat > "$TMP/rsh" << 'SH'
#!/bin/sh
# rsh HOST WORDS...: like sshd, run the joined words with a shell
shift
exec sh -c "$*"
SH
chmod 755 "$TMP/rsh"

step "the same over a remote shell, format 3"
run lvmsync --full --format 3 -e "$TMP/rsh" --remote-path "$(command -v lvmsync)" \
  /dev/$VG/snap "somehost:/dev/$VG/remote"
same_content /dev/$VG/remote /dev/$VG/snap
expect_fail sh -c "lvmsync --full --format 3 -e '$TMP/rsh' --remote-path '$(command -v lvmsync)' \
  /dev/$VG/snap somehost:/dev/$VG/small 2> $FILES/small.err"
cat "$FILES/small.err"
grep -q "reaches past the end of the destination" "$FILES/small.err" ||
  fail "no clear message for a destination too small"
# a copy that started at byte 0 would have written there first
check_eq "nothing written to the small destination" \
  "$(dd if=/dev/$VG/small bs=1M count=1 status=none | tr -d '\0' | wc -c)" 0

step "more writes, then lvmsync SNAP DEST"
write_at /dev/$VG/origin $((1 * MiB + 100)) 100 W3-chunk256
write_at /dev/$VG/origin $((32 * MiB - 4096)) 4096 W4-last-chunk
run sync
run lvmsync /dev/$VG/snap /dev/$VG/dest
same_content /dev/$VG/dest /dev/$VG/origin
