#!/bin/bash
# Benchmark of lvmsync's native thin delta against thin-provisioning-tools.
#
# Builds pool metadata with thin_restore: device 1 with MAPPINGS mapped blocks, device 3 = device
# 1 with CHANGES blocks remapped (thin_restore gives it a tree of its own: nothing is shared),
# and device 2 = device 1 with CHANGES blocks remapped copy-on-write, sharing every untouched
# btree node with device 1 exactly as a kernel snapshot does. Then times:
#   - native delta (examples/thin_delta_bench) on the shared pair (1,2) and the unshared (1,3);
#   - thin_delta --snap1 1 --snap2 2|3 (walks both trees fully either way);
#   - thin_dump of the whole pool, the input the Ruby lvmsync parsed.
# Times are the best of REPEATS runs with the metadata file in the page cache. With LOOP=1 (root)
# the metadata is also attached as a read-only loop device with direct I/O, which both readers
# open with O_DIRECT: every metadata block read then goes to the disk, as on a real _tmeta.
#
# Usage: [LOOP=1] bench/thin/run.sh [MAPPINGS [CHANGES [REPEATS]]]   (defaults 2000000 100 3)
set -euo pipefail
MAPPINGS=${1:-2000000}
CHANGES=${2:-100}
REPEATS=${3:-3}
cd "$(dirname "$0")/../.."
for t in thin_restore thin_delta thin_dump; do
    command -v $t >/dev/null || { echo "run.sh: $t not found (apt install thin-provisioning-tools)" >&2; exit 1; }
done
CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1} cargo build -q --release --example thin_delta_bench
BENCH=target/release/examples/thin_delta_bench
work=$(mktemp -d)
loopdev=
cleanup() {
    if [[ -n $loopdev ]]; then losetup -d "$loopdev"; fi
    rm -rf "$work"
}
trap cleanup EXIT
meta=$work/meta.bin

"$BENCH" gen-xml "$work/pool.xml" "$MAPPINGS" "$CHANGES" 1
truncate -s 1G "$meta"
thin_restore -q -i "$work/pool.xml" -o "$meta"
"$BENCH" share "$meta" "$CHANGES" 2

# best_of N CMD...: prints the shortest wall time of N runs in seconds (output discarded).
best_of() {
    local n=$1 best= t0 t1 d
    shift
    for ((i = 0; i < n; i++)); do
        t0=$(date +%s.%N)
        "$@" >/dev/null
        t1=$(date +%s.%N)
        d=$(echo "$t1 - $t0" | bc -l)
        if [[ -z $best ]] || (($(echo "$d < $best" | bc -l))); then best=$d; fi
    done
    printf '%.4f' "$best"
}

maxrss() { /usr/bin/time -f %M "$@" 2>&1 >/dev/null | tail -1; }

used_blocks=$(du -k "$meta" | cut -f1)
echo "pool: $MAPPINGS mapped blocks per device, $CHANGES changed blocks, metadata $((used_blocks / 1024)) MiB allocated"
echo
printf '%-44s %10s %12s %10s %10s\n' "what" "seconds" "blocks/reads" "skipped" "max RSS KiB"

# Warm the page cache once.
cat "$meta" >/dev/null

# compare LABEL FILE: native delta and thin_delta on both device pairs of FILE.
compare() {
    local label=$1 m=$2 secs blocks skipped extents calls rss
    for pair in "1 2 shared" "1 3 unshared"; do
        set -- $pair
        read -r secs blocks skipped extents calls < <("$BENCH" delta "$m" "$1" "$2" "$REPEATS")
        rss=$(maxrss "$BENCH" delta "$m" "$1" "$2" 1)
        printf '%-44s %10.4f %12s %10s %10s\n' "native $1->$2 $3$label ($extents ext.)" "$secs" "$blocks/$calls" "$skipped" "$rss"
        secs=$(best_of "$REPEATS" thin_delta --snap1 "$1" --snap2 "$2" "$m")
        rss=$(maxrss thin_delta --snap1 "$1" --snap2 "$2" "$m")
        printf '%-44s %10s %12s %10s %10s\n' "thin_delta $1->$2 $3$label" "$secs" "-" "-" "$rss"
    done
}
compare "" "$meta"
if [[ ${LOOP:-0} == 1 ]]; then
    loopdev=$(losetup --find --show --read-only --direct-io=on "$meta")
    compare " O_DIRECT" "$loopdev"
fi
secs=$(best_of "$REPEATS" thin_dump "$meta")
rss=$(maxrss thin_dump "$meta")
printf '%-44s %10s %12s %10s %10s\n' "thin_dump (whole pool, XML)" "$secs" "-" "-" "$rss"
lines=$(thin_dump "$meta" | wc -l)
echo
echo "thin_dump output: $lines lines."
for pair in "1 2" "1 3"; do
    set -- $pair
    thin_delta --snap1 "$1" --snap2 "$2" "$meta" >"$work/delta.xml"
    echo "  $1->$2 native vs thin_delta: $("$BENCH" check "$meta" "$1" "$2" "$work/delta.xml")"
done
