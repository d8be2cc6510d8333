#!/bin/bash
# lvmsync benchmark suite: one command, one table, every figure measured in this run on the
# same data.
#
#   bench/run.sh                 (BENCH_GIB=4: a 4 GiB origin; about 10 minutes on 2 cores)
#   BENCH_GIB=1 bench/run.sh     (quick look)
#   BENCH_ONLY="send apply" bench/run.sh   (some sections: device send apply e2e verify checksum
#                                          changes full)
#   BENCH_REPEAT=3 bench/run.sh  (best of 3 for every send, apply and fio figure; default 2)
#   BENCH_E2E=4k-10% bench/run.sh (the change set the end-to-end rows sync; default 4k-1%)
#   BENCH_FULL_GIB=1 bench/run.sh (size of the first-copy images; default 2)
#   BENCH_BIN=/tmp/lvmsync.old bench/run.sh (measure that lvmsync binary instead of this tree's)
#
# Work files live in bench/out/ (git-ignored; about 3 x BENCH_GIB GiB of disk). Tools: fio,
# rsync, sshd (scripts/setup-host.sh --bench). The table is printed at the end and kept in
# bench/out/results.txt; method and reading of the figures: docs/performance.md.
#
# "cold": before the run, the pages of the files it reads (origin image, exception store,
# destination) are written back and dropped with posix_fadvise(DONTNEED), file by file (never
# the global page cache). "warm": the same run again right after, with those pages cached.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
GIB=${BENCH_GIB:-4}
OUT=$ROOT/bench/out
mkdir -p "$OUT"
# One run at a time: two would share the disk and the result file.
exec 8>"$OUT/.lock"
flock -n 8 || { echo "bench: another bench/run.sh is running" >&2; exit 1; }
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1}

for tool in fio rsync ssh-keygen; do
  command -v $tool >/dev/null || { echo "bench: $tool missing: run scripts/setup-host.sh --bench" >&2; exit 1; }
done
cargo build -q --release --bin lvmsync --example make_cow_store --example prior_iolog
# Copies: a rebuild while the suite runs must not change what is measured.
mkdir -p "$OUT/bin"
cp "${BENCH_BIN:-target/release/lvmsync}" "$OUT/bin/lvmsync"
cp target/release/examples/make_cow_store target/release/examples/prior_iolog "$OUT/bin/"
LVMSYNC=$OUT/bin/lvmsync
GEN=$OUT/bin/make_cow_store
ONLY=${BENCH_ONLY:-device send apply e2e verify checksum changes full}
REPEAT=${BENCH_REPEAT:-2}
want() { [[ " $ONLY " == *" $1 "* ]]; }

BYTES=$((GIB << 30))
ORIGIN=$OUT/origin.img
DEST=$OUT/dest.img
RESULTS=$OUT/results.tsv
LOG=$OUT/run.log
: >"$RESULTS"
: >"$LOG"
log() { echo "bench: $*" >&2; echo "$*" >>"$LOG"; }

