#!/bin/bash
# Fuzzes lvmsync's parsers of untrusted input with cargo-fuzz (targets in fuzz/fuzz_targets/).
#
#   scripts/fuzz.sh [TARGET...] [--seconds N] [--minimise]
#
# Runs each TARGET (default: all) for N seconds (default 60; 0: no run), one after the other,
# and prints
# per target the executions, the coverage and corpus reached, and the findings (inputs that
# crashed, hung or ran out of memory, saved under fuzz/artifacts/TARGET/). New corpus inputs go
# to fuzz/work/TARGET/ (not committed); the committed corpus fuzz/corpus/TARGET/ and the
# regression inputs fuzz/regressions/TARGET/ are read, never written. --minimise then merges
# the work corpus into fuzz/corpus/TARGET/, keeping only inputs that reach code no smaller
# input reaches (cargo fuzz cmin on coverage edges). Exits non-zero if anything was found.
#
# cargo-fuzz needs nightly compiler flags (sanitizer, coverage instrumentation); on a stable
# toolchain RUSTC_BOOTSTRAP=1 enables them. AddressSanitizer is used (cargo-fuzz's default).
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH=$HOME/.cargo/bin:$PATH
export RUSTC_BOOTSTRAP=1

seconds=60 minimise=0 targets=()
while (($#)); do
  case $1 in
    --seconds) seconds=${2:?--seconds needs a number}; shift 2 ;;
    --minimise) minimise=1; shift ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
if ! [[ $seconds =~ ^[0-9]+$ ]]; then
  echo "fuzz.sh: --seconds needs a number, not '$seconds'" >&2; exit 2
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked || exit 1
fi
all=$(cargo fuzz list) || exit 1
((${#targets[@]})) || mapfile -t targets <<<"$all"
for t in "${targets[@]}"; do
  grep -qx -- "$t" <<<"$all" || { echo "fuzz.sh: no target '$t' (targets: $(echo $all))" >&2; exit 2; }
done

echo "== building the fuzz targets"
cargo fuzz build || exit 1

found=0
summary=()

# Runs target $1 for $seconds seconds and reports what it did and found.
run() {
  local t=$1 dirs log rc before execs last cov corp new line
  echo "== $t: ${seconds}s"
  dirs=("fuzz/work/$t" "fuzz/corpus/$t")
  [[ -d fuzz/regressions/$t ]] && dirs+=("fuzz/regressions/$t")
  before=$(find "fuzz/artifacts/$t" -type f | wc -l)
  log="fuzz/work/$t.log"
  # A single input running longer than 10 s is a hang; one allocation above 512 MiB (readers
  # cap records at 64 MiB) is a finding. No leak detection: a leak is no safety issue in Rust,
  # and LeakSanitizer misreports the thread-local destructors of threads still exiting (the
  # exception store reader's scoped threads).
  cargo fuzz run "$t" "${dirs[@]}" -- -max_total_time="$seconds" -timeout=10 \
    -malloc_limit_mb=512 -rss_limit_mb=2048 -detect_leaks=0 -print_final_stats=1 >"$log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  last=$(grep -E '^#[0-9]+' "$log" | tail -1)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9]*[a-zA-Z]*\).*/\1/p' <<<"$last")
  new=$(($(find "fuzz/artifacts/$t" -type f | wc -l) - before))
  if ((rc != 0 || new > 0)); then
    found=1
    echo "   finding (exit $rc): see $log and fuzz/artifacts/$t/"
    grep -m3 -E 'panicked|ERROR: libFuzzer|ERROR: AddressSanitizer|SUMMARY' "$log" | sed 's/^/   /'
  fi
  line="$t: ${execs:-?} executions, coverage ${cov:-?}, corpus ${corp:-?}, $new new findings"
  echo "   $line"
  summary+=("$line")
}

# Folds fuzz/work/$1 into fuzz/corpus/$1, keeping only inputs that add coverage.
minimise() {
  local t=$1
  echo "== $t: minimising fuzz/corpus/$t"
  cp -n "fuzz/work/$t"/* "fuzz/corpus/$t/" 2>/dev/null
  # Edges, not hit counts: every count bucket of every edge would keep far more inputs.
  cargo fuzz cmin "$t" "fuzz/corpus/$t" -- -use_counters=0 -detect_leaks=0 \
    >"fuzz/work/$t.cmin.log" 2>&1 || { echo "   cmin failed: see fuzz/work/$t.cmin.log"; found=1; }
  echo "   fuzz/corpus/$t: $(find "fuzz/corpus/$t" -type f | wc -l) inputs," \
    "$(du -sh "fuzz/corpus/$t" | cut -f1)"
}

for t in "${targets[@]}"; do
  mkdir -p "fuzz/work/$t" "fuzz/corpus/$t" "fuzz/artifacts/$t"
  ((seconds == 0)) || run "$t"
  ((minimise == 0)) || minimise "$t"
done
if ((${#summary[@]})); then
  echo "== summary"
  printf '%s\n' "${summary[@]}"
fi
exit $found
