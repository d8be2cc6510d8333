# shellcheck shell=sh
# lib.sh - helpers for the scenarios that run inside the test VM (busybox ash).
# A scenario starts with `. "$VMTEST_LIB"`, then uses:
#
#   step TEXT                   log a step (with guest uptime)
#   run CMD...                  log and run CMD under a time limit; any failure
#                               (or time-out) ends the scenario as FAIL
#   save NAME CMD...            like run, stdout kept as $FILES/NAME
#   expect_fail CMD...          CMD must exit non-zero (a time-out is a failure)
#   expect_error TEXT CMD...    CMD must fail with one line on stderr containing
#                               TEXT (kept in $TMP/err)
#   fail TEXT                   end the scenario as FAIL
#   check_eq WHAT GOT WANT      compare two strings
#   check_files_eq WHAT GOT WANT  compare two text files (diff shown on mismatch)
#   make_vg NAME [NDISKS]       pvcreate + vgcreate on fresh scratch disk(s)
#                               (always use it: the runner cleans up its VGs)
#   claim_disk VAR              set VAR to a fresh scratch disk for raw use (never
#                               one make_vg took or will take)
#   dm_create NAME TABLE        dmsetup create, and the /dev/mapper/NAME node (no udev)
#   fill_pattern DEV SIZE SEED  write SIZE (e.g. 32M) of deterministic data
#   patterned_lvs VG SIZE SEED LV...  linear LVs of SIZE, each filled by fill_pattern
#   thin_origin VG POOL_SIZE MAPPED SEED  thin pool VG/pool (64 KiB blocks) and a 32 MiB thin LV
#                               VG/origin whose first MAPPED (e.g. 12M) is filled by fill_pattern
#   write_at DEV OFFSET LEN TAG write LEN bytes ("TAG\n" repeated) at OFFSET and
#                               record "OFFSET LEN TAG" in $WRITES
#   write_every DEV FIRST STRIDE COUNT LEN TAG  COUNT writes of LEN bytes at
#                               FIRST, FIRST+STRIDE, ... (recorded like write_at)
#   same_content DEV1 DEV2      byte-compare two devices/files (on the host,
#                               after the run: see below)
#   same_md5 DEV1 DEV2          compare in the guest through MD5 (slow)
#   expected_extents CHUNK VOLSIZE [LIST]  the merged "OFFSET LENGTH data" lines
#                               covering every chunk touched by the writes list
#   chunks_to_extents CHUNK VOLSIZE  chunk numbers (stdin) -> merged extents
#   cow_old_chunks COWDEV       origin chunks recorded in a classic snapshot's
#                               exception store, decoded with od
#   lv_bytes VG/LV              size of an LV in bytes
#   dm_name VG LV               device-mapper name (hyphens doubled)
#   to_bytes SIZE               4k, 64K, 16M, 1G or plain bytes -> bytes
#   held_metadata_root POOLDM   field 7 of a thin-pool's status ("-": none held)
#   thin_mapped_sectors DMNAME  sectors a thin LV maps (its status, field 4)
#
# Environment set by the runner: VMTEST_FILES (files brought back to the host),
# VMTEST_TMP (scratch space in RAM, wiped after the scenario), VMTEST_PATTERN
# (read-only disk of deterministic data), VMTEST_SCRATCH (the scratch disks).
set -u
FILES=${VMTEST_FILES:-/tmp/vmtest-files}
TMP=${VMTEST_TMP:-/tmp/vmtest}
WRITES=${WRITES:-$FILES/writes.txt}
CMD_TIMEOUT=${VMTEST_CMD_TIMEOUT:-120}
mkdir -p "$FILES" "$TMP"

up() { cut -d' ' -f1 /proc/uptime; }
step() { echo "== [$(up)] $*"; }
fail() {
  echo "FAIL: $*"
  exit 1
}

# timeout(1) sends TERM (rc 143), then KILL (rc 137)
_timed_out() { [ "$1" = 143 ] || [ "$1" = 137 ]; }

