# shellcheck shell=sh
# lvmsync verify on real LVM. A classic snapshot synced to a copy: before the sync
# `verify --changes SNAP DEST` lists exactly the changed ranges (exit 1), after it
# exit 0 with nothing listed; one sector of DEST overwritten inside a changed chunk
# is found (exit 1, that range), locally and through a stand-in remote shell, and
# by a whole-volume verify. Then a thin snapshot: after its sync, exit 0 too, and a
# changed sector is found.
. "$VMTEST_LIB"
VG=vervg
SEED=21

# verify_status WANT OUT ARGS...: `lvmsync verify ARGS` must exit WANT; stdout in OUT
verify_status() {
  _want=$1
  _out=$2
  shift 2
  echo "+ [$(up)] lvmsync verify $*" >&2
  timeout -k 5 "$CMD_TIMEOUT" lvmsync verify "$@" > "$_out"
  _rc=$?
  [ "$_rc" = "$_want" ] || fail "lvmsync verify $*: exit status $_rc, want $_want"
  echo "ok: exit status $_rc" >&2
}

step "origin and copy (32 MiB), a 4 KiB-chunk snapshot, writes to the origin"
make_vg $VG
patterned_lvs $VG 32M $SEED origin copy
run lvcreate -y -s -c 4k -L 8M -n snap $VG/origin
write_at /dev/$VG/origin 4096 8192 V1-chunks1-2
write_at /dev/$VG/origin 10000000 100000 V2-chunks2441-2465
write_at /dev/$VG/origin 33550336 4096 V3-last-chunk
run sync

step "before the sync: the changed ranges differ, exactly"
save changes.txt lvmsync changes /dev/$VG/snap
cut -d' ' -f1-2 "$FILES/changes.txt" > "$TMP/want"
verify_status 1 "$FILES/before.txt" --changes /dev/$VG/snap /dev/$VG/copy
check_files_eq "differing ranges before the sync" "$FILES/before.txt" "$TMP/want"

step "sync, then verify --changes: equal"
run lvmsync /dev/$VG/snap /dev/$VG/copy
verify_status 0 "$FILES/after.txt" --changes /dev/$VG/snap /dev/$VG/copy
check_eq "nothing listed" "$(cat "$FILES/after.txt")" ""
verify_status 0 "$TMP/out" /dev/$VG/origin /dev/$VG/copy

step "one sector of DEST overwritten inside a changed chunk"
run dd if=/dev/zero of=/dev/$VG/copy bs=512 seek=19532 count=1 conv=notrunc,fsync status=none
verify_status 1 "$FILES/sector-4k.txt" --changes --chunk 4k /dev/$VG/snap /dev/$VG/copy
check_eq "the sector's 4 KiB chunk" "$(cat "$FILES/sector-4k.txt")" "9998336 4096"
verify_status 1 "$FILES/sector.txt" --changes /dev/$VG/snap /dev/$VG/copy
check_eq "the changed range holding it (one 1 MiB chunk)" "$(cat "$FILES/sector.txt")" "9998336 102400"
verify_status 1 "$FILES/sector-whole.txt" --chunk 4k /dev/$VG/origin /dev/$VG/copy
check_eq "whole-volume verify" "$(cat "$FILES/sector-whole.txt")" "9998336 4096"

step "the same through a remote shell (a stand-in for ssh)"
cat > "$TMP/rsh" << 'SH'
#!/bin/sh
shift
exec sh -c "$*"
SH
chmod 755 "$TMP/rsh"
verify_status 1 "$FILES/sector-remote.txt" --changes --chunk 4k -e "$TMP/rsh" \
  --remote-path "$(command -v lvmsync)" /dev/$VG/snap somehost:/dev/$VG/copy
check_eq "remote DEST" "$(cat "$FILES/sector-remote.txt")" "9998336 4096"
verify_status 3 "$TMP/out" --changes -e "$TMP/rsh" --remote-path /nonexistent/lvmsync \
  /dev/$VG/snap somehost:/dev/$VG/copy

step "thin: a snapshot synced to a linear copy, then a sector changed"
run lvcreate -y --type thin-pool -L 64M -c 64k --poolmetadatasize 4M -n pool $VG
run lvcreate -y -V 32M -T $VG/pool -n thin
fill_pattern /dev/$VG/thin 12M $SEED
run sync
run lvcreate -y -s -n tsnap $VG/thin
run lvchange -ay -K $VG/tsnap
run lvcreate -y -Wy -Zy -L 32M -n tcopy $VG
run dd if=/dev/$VG/tsnap of=/dev/$VG/tcopy bs=1M iflag=direct conv=fsync status=none
write_at /dev/$VG/thin 65536 4096 T1-block1
write_at /dev/$VG/thin $((20 * 1048576)) 4096 T2-block320-never-mapped
run sync
verify_status 1 "$TMP/out" --changes /dev/$VG/tsnap /dev/$VG/tcopy
run lvmsync /dev/$VG/tsnap /dev/$VG/tcopy
verify_status 0 "$FILES/thin-after.txt" --changes /dev/$VG/tsnap /dev/$VG/tcopy
check_eq "thin: nothing listed" "$(cat "$FILES/thin-after.txt")" ""
run dd if=/dev/zero of=/dev/$VG/tcopy bs=512 seek=$((20 * 2048 + 3)) count=1 conv=notrunc,fsync status=none
verify_status 1 "$FILES/thin-sector.txt" --changes /dev/$VG/tsnap /dev/$VG/tcopy
check_eq "thin: the changed block holding the sector" "$(cat "$FILES/thin-sector.txt")" "20971520 65536"
check_eq "no metadata snapshot held" "$(held_metadata_root $VG-pool-tpool)" "-"
