# shellcheck shell=sh
# Crash consistency of `lvmsync --apply STREAM DEST --snapback FILE`, checked the way xfstests
# checks file systems: DEST and the ext4 file system holding the snapback are two regions of ONE
# dm-log-writes device, so that one log orders every write and flush of both. The log is then
# replayed (replay_log, examples/replay_log.rs) onto a fresh device up to every flush and FUA
# write of the sync, i.e. every point at which a crash could have cut the disk off, and at
# each: the file system is mounted (journal recovery); the snapback, if there is one, must roll
# DEST back to exactly its state before the sync (without one, or with an empty one, DEST must
# still be in that state); the stream applied again must then bring DEST to exactly its state
# after the sync.
# Each check runs on throw-away snapshots of the replayed device.
#
# The stream is small (so that the emulated machine checks every point in time), so the
# batches are made small with LVMSYNC_TEST_BATCH_BYTES (a test knob, see src/apply.rs): every
# batch makes its old contents durable in the snapback before overwriting DEST. A batch is
# handed over once it holds that many bytes of new data and old contents together: 256 KiB,
# i.e. at most two of the stream's 64 KiB data records (128 KiB each with their old contents).
. "$VMTEST_LIB"
VG=lwsrc
KiB=1024
MiB=1048576
DEST_MB=2
FS_MB=32
BATCH=$((256 * KiB))
DEST_S=$((DEST_MB * 2048)) # sectors
FS_S=$((FS_MB * 2048))
ALL_S=$((DEST_S + FS_S))
mkdir -p /mnt/sb /mnt/crash
trap 'umount /mnt/crash /mnt/sb 2> /dev/null' EXIT

# MD5 of a device, read through its page cache (a device here is only ever written through
# itself, so the cache is never stale; reading it is twice as fast as with O_DIRECT and a pipe)
digest() { md5sum < "$1" | cut -d' ' -f1; }

step "a format 4 stream with data and zero records: a thin snapshot, writes and discards"
make_vg $VG
run vgchange -y -s 1M $VG # an origin of DEST's size
run lvcreate -y --type thin-pool -L 16M -c 64k --poolmetadatasize 4M -n pool $VG
run lvcreate -y -V ${DEST_MB}M -T $VG/pool -n origin
fill_pattern /dev/$VG/origin ${DEST_MB}M 20
run lvcreate -y -s -n snap $VG/origin
run lvchange -ay -K $VG/snap
write_every /dev/$VG/origin 0 $((128 * KiB)) 12 $((64 * KiB)) NEW
run sync
# between two writes, and after the last one
run blkdiscard -o $((704 * KiB)) -l $((64 * KiB)) /dev/$VG/origin
run blkdiscard -o $((1536 * KiB)) -l $((512 * KiB)) /dev/$VG/origin
save changes.txt lvmsync changes /dev/$VG/snap
cat "$FILES/changes.txt"
# --no-check: no manifest, so the snapback is written batch by batch, ahead of each batch's
# writes (a stream with a manifest has its snapback written whole before the first write)
run lvmsync --stdout --no-check /dev/$VG/snap > "$TMP/stream"
data_bytes=$(awk '$3 == "data" { n += $2 } END { print n + 0 }' "$FILES/changes.txt")
zero_ranges=$(grep -c ' zero$' "$FILES/changes.txt")
data_ranges=$(grep -c ' 65536 data$' "$FILES/changes.txt")
[ "$(grep -c ' data$' "$FILES/changes.txt")" = "$data_ranges" ] || fail "want only 64 KiB data ranges"
batches=$(((data_ranges + 1) / 2)) # at least
echo "stream: $(wc -c < "$TMP/stream") bytes, $data_bytes bytes of data in $data_ranges records, $zero_ranges zero records; at least $batches batches"
[ "$zero_ranges" -ge 2 ] || fail "want at least 2 zero ranges in the stream"
[ "$batches" -ge 3 ] || fail "want at least 3 batches, the stream makes at least $batches"

step "DEST (${DEST_MB} MiB) and an ext4 file system (${FS_MB} MiB) on one log-writes device"
claim_disk DATA_DISK
claim_disk LOG_DISK
claim_disk REPLAY_DISK
dm_create lw "0 $ALL_S log-writes $DATA_DISK $LOG_DISK"
dm_create lwdest "0 $DEST_S linear /dev/mapper/lw 0"
dm_create lwfs "0 $FS_S linear /dev/mapper/lw $DEST_S"
# (a journal left as the zeroed disk has it: a shorter log to replay)
run mkfs.ext4 -q -F -b 4096 -N 16 -E nodiscard,lazy_itable_init=0,lazy_journal_init=1 \
  /dev/mapper/lwfs
run mount -t ext4 /dev/mapper/lwfs /mnt/sb
# text (never zero), so that the zero records overwrite something
fill_pattern /dev/mapper/lwdest ${DEST_MB}M 70
run sync
before=$(digest /dev/mapper/lwdest)
run dmsetup message lw 0 mark before-sync

step "the sync, its snapback on the file system"
run env LVMSYNC_TEST_BATCH_BYTES=$BATCH lvmsync --apply "$TMP/stream" /dev/mapper/lwdest \
  --snapback /mnt/sb/snapback
run dmsetup message lw 0 mark after-sync
after=$(digest /dev/mapper/lwdest)
[ "$before" != "$after" ] || fail "the sync changed nothing"
snapback_bytes=$(stat -c %s /mnt/sb/snapback)
echo "DEST before the sync: md5 $before, after: md5 $after; snapback: $snapback_bytes bytes"
run umount /mnt/sb
# removing the target logs what is left and brings the log's super block up to date
run dmsetup remove lwfs lwdest lw