run() {
  echo "+ [$(up)] $*" >&2
  timeout -k 5 "$CMD_TIMEOUT" "$@"
  _rc=$?
  _timed_out $_rc && fail "timed out after ${CMD_TIMEOUT}s: $*"
  [ $_rc = 0 ] || fail "exit status $_rc: $*"
  return 0
}

save() {
  _name=$1
  shift
  run "$@" > "$FILES/$_name"
}

expect_fail() {
  echo "+ [$(up)] (must fail) $*" >&2
  timeout -k 5 "$CMD_TIMEOUT" "$@"
  _rc=$?
  _timed_out $_rc && fail "timed out after ${CMD_TIMEOUT}s: $*"
  [ $_rc != 0 ] || fail "succeeded but must fail: $*"
  echo "  (failed as expected, exit status $_rc)" >&2
  return 0
}

check_eq() {
  [ "$2" = "$3" ] || fail "$1: got '$2', want '$3'"
  echo "ok: $1 = $3"
}

check_files_eq() {
  if ! cmp -s "$2" "$3"; then
    echo "--- $3 (wanted)"
    echo "+++ $2 (got)"
    diff "$3" "$2" | head -40
    fail "$1: $2 differs from $3"
  fi
  echo "ok: $1 ($(wc -l < "$2") lines)"
}

to_bytes() {
  case $1 in
    *[kK]) echo $((${1%?} * 1024)) ;;
    *M) echo $((${1%?} * 1048576)) ;;
    *G) echo $((${1%?} * 1073741824)) ;;
    *) echo $(($1)) ;;
  esac
}

dm_name() {
  # shellcheck disable=SC2001 # busybox ash has no ${var//-/--}
  echo "$(echo "$1" | sed 's/-/--/g')-$(echo "$2" | sed 's/-/--/g')"
}

lv_bytes() { run lvs --noheadings --units b --nosuffix -o lv_size "$1" | tr -d ' '; }

# scratch disks not yet used by this scenario's VGs
_claimed=$TMP/claimed-disks
make_vg() {
  _vg=$1
  _want=${2:-1}
  _disks=
  touch "$_claimed"
  for _d in $VMTEST_SCRATCH; do
    [ "$(echo "$_disks" | wc -w)" -ge "$_want" ] && break
    grep -qx "$_d" "$_claimed" && continue
    echo "$_d" >> "$_claimed"
    _disks="$_disks $_d"
  done
  [ "$(echo "$_disks" | wc -w)" -ge "$_want" ] || fail "make_vg $_vg: not enough free scratch disks"
  # shellcheck disable=SC2086 # one argument per disk
  run pvcreate -y -ff $_disks
  # shellcheck disable=SC2086
  run vgcreate "$_vg" $_disks
  echo "$_vg" >> /run/vmtest-vgs # the runner removes /dev/$_vg afterwards
}

claim_disk() {
  touch "$_claimed"
  for _d in $VMTEST_SCRATCH; do
    grep -qx "$_d" "$_claimed" && continue
    echo "$_d" >> "$_claimed"
    eval "$1=\$_d"
    return 0
  done
  fail "claim_disk: no free scratch disk"
}

dm_create() {
  run dmsetup create "$1" --table "$2"
  run dmsetup mknodes "$1"
}

# SIZE bytes (a whole number of MiB) from the pattern disk, starting SEED MiB in
fill_pattern() {
  _bytes=$(to_bytes "$2")
  [ $((_bytes % 1048576)) = 0 ] || fail "fill_pattern: size $2 is not a whole number of MiB"
  run dd if="$VMTEST_PATTERN" of="$1" bs=1M count=$((_bytes / 1048576)) skip="$3" \
    iflag=fullblock conv=notrunc,fsync status=none
}

patterned_lvs() {
  _plv_vg=$1 _plv_size=$2 _plv_seed=$3
  shift 3
  for _plv in "$@"; do
    run lvcreate -y -Wy -Zy -L "$_plv_size" -n "$_plv" "$_plv_vg"
    fill_pattern "/dev/$_plv_vg/$_plv" "$_plv_size" "$_plv_seed"
  done
}

