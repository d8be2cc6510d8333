# shellcheck shell=sh
# lvmsync killed by SIGTERM, SIGINT and SIGHUP at every stage of a thin sync:
# before it holds the pool's metadata snapshot, while it holds it (seen in the
# pool status, the process stopped there before the signal), and while it
# sends data: afterwards the pool holds no metadata snapshot and a new one can
# be reserved and released. A signal ignored from the start (nohup's SIGHUP;
# SIGINT here, as the runner starts scenarios as background jobs) does not end
# it: it completes and releases as usual. A metadata snapshot someone else
# holds is refused with a clear message and left held.
. "$VMTEST_LIB"
VG=tkill
POOL=$VG-pool-tpool
MiB=1048576

step "pool, 32 MiB origin, thin snapshot, 16 MiB of changes"
make_vg $VG
thin_origin $VG 96M 24M 0
run lvcreate -y -s -n snap $VG/origin
run lvchange -ay -K $VG/snap
run dd if="$VMTEST_PATTERN" of=/dev/$VG/origin bs=1M count=16 skip=30 seek=8 conv=fsync status=none
save changes.txt lvmsync changes /dev/$VG/snap
check_eq "no metadata snapshot held before" "$(held_metadata_root $POOL)" "-"

# held: whether the pool holds a metadata snapshot (one process per look)
held() {
  # shellcheck disable=SC2046 # fields of the status line
  set -- $(dmsetup status $POOL)
  [ "${7:--}" != "-" ]
}

# wait_held PID: until the pool holds a metadata snapshot (0) or PID ended (1)
wait_held() {
  _n=0
  while [ $_n -lt 2000 ] && ! grep -q '^State:.*[ZX]' /proc/"$1"/status 2> /dev/null; do
    held && return 0
    [ -e /proc/"$1" ] || return 1
    _n=$((_n + 1))
  done
  return 1
}

# wait_gone PID: PID ended within 30 s (else its threads are shown, it is
# killed, and the scenario fails)
wait_gone() {
  _n=0
  while [ $_n -lt 300 ] && [ -e /proc/"$1" ] && ! grep -q '^State:.*[ZX]' /proc/"$1"/status 2> /dev/null; do
    usleep 100000
    _n=$((_n + 1))
  done
  grep -q '^State:.*[ZX]' /proc/"$1"/status 2> /dev/null || [ ! -e /proc/"$1" ] && return 0
  for _t in /proc/"$1"/task/*; do
    echo "thread $(cat "$_t/comm"): $(grep '^State:' "$_t/status") wchan $(cat "$_t/wchan" 2> /dev/null)"
    cat "$_t/stack" 2> /dev/null
  done
  kill -KILL "$1"
  fail "process $1 still running 30 s after the signal"
}

# after every kill: nothing held, and a new metadata snapshot can be reserved
# and released
check_pool_free() {
  check_eq "$1: no metadata snapshot held" "$(held_metadata_root $POOL)" "-"
  run dmsetup message $POOL 0 reserve_metadata_snap
  [ "$(held_metadata_root $POOL)" != "-" ] || fail "$1: reserve_metadata_snap did not hold one"
  run dmsetup message $POOL 0 release_metadata_snap
  [ "$(held_metadata_root $POOL)" = "-" ] || fail "$1: release_metadata_snap left one held"
}

# signal number, and whether this shell ignores it (then lvmsync, started by
# it, inherits that: the runner starts scenarios as background jobs, for which
# a shell ignores SIGINT)
signum() { case $1 in HUP) echo 1 ;; INT) echo 2 ;; TERM) echo 15 ;; esac; }
ignored_here() {
  _mask=$(sed -n 's/^SigIgn:[[:space:]]*//p' /proc/$$/status)
  [ $((0x$_mask >> ($(signum "$1") - 1) & 1)) = 1 ]
}
echo "this shell ignores: $(for s in HUP INT TERM; do ignored_here $s && printf 'SIG%s ' $s; done)"