step "the log"
# the target wrote the log device behind its page cache (the runner zeroed its start through it)
run blockdev --flushbufs "$LOG_DISK"
save log.txt replay_log list "$LOG_DISK"
first=$(awk '$5 == "before-sync" { print $1; exit }' "$FILES/log.txt")
last=$(awk '$5 == "after-sync" { print $1; exit }' "$FILES/log.txt")
[ -n "$first" ] && [ -n "$last" ] || fail "the marks are not in the log"
# the crash points: both marks, and every flush and FUA write between them
awk -v a="$first" -v b="$last" '$1 >= a && $1 <= b && ($1 == a || $1 == b || $2 ~ /FLUSH|FUA/)' \
  "$FILES/log.txt" > "$FILES/points.txt"
points=$(wc -l < "$FILES/points.txt")
echo "$((last - first - 1)) entries between the marks, $points crash points:"
cat "$FILES/points.txt"

step "replay up to every crash point and check it"
# the replayed device, its two regions (the same sectors) and room for the snapshots' changes
dm_create replay "0 $ALL_S linear $REPLAY_DISK 0"
dm_create rdest "0 $DEST_S linear $REPLAY_DISK 0"
dm_create rfs "0 $FS_S linear $REPLAY_DISK $DEST_S"
dm_create cowdest "0 $((64 * 2048)) linear $REPLAY_DISK $((64 * 2048))"
dm_create cowfs "0 $((64 * 2048)) linear $REPLAY_DISK $((128 * 2048))"

# check_point ENTRY FLAGS: checks the replayed device as a crash after ENTRY leaves it (on
# snapshots); adds one line to checks.txt, returns 1 on a failed check
check_point() {
  _at="entry $1 ($2)"
  run dmsetup create --concise "cdest,,,rw,0 $DEST_S snapshot /dev/mapper/rdest /dev/mapper/cowdest N 8;cfs,,,rw,0 $FS_S snapshot /dev/mapper/rfs /dev/mapper/cowfs N 8"
  run dmsetup mknodes
  _ok=1
  _note=
  if ! mount -t ext4 /dev/mapper/cfs /mnt/crash 2> "$TMP/err"; then
    _note="the file system does not mount: $(cat "$TMP/err")"
    _ok=0
  fi
  _state=$(digest /dev/mapper/cdest)
  case $_state in
    "$before") _dest=before ;;
    "$after") _dest=after ;;
    *) _dest=between ;;
  esac
  _sb=none
  if [ $_ok = 1 ] && [ -e /mnt/crash/snapback ]; then
    _sb="$(stat -c %s /mnt/crash/snapback) bytes"
    if [ -s /mnt/crash/snapback ]; then
      timeout -k 5 "$CMD_TIMEOUT" lvmsync --apply /mnt/crash/snapback /dev/mapper/cdest \
        > "$TMP/out" 2> "$TMP/err"
      _rc=$?
      if [ $_rc != 0 ]; then
        _note="the snapback does not apply (exit status $_rc): $(cat "$TMP/err")"
        _ok=0
      elif [ -s "$TMP/err" ]; then
        _note="lvmsync says: $(cat "$TMP/err")"
      fi
    fi
  fi
  if [ $_ok = 1 ]; then
    if [ "$(digest /dev/mapper/cdest)" != "$before" ]; then
      _note="${_note:+$_note; }DEST is not as before the sync after the roll-back"
      _ok=0
    elif ! timeout -k 5 "$CMD_TIMEOUT" lvmsync --apply "$TMP/stream" /dev/mapper/cdest \
      > "$TMP/out" 2> "$TMP/err"; then
      _note="${_note:+$_note; }the stream does not apply: $(cat "$TMP/err")"
      _ok=0
    elif [ "$(digest /dev/mapper/cdest)" != "$after" ]; then
      _note="${_note:+$_note; }DEST is not as after the sync when the stream is applied again"
      _ok=0
    fi
  fi
  umount /mnt/crash 2> /dev/null
  run dmsetup remove cfs cdest
  _result=ok
  [ $_ok = 1 ] || _result=FAIL
  echo "$_result $_at: DEST $_dest, snapback $_sb${_note:+; $_note}" | tee -a "$FILES/checks.txt"
  [ $_ok = 1 ]
}

failed=0
prev=-1
# (the list on fd 3: nothing in the loop may read it)
while read -r entry flags _ <&3; do
  run replay_log replay "$LOG_DISK" /dev/mapper/replay --from $((prev + 1)) --to "$entry"
  prev=$entry
  check_point "$entry" "$flags" || failed=$((failed + 1))
done 3< "$FILES/points.txt"

step "summary"
grep -q "^ok entry $first .*DEST before, snapback none" "$FILES/checks.txt" ||
  fail "the replay up to the first mark is not DEST as before the sync, without a snapback"
grep -q "^ok entry $last .*DEST after, snapback $snapback_bytes bytes" "$FILES/checks.txt" ||
  fail "the replay up to the last mark is not DEST as after the sync with the whole snapback"
partial=$(grep -c "DEST between" "$FILES/checks.txt")
echo "$points crash points checked, $failed failed; $partial of them inside the sync (DEST" \
  "neither as before nor as after it)"
# a replay that misses the flushes (or a sync that makes nothing durable per batch) must not
# pass: every batch makes its snapback durable before it overwrites DEST
[ "$points" -ge $((batches + 2)) ] || fail "only $points crash points, want at least $((batches + 2))"
[ "$partial" -ge $((batches - 1)) ] || fail "only $partial crash points inside the sync, want at least $((batches - 1))"
[ "$failed" = 0 ] || fail "$failed of $points crash points failed"