thin_origin() {
  run lvcreate -y --type thin-pool -L "$2" -c 64k --poolmetadatasize 4M -n pool "$1"
  run lvcreate -y -V 32M -T "$1/pool" -n origin
  fill_pattern "/dev/$1/origin" "$3" "$4"
}

write_at() {
  yes "$4" | head -c "$3" > "$TMP/write.bin"
  run dd if="$TMP/write.bin" of="$1" bs="$3" count=1 seek="$2" oflag=seek_bytes \
    conv=notrunc status=none
  echo "$2 $3 $4" >> "$WRITES"
}

# start_writer DEV TAG: a background writer of 64 KiB pieces ("TAGn..."), direct, to DEV's
# first 2 MiB, until $TMP/stop exists; then it touches $TMP/stopped. $TMP/writes counts its
# pieces; $writer is its pid. Returns once it has written.
start_writer() {
  rm -f "$TMP/stop" "$TMP/stopped" "$TMP/writes"
  (
    n=0
    while [ ! -e "$TMP/stop" ]; do
      yes "$2$n" | head -c 65536 > "$TMP/piece"
      dd if="$TMP/piece" of="$1" bs=65536 count=1 seek=$((n % 32)) \
        oflag=direct conv=notrunc status=none || break
      n=$((n + 1))
      echo $n > "$TMP/writes"
      usleep 50000
    done
    touch "$TMP/stopped"
  ) &
  writer=$!
  _n=0
  while [ $_n -lt 600 ] && [ ! -e "$TMP/writes" ]; do
    usleep 100000
    _n=$((_n + 1))
  done
  [ -e "$TMP/writes" ] || fail "the writer never wrote"
}

# same_content A B: sizes are compared at once; the bytes are compared on the
# host after the run (reading a device through busybox cmp or a checksum costs
# seconds per MiB-ten under TCG; a raw copy costs almost nothing): both are
# copied onto the export disk and the pair is queued in $VMTEST_HOSTCHECKS.
# A mismatch turns the scenario into FAIL in the host's report.
write_every() {
  yes "$6" | head -c "$5" > "$TMP/write.bin"
  echo "+ $4 writes of $5 bytes ($6) to $1 every $3 bytes from $2" >&2
  _i=0
  while [ $_i -lt "$4" ]; do
    _off=$(($2 + _i * $3))
    dd if="$TMP/write.bin" of="$1" bs="$5" count=1 seek="$_off" oflag=seek_bytes \
      conv=notrunc status=none || fail "write $1 at $_off"
    echo "$_off $5 $6" >> "$WRITES"
    _i=$((_i + 1))
  done
}

same_content() {
  _s1=$(_size "$1")
  _s2=$(_size "$2")
  if [ -z "$_s1" ] || [ "$_s1" != "$_s2" ]; then fail "sizes differ: $1 ($_s1 bytes) and $2 ($_s2 bytes)"; fi
  _o1=$(_export "$1" "$_s1") || fail "cannot export $1"
  _o2=$(_export "$2" "$_s2") || fail "cannot export $2"
  echo "$_o1 $_o2 $_s1 $1 $2" >> "$VMTEST_HOSTCHECKS"
  echo "queued for the host: $1 == $2 ($_s1 bytes)"
}

# in-guest comparison through MD5 digests (slow: ~3 s per 32 MiB under TCG)
same_md5() {
  _m1=$(dd if="$1" bs=1M status=none | md5sum | cut -d' ' -f1)
  _m2=$(dd if="$2" bs=1M status=none | md5sum | cut -d' ' -f1)
  echo "md5 $_m1  $1"
  echo "md5 $_m2  $2"
  [ "$_m1" = "$_m2" ] || fail "contents differ: $1 $2"
}

