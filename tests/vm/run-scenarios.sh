#!/bin/bash
# run-scenarios.sh [NAME...] - boot ONE QEMU VM with real LVM and run the
# scenarios tests/vm/scenarios/NAME.sh in it (all of them by default).
#
# The VM image comes from build-image.sh (cached).  The per-run payload is a
# second cpio appended to the initramfs: the guest runner, lib.sh, the
# scenarios, and target/release/lvmsync and replay_log (examples/replay_log.rs)
# with any shared library they need that the image lacks.  Disks: one read-only pattern disk (deterministic data,
# generated once on the host), VMTEST_NSCRATCH scratch disks (sparse, fresh
# every run) and an output disk onto which the guest writes a tar of results.
#
# Prints PASS/FAIL per scenario (with the log tail of failures) and ends with
# "N passed, N failed".  Exit status 0 only if every scenario passed and the
# VM reported.  Results stay in $VMTEST_OUT (default tests/vm/out/scenarios):
# results.txt, timing.txt, console.log, scenarios/NAME/{status,log,files/}.
#
# Env knobs:
#   ACCEL=auto|kvm|tcg          auto: KVM only if /dev/kvm is usable, the CPU
#                               flags show vmx/svm and a probe boot reports back
#                               (a nested kvm-pvm device hangs stock kernels),
#                               else TCG
#   VMTEST_LVMSYNC=PATH         binary to test (default: cargo build --release and
#                               use target/release/lvmsync; VMTEST_LVMSYNC=none: none)
#   VMTEST_REPLAY_LOG=PATH      the dm-log-writes replayer examples/replay_log.rs (default:
#                               built like lvmsync, target/release/examples/replay_log;
#                               none: none)
#   VMTEST_OUT=DIR              results folder
#   VMTEST_SCENARIO_DIR=DIR     where NAME.sh files are (default tests/vm/scenarios)
#   VMTEST_SHOW=1               stream the scenarios' output to the terminal
#   VMTEST_TIMEOUT=SECS         whole VM run (default 120 + 150 per scenario it runs)
#   VMTEST_SCENARIO_TIMEOUT=SECS  one scenario (default 420)
#   VMTEST_CMD_TIMEOUT=SECS     one command inside a scenario (default 120)
#   VMTEST_JOBS=N               run N VMs at once, the scenarios split between them
#                               (only worth it with N idle cores; default 1)
#   VMTEST_MEM=MiB (512)  VMTEST_SMP=N (1)  VMTEST_NSCRATCH=N (4)  VMTEST_DISK_MB (256)
#   KEEP_DISKS=1                keep the disk images in $VMTEST_OUT/disks
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${VMTEST_CACHE:-$HERE/cache}
OUT=${VMTEST_OUT:-$HERE/out/scenarios}
SCEN_DIR=${VMTEST_SCENARIO_DIR:-$HERE/scenarios}
ACCEL=${ACCEL:-auto}
MEM=${VMTEST_MEM:-512}
SMP=${VMTEST_SMP:-1}
NSCRATCH=${VMTEST_NSCRATCH:-4}
DISK_MB=${VMTEST_DISK_MB:-256}
PATTERN_MB=128
T_START=$(date +%s.%N)
log() { echo "[vmtest] $*" >&2; }
since() { awk -v a="$(date +%s.%N)" -v b="$1" 'BEGIN { printf "%.1f", a - b }'; }