# ---------------------------------------------------------------- data
# Change sets: NAME CHUNK_BYTES PERCENT (of the origin's chunks, scattered at random).
SETS=("4k-1% 4096 1" "4k-10% 4096 10" "64k-1% 65536 1" "64k-10% 65536 10")
stamp="$GIB $(sha256sum examples/make_cow_store.rs | cut -c1-16)"
if [[ ! -f $OUT/data.stamp || $(cat "$OUT/data.stamp") != "$stamp" ]]; then
  log "generating $GIB GiB origin, change sets and destination"
  rm -f "$OUT"/*.img "$OUT"/*.cow "$OUT"/*.iolog "$OUT"/*.lvs "$OUT/data.stamp"
  "$GEN" image "$ORIGIN" $BYTES 1
  for s in "${SETS[@]}"; do
    read -r name cb pct <<<"$s"
    "$GEN" store "$OUT/$name.cow" $BYTES $cb $((BYTES / cb * pct / 100)) $cb$pct --old-data \
      --iolog "$OUT/$name.read.iolog" "$ORIGIN" >>"$LOG"
    sed "s| read | write |; s|^$ORIGIN |$DEST |" "$OUT/$name.read.iolog" >"$OUT/$name.write.iolog"
  done
  # 1 million exceptions scattered over a 1 TiB origin, for change listing.
  "$GEN" store "$OUT/1M.cow" $((1 << 40)) 4096 1000000 77 >>"$LOG"
  # The destination: the origin as it was at snapshot time for the 4k-1% set.
  "$GEN" image "$DEST" $BYTES 1 --differ "$OUT/4k-1%.cow"
  echo "$stamp" >"$OUT/data.stamp"
fi
# What a send with a manifest reads: the snapshot's chunks from the store, then the origin.
for s in "${SETS[@]}"; do
  read -r name _ <<<"$s"
  [[ $OUT/$name.prior.iolog -nt $OUT/data.stamp ]] ||
    "$OUT/bin/prior_iolog" "$OUT/$name.cow" $BYTES "$ORIGIN" "$OUT/$name.prior.iolog"
done
changed() { "$LVMSYNC" changes --cow "$OUT/$1.cow" | awk '{s+=$2} END {print s}'; }
declare -A CHANGED
for s in "${SETS[@]}"; do
  read -r name _ <<<"$s"
  CHANGED[$name]=$(changed "$name")
done

# ---------------------------------------------------------------- measuring
drop() { "$GEN" dontneed "$@"; }
now() { date +%s.%N; }
# record SECTION CASE CACHE BYTES SECONDS REF_KEY
# REF_KEY names the row this one is compared with (empty: none); KEY=SECTION/CASE/CACHE.
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS"; log "$*"; }
# timed SECONDS_VAR COMMAND...: runs the command, fails the suite if it fails.
timed() {
  local var=$1 t0 t1
  shift
  t0=$(now)
  "$@" || { echo "bench: failed: $*" >&2; exit 1; }
  t1=$(now)
  printf -v "$var" '%s' "$(echo "$t1 - $t0" | bc -l)"
}
# best SECONDS_VAR PREPARE COMMAND...: the shortest of REPEAT runs, PREPARE (a shell command,
# e.g. dropping pages) before each.
best() {
  local var=$1 prep=$2 i one min=""
  shift 2
  for ((i = 0; i < REPEAT; i++)); do
    eval "$prep"
    timed one "$@"
    if [[ -z $min ]] || (($(echo "$one < $min" | bc -l))); then min=$one; fi
  done
  printf -v "$var" '%s' "$min"
}
# fio_best RW QD IOLOG: fio_run REPEAT times, prints the fastest "BYTES SECONDS".
fio_best() {
  local i
  for ((i = 0; i < REPEAT; i++)); do fio_run "$@"; done | sort -k2 -g | head -1
}
# fio_run RW QD IOLOG: prints "BYTES SECONDS" measured by fio over its I/O.
fio_run() {
  fio --name=bench --read_iolog="$3" --replay_no_stall=1 --ioengine=libaio --direct=1 \
    --iodepth="$2" --end_fsync=$([[ $1 == write ]] && echo 1 || echo 0) --output-format=json |
    python3 -c "
import json, sys
j = json.load(sys.stdin)['jobs'][0]['$1']
print(j['io_bytes'], j['runtime'] / 1000.0)"
}

HEADER="$(date -u +%FT%TZ) $(nproc) cores, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg), origin $GIB GiB on $(df -T "$OUT" | awk 'NR==2 {print $2}')"
log "$HEADER"

# ---------------------------------------------------------------- device limits
# (always measured: every ratio refers to them)
timed t dd if="$ORIGIN" of=/dev/null bs=4M iflag=direct status=none
record device "dd whole image" direct $BYTES "$t" ""
for s in "${SETS[@]}"; do
  read -r name _ <<<"$s"
  read -r b t < <(fio_run read 1 "$OUT/$name.read.iolog")
  record device "fio randread $name qd1" direct "$b" "$t" ""
  read -r b t < <(fio_best read 32 "$OUT/$name.read.iolog")
  record device "fio randread $name qd32" direct "$b" "$t" ""
  read -r b t < <(fio_best write 32 "$OUT/$name.write.iolog")
  record device "fio randwrite $name qd32" direct "$b" "$t" ""
  # Reads twice the changed data; MB is the changed data, as in the send rows it is set against.
  read -r b t < <(fio_best read 32 "$OUT/$name.prior.iolog")
  record device "fio $name + snapshot's qd32" direct "${CHANGED[$name]}" "$t" ""
done
# fio wrote its own bytes over the destination: put the origin's back (the destination is
# the origin everywhere except the 4k-1% set's chunks).
for s in "${SETS[@]}"; do
  read -r name _ <<<"$s"
  "$LVMSYNC" --stdout -q --no-check --cow "$OUT/$name.cow" --data-source "$ORIGIN" |
    "$LVMSYNC" -q --apply - "$DEST"
done
"$GEN" scramble "$DEST" "$OUT/4k-1%.cow"

# ---------------------------------------------------------------- send to /dev/null
# "O_DIRECT": LVMSYNC_DIRECT_IO=on, as lvmsync reads block devices (image files are read
# through the page cache unless told otherwise). Format 4 streams carry a manifest unless
# "--no-check": the snapshot's contents of every range, read from the store before the data,
# so those rows read twice the bytes fio reads; the --no-check rows read the same bytes.
want send && for s in "${SETS[@]}"; do
  read -r name _ <<<"$s"
  for fmt in "3" "4" "4 -z" "4 O_DIRECT" "4 --no-check" "4 -z --no-check"; do
    args=(--format ${fmt%% *})
    [[ $fmt == *-z* ]] && args+=(-z)
    [[ $fmt == *--no-check ]] && args+=(--no-check)
    direct=auto
    [[ $fmt == *O_DIRECT ]] && direct=on
    for cache in cold warm; do
      prep=":"
      [[ $cache == cold ]] && prep='drop "$ORIGIN" "$OUT/$name.cow"'
      best t "$prep" env LVMSYNC_DIRECT_IO=$direct sh -c '"$0" --stdout -q "$@" >/dev/null' \
        "$LVMSYNC" "${args[@]}" --cow "$OUT/$name.cow" --data-source "$ORIGIN"
      ref=""
      if [[ $cache == cold && ${fmt%% *} == 4 && $fmt != *--no-check ]]; then
        ref="device/fio $name + snapshot's qd32/direct"
      elif [[ $cache == cold ]]; then
        ref="device/fio randread $name qd32/direct"
      fi
      record send "$name format $fmt" $cache "${CHANGED[$name]}" "$t" "$ref"
    done
  done
done

# ---------------------------------------------------------------- apply
# Format 4 streams of the origin's bytes without a manifest (--no-check), applied onto the
# destination (which then holds the same bytes there: applying again writes them again).
# "checked": the stream has its manifest (the default) and each run starts from the
# destination as it was at snapshot time (scrambled, as the store's old data), so every range
# is read and checked, then written.
want apply && for s in "${SETS[@]}"; do
  read -r name _ <<<"$s"
  "$LVMSYNC" --stdout -q --cow "$OUT/$name.cow" --data-source "$ORIGIN" >"$OUT/$name.checked.lvs"
  ref="device/fio randwrite $name qd32/direct"
  prep='"$GEN" scramble "$DEST" "$OUT/$name.cow"; drop "$DEST"'
  best t "$prep" "$LVMSYNC" -q --apply "$OUT/$name.checked.lvs" "$DEST"
  record apply "$name checked" cold "${CHANGED[$name]}" "$t" "$ref"
  best t "$prep; rm -f \"\$OUT/snapback.lvs\"" "$LVMSYNC" -q --apply "$OUT/$name.checked.lvs" --snapback "$OUT/snapback.lvs" "$DEST"
  record apply "$name checked --snapback" cold "${CHANGED[$name]}" "$t" "$ref"
  "$LVMSYNC" --stdout -q --no-check --cow "$OUT/$name.cow" --data-source "$ORIGIN" >"$OUT/$name.lvs"
  ref="device/fio randwrite $name qd32/direct"
  best t 'drop "$DEST"' "$LVMSYNC" -q --apply "$OUT/$name.lvs" "$DEST"
  record apply "$name" cold "${CHANGED[$name]}" "$t" "$ref"
  best t 'drop "$DEST"' env LVMSYNC_DIRECT_IO=off "$LVMSYNC" -q --apply "$OUT/$name.lvs" "$DEST"
  record apply "$name no O_DIRECT" cold "${CHANGED[$name]}" "$t" "$ref"
  best t 'drop "$DEST"; rm -f "$OUT/snapback.lvs"' "$LVMSYNC" -q --apply "$OUT/$name.lvs" --snapback "$OUT/snapback.lvs" "$DEST"
  record apply "$name --snapback" cold "${CHANGED[$name]}" "$t" "$ref"
  rm -f "$OUT/$name.lvs" "$OUT/$name.checked.lvs" "$OUT/snapback.lvs"
done
"$GEN" scramble "$DEST" "$OUT/4k-1%.cow"

# ---------------------------------------------------------------- end to end
SSHD_DIR=$(mktemp -d)
cleanup() {
  [[ -f $SSHD_DIR/sshd.pid ]] && kill "$(cat "$SSHD_DIR/sshd.pid")" 2>/dev/null || true
  rm -rf "$SSHD_DIR"
}
trap cleanup EXIT
ssh-keygen -q -t ed25519 -N "" -f "$SSHD_DIR/host_key"
ssh-keygen -q -t ed25519 -N "" -f "$SSHD_DIR/client_key"
cp "$SSHD_DIR/client_key.pub" "$SSHD_DIR/authorized_keys"
mkdir -p /run/sshd
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$SSHD_DIR/sshd_config" <<EOF
Port $PORT
ListenAddress 127.0.0.1
HostKey $SSHD_DIR/host_key
PidFile $SSHD_DIR/sshd.pid
AuthorizedKeysFile $SSHD_DIR/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
LogLevel ERROR
EOF
"$(command -v sshd || echo /usr/sbin/sshd)" -f "$SSHD_DIR/sshd_config" 8>&-
RSH="ssh -i $SSHD_DIR/client_key -p $PORT -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR"
for _ in $(seq 50); do $RSH 127.0.0.1 true 2>/dev/null && break; sleep 0.2; done

want e2e || SKIP_E2E=1
E2E=${BENCH_E2E:-4k-1%}   # which change set the end-to-end rows sync: 4k-1% 4k-10% 64k-1% 64k-10%
e2e() { # e2e CASE COMMAND...
  local label=$1
  shift
  "$GEN" scramble "$DEST" "$OUT/$E2E.cow"
  drop "$ORIGIN" "$DEST" "$OUT/$E2E.cow"
  timed t "$@"
  record e2e "$label" cold "${CHANGED[$E2E]}" "$t" "${REF:-}"
}
[[ -z ${SKIP_E2E:-} ]] && {
REF="" e2e "dd whole image local" dd if="$ORIGIN" of="$DEST" bs=4M conv=notrunc,fsync status=none
REF="" e2e "dd whole image ssh" sh -c "dd if='$ORIGIN' bs=4M status=none | $RSH 127.0.0.1 dd of='$DEST' bs=4M conv=notrunc,fsync status=none"
REF="" e2e "rsync local $E2E" rsync -I --inplace --no-whole-file "$ORIGIN" "$DEST"
REF="e2e/rsync local $E2E/cold" e2e "lvmsync local $E2E" \
  "$LVMSYNC" -q --cow "$OUT/$E2E.cow" --data-source "$ORIGIN" "$DEST"
REF="" e2e "rsync ssh $E2E" rsync -I --inplace --no-whole-file -e "$RSH" "$ORIGIN" "127.0.0.1:$DEST"
REF="e2e/rsync ssh $E2E/cold" e2e "lvmsync ssh $E2E" \
  "$LVMSYNC" -q -e "$RSH" --remote-path "$LVMSYNC" --cow "$OUT/$E2E.cow" --data-source "$ORIGIN" \
  "127.0.0.1:$DEST"
cmp "$ORIGIN" "$DEST" || { echo "bench: destination differs from the origin after sync" >&2; exit 1; }
"$GEN" scramble "$DEST" "$OUT/$E2E.cow"
}

# ---------------------------------------------------------------- verify
want verify && . "$ROOT/bench/verify.sh"

# ---------------------------------------------------------------- sync without a snapshot
want checksum && . "$ROOT/bench/checksum.sh"

# ---------------------------------------------------------------- change listing
want changes && for cache in cold warm; do
  [[ $cache == cold ]] && drop "$OUT/1M.cow"
  timed t sh -c '"$0" changes --cow "$1" >/dev/null' "$LVMSYNC" "$OUT/1M.cow"
  record changes "1M exceptions (4 KiB chunks)" $cache 0 "$t" ""
done

# ---------------------------------------------------------------- first copy (--full)
# A whole image copied by dd and by lvmsync --full: an image full of data, and a sparse one
# (1 MiB of data in every 20, the rest holes). The destination is either "used", a file fully
# written with other data as a used LV is (rewritten before a run whenever a copy left holes
# in it), or "fresh", a sparse file never written, as a new thin LV is. The reference is the
# fairest dd: 4 MiB blocks, O_DIRECT on both sides (no page cache, as lvmsync reads), fsync at
# the end (as lvmsync's receiver does). Files in bench/out/full/.
bench_full() {
  local gib=${BENCH_FULL_GIB:-2} dir=$OUT/full
  local bytes=$((gib << 30))
  local stamp="$gib $(sha256sum examples/make_cow_store.rs | cut -c1-16)"
  mkdir -p "$dir"
  if [[ ! -f $dir/stamp || $(cat "$dir/stamp") != "$stamp" ]]; then
    log "generating $gib GiB images for the first copy"
    rm -f "$dir"/*.img "$dir/stamp"
    "$GEN" image "$dir/data.img" $bytes 2
    truncate -s $bytes "$dir/sparse.img"
    local m
    for ((m = 0; m < gib * 1024; m += 20)); do
      dd if="$dir/data.img" of="$dir/sparse.img" bs=1M skip=$m seek=$m count=1 conv=notrunc status=none
    done
    echo "$stamp" >"$dir/stamp"
  fi
  FULL_DEST=$dir/dest.img
  FULL_BYTES=$bytes
  # used_dest: the destination fully written (with data other than the images').
  used_dest() {
    if [[ ! -f $FULL_DEST || $(($(stat -c '%b * %B' "$FULL_DEST"))) -lt $FULL_BYTES ]]; then
      rm -f "$FULL_DEST"
      "$GEN" image "$FULL_DEST" "$FULL_BYTES" 3
    fi
    drop "$FULL_SRC" "$FULL_DEST"
  }
  # fresh_dest: a destination never written.
  fresh_dest() {
    rm -f "$FULL_DEST"
    truncate -s "$FULL_BYTES" "$FULL_DEST"
    drop "$FULL_SRC"
  }
  local img dest t
  for dest in used fresh; do
    for img in data sparse; do
      FULL_SRC=$dir/$img.img
      best t ${dest}_dest dd if="$FULL_SRC" of="$FULL_DEST" bs=4M iflag=direct oflag=direct \
        conv=notrunc,fsync status=none
      record full "dd $img, $dest dest" cold $bytes "$t" ""
      best t ${dest}_dest "$LVMSYNC" -q --full "$FULL_SRC" "$FULL_DEST"
      cmp "$FULL_SRC" "$FULL_DEST" || { echo "bench: --full copy differs from $FULL_SRC" >&2; exit 1; }
      record full "lvmsync --full $img, $dest dest" cold $bytes "$t" \
        "full/dd $img, $dest dest/cold"
    done
  done
  rm -f "$FULL_DEST"
}
want full && bench_full

FOOTER="end $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)"
log "$FOOTER"

# ---------------------------------------------------------------- the table
python3 - "$RESULTS" "$HEADER" "$FOOTER" >"$OUT/results.txt" <<'EOF'
import sys
print(sys.argv[2] + "; " + sys.argv[3])
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
by_key = {f"{s}/{c}/{k}": (float(b), float(t)) for s, c, k, b, t, _ in rows}
print(f"{'section':8} {'case':34} {'cache':6} {'MB':>8} {'s':>8} {'MB/s':>8}  vs reference")
for s, c, k, b, t, ref in rows:
    b, t = float(b), float(t)
    if s == "changes":
        print(f"{s:8} {c:34} {k:6} {'':>8} {t:8.3f} {'':>8}  {1e6 / t / 1e6:.2f} M exceptions/s")
        continue
    rate = b / t / 1e6
    note = ""
    if ref:
        rb, rt = by_key[ref]
        if s == "e2e":
            note = f"{rt / t:6.1f}x faster than {ref.split('/')[1]}"
        else:
            note = f"{rate / (rb / rt / 1e6) * 100:5.0f}% of {ref.split('/')[1]}"
    print(f"{s:8} {c:34} {k:6} {b / 1e6:8.1f} {t:8.3f} {rate:8.1f}  {note}")
EOF
cat "$OUT/results.txt"