# kill_run SIG[-ignored] MODE [USECS]: run `lvmsync --stdout SNAP` (with SIG
# ignored from the start when -ignored, as nohup does for HUP) and send SIG
#   early USECS  after USECS microseconds (mostly during discovery)
#   held USECS   USECS after the pool is seen holding lvmsync's metadata snapshot
#   frozen       stopped (SIGSTOP) while it holds it; SIG, then SIGCONT
#   data         once it has written 256 KiB to a pipe and blocks on it
# The exit status must be 128 + SIG (0 when SIG is ignored: lvmsync then
# completes), and the pool must hold nothing afterwards.
kill_run() {
  _sig=${1%-ignored} _mode=$2 _us=${3:-0}
  _what="SIG$1 $_mode${3:+ ${3}us}"
  _out=$TMP/out
  if [ "$_mode" = data ]; then
    rm -f "$TMP/fifo"
    mkfifo "$TMP/fifo"
    exec 8<> "$TMP/fifo" # keeps the pipe open; reads happen below
    _out=$TMP/fifo
  fi
  if [ "$1" != "$_sig" ]; then
    (
      trap '' "$_sig"
      exec lvmsync --stdout /dev/$VG/snap > "$_out" 2> "$TMP/kill.err" 8<&-
    ) &
  else
    lvmsync --stdout /dev/$VG/snap > "$_out" 2> "$TMP/kill.err" 8<&- &
  fi
  _pid=$!
  _landed=-
  case $_mode in
    early) usleep "$_us" ;;
    held) wait_held $_pid && usleep "$_us" && held && _landed=held ;;
    frozen)
      if wait_held $_pid; then
        kill -STOP $_pid
        held && _landed=held
      fi
      ;;
    data)
      timeout 30 dd if="$TMP/fifo" of=/dev/null bs=64k count=4 iflag=fullblock status=none &&
        ! held && _landed=sending
      ;;
  esac
  kill -"$_sig" $_pid 2> /dev/null || _landed="$_landed,already-ended"
  [ "$_mode" = frozen ] && kill -CONT $_pid 2> /dev/null
  _want=$((128 + $(signum "$_sig")))
  if [ "$1" != "$_sig" ] || ignored_here "$_sig"; then _want=0; fi
  [ $_want != 0 ] && wait_gone $_pid
  if [ "$_mode" = data ]; then
    # drain what an lvmsync that goes on sends: a read end opened while fd 8
    # keeps the pipe open, and only lvmsync left writing
    exec 9< "$TMP/fifo"
    cat <&9 > /dev/null 8<&- 9<&- &
    _cat=$!
    exec 8<&- 9<&-
    wait $_pid
    _rc=$?
    wait $_cat
  else
    wait $_pid
    _rc=$?
  fi
  echo "[$(up)] $_what: exit status $_rc (want $_want), landed: $_landed; stderr: $(cat "$TMP/kill.err")"
  echo "$1 $_mode $_rc $_want $_landed" >> "$FILES/kills.txt"
  case $_rc,$_landed in
    "$_want",* | 0,*already-ended) ;;
    *) fail "$_what: exit status $_rc, want $_want" ;;
  esac
  check_pool_free "$_what"
}

step "kills at varying times"
: > "$FILES/kills.txt"
for spec in "TERM early 0" "TERM early 400000" "TERM held 0" "TERM held 5000" \
  "TERM frozen" "TERM frozen" "INT frozen" "HUP frozen" "HUP-ignored frozen" \
  "TERM data" "HUP data" "INT data"; do
  # shellcheck disable=SC2086 # spec is SIG MODE [USECS]
  kill_run $spec
done
for run in "TERM frozen" "INT frozen" "HUP frozen" "HUP-ignored frozen"; do
  grep -q "^$run .* held" "$FILES/kills.txt" || fail "no SIG$run kill landed while the metadata snapshot was held"
done
for run in "TERM data" "HUP data" "INT data"; do
  grep -q "^$run .* sending" "$FILES/kills.txt" || fail "no SIG$run kill landed while sending"
done

step "a metadata snapshot held by someone else is refused and left held"
run dmsetup message $POOL 0 reserve_metadata_snap
theirs=$(held_metadata_root $POOL)
expect_error "already has a held metadata snapshot" lvmsync --stdout /dev/$VG/snap
expect_error "already has a held metadata snapshot" lvmsync changes /dev/$VG/snap
check_eq "their metadata snapshot is still held" "$(held_metadata_root $POOL)" "$theirs"
run dmsetup message $POOL 0 release_metadata_snap
save changes-after.txt lvmsync changes /dev/$VG/snap
check_files_eq "change list after all this" "$FILES/changes-after.txt" "$FILES/changes.txt"
check_pool_free "end"