# ------------------------------------------------------------ scenarios
names=("$@")
if ((${#names[@]} == 0)); then
  for f in "$SCEN_DIR"/*.sh; do
    [[ -e $f ]] || continue
    n=${f##*/}
    names+=("${n%.sh}")
  done
fi
((${#names[@]})) || { log "no scenarios in $SCEN_DIR"; exit 2; }
for n in "${names[@]}"; do
  n=${n%.sh}
  [[ -f $SCEN_DIR/$n.sh ]] || { log "no such scenario: $SCEN_DIR/$n.sh"; exit 2; }
done
names=("${names[@]%.sh}")
# A bound for a VM that hangs, not for slow scenarios (each has its own): generous per scenario,
# since a loaded machine runs TCG several times slower.
TIMEOUT=${VMTEST_TIMEOUT:-$((120 + 150 * ${#names[@]}))}

# ------------------------------------------------------------ image, binary
IMG=$("$HERE/build-image.sh" | tail -1)
T_IMAGE=$(since "$T_START")
if ! command -v python3 > /dev/null; then
  apt-get update -q > /dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3 > /dev/null
fi
LVMSYNC=${VMTEST_LVMSYNC:-}
REPLAY_LOG=${VMTEST_REPLAY_LOG:-}
build=()
[[ -n $LVMSYNC ]] || build+=(--bin lvmsync)
[[ -n $REPLAY_LOG ]] || build+=(--example replay_log)
if ((${#build[@]})); then
  log "cargo build --release ${build[*]}"
  (cd "$REPO" && cargo build --release --quiet "${build[@]}")
fi
LVMSYNC=${LVMSYNC:-$REPO/target/release/lvmsync}
REPLAY_LOG=${REPLAY_LOG:-$REPO/target/release/examples/replay_log}
[[ $LVMSYNC == none || -x $LVMSYNC ]] || { log "lvmsync binary $LVMSYNC missing"; exit 2; }
[[ $REPLAY_LOG == none || -x $REPLAY_LOG ]] || { log "replay_log binary $REPLAY_LOG missing"; exit 2; }

# ------------------------------------------------------------ pattern disk
# 128 MiB, generated once and cached.  MiB 0-63: seeded pseudo-random data in
# which every 7th 64 KiB block is zero (zero runs occur too); MiB 64-127: text
# naming its own byte offset in every 512-byte sector (compresses well, for
# fixtures, and shows where misplaced data came from).
PATTERN=$CACHE/pattern-v2-${PATTERN_MB}M.img
if [[ ! -s $PATTERN ]]; then
  mkdir -p "$CACHE"
  python3 - "$PATTERN.tmp$$" "$PATTERN_MB" << 'PY'
import random, sys
path, mib = sys.argv[1], int(sys.argv[2])
rng = random.Random(0x6c766d73)
blk = 65536
half = mib * 1048576 // 2
with open(path, "wb") as f:
    for i in range(half // blk):
        f.write(bytes(blk) if i % 7 == 3 else rng.randbytes(blk))
    for off in range(half, 2 * half, 512):
        line = b"lvmsync test pattern, byte offset %12d\n" % off
        f.write((line * (512 // len(line) + 1))[:511] + b"\n")
PY
  mv "$PATTERN.tmp$$" "$PATTERN"
fi

# ------------------------------------------------------------ one VM
run_one_vm() {
  # ------------------------------------------------------------ payload cpio
  mkdir -p "$OUT/disks"
  PAY=$OUT/payload
  mkdir -p "$PAY/vmtest/scenarios" "$PAY/usr/bin" "$PAY/lib/x86_64-linux-gnu"
  cp "$HERE/guest/runner.sh" "$PAY/vmtest/runner.sh"
  cp "$HERE/lib.sh" "$PAY/vmtest/lib.sh"
  cp "$SCEN_DIR"/*.sh "$PAY/vmtest/scenarios/"
  chmod 755 "$PAY/vmtest/runner.sh"
  {
    echo "VMTEST_SCENARIOS='${names[*]}'"
    echo "VMTEST_NSCRATCH=$NSCRATCH"
    echo "VMTEST_SCENARIO_TIMEOUT=${VMTEST_SCENARIO_TIMEOUT:-420}"
    echo "VMTEST_CMD_TIMEOUT=${VMTEST_CMD_TIMEOUT:-120}"
    echo "VMTEST_SHOW=${VMTEST_SHOW:-0}"
  } > "$PAY/vmtest/config"
  # shared libraries the binaries need that the image lacks, from this host
  # (same Debian release as the image)
  declare -A seen=()
  add_host_libs() {
    local n f d
    for n in $(readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
      [[ -n ${seen[$n]:-} ]] && continue
      seen[$n]=1
      grep -qx "$n" "$IMG/libs.txt" && continue
      f=
      for d in /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu /lib64 /usr/lib64; do
        [[ -e $d/$n ]] && { f=$d/$n; break; }
      done
      [[ -n $f ]] || { log "library $n needed by $1 not found on this host"; exit 2; }
      cp -L "$f" "$PAY/lib/x86_64-linux-gnu/$n"
      log "adding host library $n"
      add_host_libs "$f"
    done
  }
  for bin in "lvmsync=$LVMSYNC" "replay_log=$REPLAY_LOG"; do
    [[ ${bin#*=} == none ]] && continue
    # debug info only makes the initramfs bigger (slower to unpack)
    objcopy --strip-debug "${bin#*=}" "$PAY/usr/bin/${bin%%=*}"
    add_host_libs "${bin#*=}"
  done
  INITRD=$OUT/disks/initramfs+payload.cpio
  cp "$IMG/initramfs.cpio" "$INITRD"
  (cd "$PAY" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >> "$INITRD"

  # ------------------------------------------------------------ disks
  drives=()
  add_disk() { # add_disk FILE SERIAL [readonly]
    local ro=
    [[ ${3:-} == readonly ]] && ro=,readonly=on
    drives+=(-drive "file=$1,format=raw,if=none,id=$2,cache=unsafe,discard=unmap$ro"
      -device "virtio-blk-pci,drive=$2,serial=$2")
  }
  add_disk "$PATTERN" vmtest-pattern readonly
  for ((i = 0; i < NSCRATCH; i++)); do
    truncate -s "${DISK_MB}M" "$OUT/disks/scratch$i.img"
    add_disk "$OUT/disks/scratch$i.img" "vmtest-scratch$i"
  done
  truncate -s 512M "$OUT/disks/out.img"
  add_disk "$OUT/disks/out.img" vmtest-out
  # device copies for the byte comparisons done here after the run (same_content)
  truncate -s "${VMTEST_EXPORT_MB:-4096}M" "$OUT/disks/export.img"
  add_disk "$OUT/disks/export.img" vmtest-export

  # ------------------------------------------------------------ boot
  if [[ -s $IMG/vmlinux ]]; then KERNEL=$IMG/vmlinux; else KERNEL=$IMG/vmlinuz; fi
  qemu_cmd() { # qemu_cmd ACCEL [EXTRA KERNEL ARGS]: sets QEMU
    local accel_args
    case $1 in
      kvm) accel_args=(-accel kvm -cpu host) ;;
      tcg) accel_args=(-accel tcg -cpu max) ;;
      *) log "ACCEL must be auto, kvm or tcg"; exit 2 ;;
    esac
    QEMU=(qemu-system-x86_64 "${accel_args[@]}" -machine q35 -smp "$SMP" -m "$MEM"
      -nodefaults -no-user-config -nographic -serial stdio -no-reboot
      -kernel "$KERNEL" -initrd "$INITRD" -append "console=ttyS0 quiet panic=-1 ${2:-}"
      "${drives[@]}")
  }
  if [[ $ACCEL == auto ]]; then
    # /dev/kvm alone proves nothing (a nested kvm-pvm device hangs stock
    # kernels): KVM only if the CPU shows vmx/svm AND a probe boot (no
    # scenarios) reports back in time
    ACCEL=tcg
    if [[ -r /dev/kvm && -w /dev/kvm ]] && grep -qwE 'vmx|svm' /proc/cpuinfo; then
      qemu_cmd kvm vmtest.probe=1
      if timeout -k 5 "${VMTEST_KVM_PROBE_TIMEOUT:-30}" "${QEMU[@]}" < /dev/null 2>&1 |
        tr -d '\r' | grep -aq '^VMTEST END ok'; then
        ACCEL=kvm
      else
        log "KVM probe boot did not report: using TCG"
      fi
      # the probe's results must not pass for the real run's
      truncate -s 0 "$OUT/disks/out.img"
      truncate -s 512M "$OUT/disks/out.img"
    fi
  fi
  qemu_cmd "$ACCEL"
  log "booting ${#names[@]} scenario(s), accel=$ACCEL, kernel=${KERNEL##*/}"
  T_VM=$(date +%s.%N)
  set +e
  if [[ ${VMTEST_SHOW:-0} == 1 ]]; then
    # the scenarios' own output: from the runner's first line on, without
    # the runner's markers and kernel messages
    timeout -k 10 "$TIMEOUT" "${QEMU[@]}" < /dev/null 2>&1 | tr -d '\r' | tee "$OUT/console.log" |
      awk '/VMTEST BOOTED/ { on = 1; next }
           on && !/^VMTEST/ && !/^\[ *[0-9]+\.[0-9]+\] / { print; fflush() }'
  else
    timeout -k 10 "$TIMEOUT" "${QEMU[@]}" < /dev/null 2>&1 | tr -d '\r' | tee "$OUT/console.log" |
      grep -a --line-buffered -e '^VMTEST RESULT' -e '^VMTEST WARN' -e '^VMTEST ERROR' |
      sed -u 's/^VMTEST RESULT /[vmtest]   /' >&2
  fi
  qrc=${PIPESTATUS[0]}
  set -e
  VM_SECS=$(since "$T_VM")

  # ------------------------------------------------------------ results
  tar -xf "$OUT/disks/out.img" -C "$OUT" 2> /dev/null || true
  reported=0
  [[ -s $OUT/COMPLETE && $(cat "$OUT/COMPLETE") == ok ]] && reported=1
  # byte comparisons queued in the guest: "OFFSET1 OFFSET2 SIZE NAME1 NAME2"
  # on the export disk; a mismatch fails the scenario
  for n in "${names[@]}"; do
    d=$OUT/scenarios/$n
    [[ -s $d/host-checks.txt ]] || continue
    while read -r o1 o2 size a b; do
      if r=$(cmp -i "$o1:$o2" -n "$size" "$OUT/disks/export.img" "$OUT/disks/export.img" 2>&1); then
        echo "host check ok: $a == $b ($size bytes)" >> "$d/log"
      else
        byte=$(sed -n 's/.*differ: byte \([0-9]*\).*/\1/p' <<< "$r")
        echo "FAIL (host check): $a and $b differ${byte:+ (first at byte $((byte - 1)))}" >> "$d/log"
        [[ $(cat "$d/status" 2> /dev/null) == PASS ]] && echo FAIL > "$d/status"
      fi
    done < "$d/host-checks.txt"
  done
  # a VM that never wrote its archive (hung, killed) still announced each
  # finished scenario on the console
  if ((!reported)); then
    while read -r _ _ n st secs; do
      [[ -e $OUT/scenarios/$n/status ]] && continue
      mkdir -p "$OUT/scenarios/$n"
      echo "$st" > "$OUT/scenarios/$n/status"
      echo "$secs" > "$OUT/scenarios/$n/seconds"
    done < <(grep -a '^VMTEST RESULT ' "$OUT/console.log" || true)
  fi
}

# ------------------------------------------------------------ several VMs
# VMTEST_JOBS=N splits the scenarios (round robin) over N VMs run at once,
# each by this script, then reports them together
run_vms_in_parallel() {
  local k i part pids=() p
  mkdir -p "$OUT/scenarios"
  log "${#names[@]} scenarios in $JOBS VMs at once"
  T_VM=$(date +%s.%N)
  for ((k = 0; k < JOBS; k++)); do
    part=()
    for ((i = k; i < ${#names[@]}; i += JOBS)); do part+=("${names[i]}"); done
    VMTEST_JOBS=1 VMTEST_OUT=$OUT/job$k VMTEST_LVMSYNC=$LVMSYNC VMTEST_REPLAY_LOG=$REPLAY_LOG "$0" "${part[@]}" > "$OUT/job$k.log" 2>&1 &
    pids+=($!)
  done
  qrc=0
  for p in "${pids[@]}"; do wait "$p" || qrc=$?; done
  VM_SECS=$(since "$T_VM")
  reported=1
  ACCEL=
  for ((k = 0; k < JOBS; k++)); do
    [[ $(cat "$OUT/job$k/COMPLETE" 2> /dev/null) == ok ]] || reported=0
    ACCEL=${ACCEL:-$(sed -n 's/^accel //p' "$OUT/job$k/run-info.txt" 2> /dev/null)}
    for d in "$OUT/job$k/scenarios"/*/; do
      [[ -d $d ]] && ln -sfn "../job$k/scenarios/$(basename "$d")" "$OUT/scenarios/$(basename "$d")"
    done
    { echo "job$k $(sed -n 's/^guest_uptime_at_end /guest_uptime_at_end /p' "$OUT/job$k/timing.txt" 2> /dev/null)"; } >> "$OUT/timing.txt"
  done
}

# only what this script creates: VMTEST_OUT may be any folder
rm -rf "$OUT"/{scenarios,disks,payload,COMPLETE} "$OUT"/job[0-9]* \
  "$OUT"/{console.log,results.txt,timing.txt,run-info.txt,dmesg.txt,guest-versions.txt}
JOBS=${VMTEST_JOBS:-1}
((JOBS <= ${#names[@]})) || JOBS=${#names[@]}
if ((JOBS > 1)); then
  run_vms_in_parallel
else
  run_one_vm
fi

pass=0 failed=0
echo
for n in "${names[@]}"; do
  st=$(cat "$OUT/scenarios/$n/status" 2> /dev/null || echo NO-RESULT)
  secs=$(cat "$OUT/scenarios/$n/seconds" 2> /dev/null || echo "?")
  if [[ $st == PASS ]]; then
    pass=$((pass + 1))
    printf 'PASS %-40s %6ss\n' "$n" "$secs"
  else
    failed=$((failed + 1))
    printf '%s %-40s %6ss\n' "$st" "$n" "$secs"
    if [[ -s $OUT/scenarios/$n/log ]]; then
      tail -n "${VMTEST_TAIL:-25}" "$OUT/scenarios/$n/log" | sed 's/^/    | /'
    fi
  fi
done
{
  echo "accel $ACCEL"
  echo "image_check_seconds $T_IMAGE"
  echo "vm_wall_seconds $VM_SECS"
  echo "qemu_exit_status $qrc"
  [[ -s $OUT/timing.txt ]] && cat "$OUT/timing.txt"
  echo "total_wall_seconds $(since "$T_START")"
} > "$OUT/run-info.txt"
for n in "${names[@]}"; do
  echo "$n $(cat "$OUT/scenarios/$n/status" 2> /dev/null || echo NO-RESULT) $(cat "$OUT/scenarios/$n/seconds" 2> /dev/null || echo '?')"
done > "$OUT/results.txt"
[[ -n ${KEEP_DISKS:-} ]] || rm -rf "$OUT/disks" "$OUT/payload"
echo "timing: VM ${VM_SECS}s wall (accel $ACCEL, guest uptime at end $(sed -n 's/guest_uptime_at_end //p' "$OUT/timing.txt" 2> /dev/null | tr '\n' ' ' || echo '?')s), total $(since "$T_START")s; results in $OUT"
if ((!reported)); then
  echo "the VM did not report (qemu exit status $qrc); console tail:"
  for f in "$OUT/console.log" "$OUT"/job*/console.log; do
    [[ -e $f ]] && tail -n 20 "$f" | sed 's/^/    | /'
  done
  [[ $ACCEL == kvm ]] && echo "hint: /dev/kvm may not run stock kernels here; try ACCEL=tcg"
fi
echo "$pass passed, $failed failed"
((failed == 0 && reported))
