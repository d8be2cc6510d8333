#!/bin/sh
# runner.sh - runs in the test VM (started by /init): executes the scenarios
# named in /vmtest/config one after the other, each from a clean state (no
# active VG, scratch disks wiped), each under a time limit, and writes every
# result (status, log, seconds, files) as one tar archive onto the output disk.
# Byte comparisons queued by same_content are done by the host afterwards
# (export disk).  Progress lines "VMTEST ..." go to the console for the host to follow.
# shellcheck source=/dev/null
. /vmtest/config
: "${VMTEST_NSCRATCH:=4}"
export VMTEST_CMD_TIMEOUT VMTEST_SHOW
export VMTEST_LIB=/vmtest/lib.sh VMTEST_SCENARIOS_DIR=/vmtest/scenarios
O=/out
mkdir -p $O/scenarios

up() { cut -d' ' -f1 /proc/uptime; }
say() { echo "VMTEST $*" > /dev/console; }
disk_by_serial() {
  for d in /sys/block/vd*; do
    [ "$(cat "$d/serial" 2>/dev/null)" = "$1" ] && { echo "/dev/${d##*/}"; return 0; }
  done
  return 1
}
finish() {
  dmesg > $O/dmesg.txt
  echo "guest_uptime_at_end $(up)" >> $O/timing.txt
  echo "$1" > $O/COMPLETE
  if [ -n "$OUTDEV" ]; then
    tar -cf "$OUTDEV" -C $O . && sync
  fi
  say "END $1 uptime=$(up)"
  exit 0
}

say "BOOTED uptime=$(up) kernel=$(uname -r)"
# a probe boot (does the accelerator work?) runs no scenario
grep -qw vmtest.probe=1 /proc/cmdline && VMTEST_SCENARIOS=
echo "guest_uptime_at_start $(up)" > $O/timing.txt
i=0
while :; do
  OUTDEV=$(disk_by_serial vmtest-out)
  VMTEST_EXPORT=$(disk_by_serial vmtest-export)
  VMTEST_PATTERN=$(disk_by_serial vmtest-pattern)
  VMTEST_SCRATCH=
  n=0
  while [ $n -lt "$VMTEST_NSCRATCH" ]; do
    d=$(disk_by_serial vmtest-scratch$n) && VMTEST_SCRATCH="$VMTEST_SCRATCH $d"
    n=$((n + 1))
  done
  [ -n "$OUTDEV" ] && [ -n "$VMTEST_PATTERN" ] && [ -n "$VMTEST_EXPORT" ] && [ "$(echo "$VMTEST_SCRATCH" | wc -w)" = "$VMTEST_NSCRATCH" ] && break
  i=$((i + 1))
  if [ $i -gt 250 ]; then
    say "ERROR disks not found (out=$OUTDEV pattern=$VMTEST_PATTERN scratch=$VMTEST_SCRATCH)"
    finish disks-missing
  fi
  usleep 20000
done
export VMTEST_PATTERN VMTEST_SCRATCH VMTEST_EXPORT
{
  uname -a
  lvm version
  dmsetup version
  echo "thin_dump $(thin_dump -V)"
  busybox | head -1
  command -v lvmsync > /dev/null && lvmsync --version
} > $O/guest-versions.txt 2>&1

# clean state: no device-mapper device left, no VG (the scratch disks are
# zeroed: discard punches holes in the sparse image, and the LVM header area is
# also overwritten in case discard is unsupported).  device-mapper is asked
# directly: an LVM command costs about a second under TCG.
reset_state() {
  # file systems a scenario left mounted (killed before it could unmount them)
  for m in $(awk '$1 ~ "^/dev/(mapper/|dm-|vd)" { print $2 }' /proc/mounts | sort -r); do
    timeout 60 umount "$m" || timeout 60 umount -l "$m"
  done
  timeout 60 dmsetup remove_all --force
  timeout 60 dmsetup mknodes # removes the /dev/mapper nodes of devices gone
  losetup -D 2> /dev/null
  for d in $VMTEST_SCRATCH; do
    timeout 60 blkdiscard "$d" 2> /dev/null
    timeout 60 dd if=/dev/zero of="$d" bs=1M count=4 conv=fsync status=none
  done
  # the /dev/VG/LV links LVM made itself (no udev), and its device hints
  [ -e /run/vmtest-vgs ] && while read -r vg; do rm -rf "/dev/${vg:?}"; done < /run/vmtest-vgs
  rm -f /run/vmtest-vgs /run/lvm/hints
  rm -rf /tmp/vmtest
  if dmsetup ls 2> /dev/null | grep -qv 'No devices found'; then
    echo "device-mapper devices left:"
    dmsetup ls
    return 1
  fi
  return 0
}

for name in $VMTEST_SCENARIOS; do
  d=$O/scenarios/$name
  mkdir -p "$d/files" /tmp/vmtest
  say "START $name"
  t0=$(up)
  export VMTEST_NAME="$name" VMTEST_FILES="$d/files" VMTEST_TMP=/tmp/vmtest VMTEST_HOSTCHECKS="$d/host-checks.txt"
  # the scenario runs as its own process group, so that a time-out kills
  # every command it started, not only its shell
  rm -f /tmp/timed-out /tmp/scenario.pipe
  if [ "$VMTEST_SHOW" = 1 ]; then
    mkfifo /tmp/scenario.pipe
    tee "$d/log" < /tmp/scenario.pipe > /dev/console &
    teepid=$!
    setsid sh "/vmtest/scenarios/$name.sh" > /tmp/scenario.pipe 2>&1 &
  else
    setsid sh "/vmtest/scenarios/$name.sh" > "$d/log" 2>&1 &
  fi
  pid=$!
  (
    sleep "$VMTEST_SCENARIO_TIMEOUT"
    touch /tmp/timed-out
    kill -KILL -$pid
  ) 2> /dev/null &
  watchdog=$!
  wait $pid
  rc=$?
  kill $watchdog 2> /dev/null
  [ "$VMTEST_SHOW" = 1 ] && wait "$teepid"
  t1=$(up)
  secs=$(awk -v a="$t1" -v b="$t0" 'BEGIN { printf "%.1f", a - b }')
  if [ -e /tmp/timed-out ]; then
    status=TIMEOUT
  elif [ $rc = 0 ]; then
    status=PASS
  else
    status=FAIL
  fi
  [ "$status" = TIMEOUT ] && echo "scenario killed after ${VMTEST_SCENARIO_TIMEOUT}s" >> "$d/log"
  echo "$status" > "$d/status"
  echo "$secs" > "$d/seconds"
  echo "$name $status $secs" >> $O/results.txt
  say "RESULT $name $status $secs"
  t2=$(up)
  if ! reset_state > "$d/reset.log" 2>&1; then
    say "WARN clean-up after $name incomplete (see scenarios/$name/reset.log)"
  fi
  echo "reset_after_$name $(awk -v a="$(up)" -v b="$t2" 'BEGIN { printf "%.1f", a - b }')" >> $O/timing.txt
done
finish ok