_size() {
  if [ -b "$1" ]; then blockdev --getsize64 "$1"; else stat -L -c %s "$1"; fi
}

# copy SOURCE (SIZE bytes) to the next free MiB of the export disk; prints
# its byte offset there
_export() {
  _next=$(cat /run/vmtest-export-next 2> /dev/null || echo 0)
  _mib=$((($2 + 1048575) / 1048576))
  [ $(((_next + _mib) * 1048576)) -le "$(blockdev --getsize64 "$VMTEST_EXPORT")" ] || return 1
  _flag=
  [ -b "$1" ] && _flag=iflag=direct
  timeout -k 5 "$CMD_TIMEOUT" dd if="$1" of="$VMTEST_EXPORT" bs=1M seek="$_next" $_flag \
    oflag=direct conv=notrunc status=none || return 1
  echo $((_next + _mib)) > /run/vmtest-export-next
  echo $((_next * 1048576))
}

# chunk numbers on stdin -> merged "OFFSET LENGTH data" lines (clamped to VOLSIZE)
chunks_to_extents() {
  sort -n -u |
    awk -v cs="$(to_bytes "$1")" -v vol="$(to_bytes "$2")" '
      function emit() { off = start * cs; len = (prev - start + 1) * cs
                        if (off + len > vol) len = vol - off
                        printf "%.0f %.0f data\n", off, len }
      NR > 1 && $1 == prev + 1 { prev = $1; next }
      NR > 1 { emit() }
      { start = $1; prev = $1 }
      END { if (NR) emit() }'
}

expected_extents() {
  awk -v cs="$(to_bytes "$1")" '!/^#/ && NF >= 2 && $2 > 0 {
      for (c = int($1 / cs); c <= int(($1 + $2 - 1) / cs); c++) print c }' "${3:-$WRITES}" |
    chunks_to_extents "$1" "$2"
}

# the origin chunk numbers recorded in a dm-snapshot persistent exception
# store (header: magic, valid, version, chunk size in sectors; metadata area i
# at chunk 1 + i * (exceptions per area + 1), entries of (old, new) u64 LE,
# ending at the first new == 0)
cow_old_chunks() {
  _cs=$(($(od -A n -t u4 -j 12 -N 4 "$1" | tr -d ' ') * 512))
  _per=$((_cs / 16))
  _area=0
  : > "$TMP/cow-old"
  while :; do
    _n=$(od -A n -v -t u8 -j $(((1 + _area * (_per + 1)) * _cs)) -N $_cs "$1" |
      awk -v out="$TMP/cow-old" '{ for (i = 1; i <= NF; i++) { k++
          if (k % 2) old = $i; else if ($i == 0) exit; else { print old >> out; n++ } } }
        END { print n + 0 }')
    [ "$_n" = "$_per" ] || break
    _area=$((_area + 1))
  done
  sort -n "$TMP/cow-old"
}

# thin pools: the held metadata snapshot's block ("-" when none is held) of a
# thin-pool target (e.g. VG-pool-tpool), and the sectors a thin LV maps
held_metadata_root() { dmsetup status "$1" | awk '$3 == "thin-pool" { print $7 }'; }
thin_mapped_sectors() { dmsetup status "$1" | awk '$3 == "thin" { print $4 }'; }

expect_error() {
  _text=$1
  shift
  echo "+ (must fail with '$_text') $*" >&2
  timeout -k 5 "$CMD_TIMEOUT" "$@" > "$TMP/out" 2> "$TMP/err"
  _rc=$?
  sed 's/^/  stderr: /' "$TMP/err" >&2
  _timed_out $_rc && fail "timed out after ${CMD_TIMEOUT}s: $*"
  [ $_rc != 0 ] || fail "succeeded but must fail: $*"
  [ "$(wc -l < "$TMP/err")" = 1 ] || fail "want one line on stderr, got $(wc -l < "$TMP/err"): $*"
  grep -qF -- "$_text" "$TMP/err" || fail "the error does not say '$_text': $*"
  return 0
}
