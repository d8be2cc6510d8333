# shellcheck shell=bash
# The verify section of bench/run.sh (sourced by it, after the ssh server is up): `lvmsync
# verify` of two 2 GiB images, against reading both at once with dd (O_DIRECT, 4 MiB blocks,
# two processes in parallel), locally and to 127.0.0.1 over ssh. Over ssh the bytes exchanged
# are counted by a wrapper around ssh that keeps a copy of each direction (the label of the row
# gives them); then 1% of the 4 KiB blocks of one image are changed, scattered, and verify must
# find them. Every verify run is checked: equal images must exit 0, the changed ones 1.
VA=$OUT/verify-a.img
VB=$OUT/verify-b.img
VBYTES=$((2 << 30))
VREF="verify/dd both images in parallel/cold"
if [[ ! -f $VA || $(stat -c %s "$VA") != "$VBYTES" ]]; then
  log "generating the two 2 GiB images of the verify rows"
  "$GEN" image "$VA" $VBYTES 7
  "$GEN" store "$OUT/verify-1%.cow" $VBYTES 4096 $((VBYTES / 4096 / 100)) 11 >>"$LOG"
fi
cp "$VA" "$VB"
cat >"$OUT/bin/counting-rsh" <<'EOF'
#!/bin/bash
# counting-rsh DIR SSH...: runs ssh, keeping what goes to it in DIR/up and back in DIR/down.
set -o pipefail
d=$1
shift
tee "$d/up" | "$@" | tee "$d/down"
EOF
chmod 755 "$OUT/bin/counting-rsh"
exchanged() { echo $(($(stat -c %s "$OUT/up") + $(stat -c %s "$OUT/down"))); }
# expect STATUS COMMAND...: fails the suite unless COMMAND exits with STATUS.
expect() {
  local want=$1 rc=0
  shift
  "$@" >/dev/null || rc=$?
  [[ $rc == "$want" ]] || { echo "bench: exit status $rc, not $want: $*" >&2; return 1; }
}
prep='drop "$VA" "$VB"'
best t "$prep" sh -c 'dd if="$0" of=/dev/null bs=4M iflag=direct status=none &
  dd if="$1" of=/dev/null bs=4M iflag=direct status=none & wait' "$VA" "$VB"
record verify "dd both images in parallel" cold $((2 * VBYTES)) "$t" ""
best t "$prep" expect 0 "$LVMSYNC" verify -q "$VA" "$VB"
record verify "lvmsync verify local" cold $((2 * VBYTES)) "$t" "$VREF"
VRSH="$OUT/bin/counting-rsh $OUT $RSH"
best t "$prep" expect 0 "$LVMSYNC" verify -q -e "$VRSH" --remote-path "$LVMSYNC" "$VA" "127.0.0.1:$VB"
record verify "lvmsync verify ssh: $(exchanged) B exchanged" cold $((2 * VBYTES)) "$t" "$VREF"
best t "$prep" expect 0 "$LVMSYNC" verify -q --chunk 4K -e "$VRSH" --remote-path "$LVMSYNC" \
  "$VA" "127.0.0.1:$VB"
record verify "... --chunk 4K: $(exchanged) B exchanged" cold $((2 * VBYTES)) "$t" "$VREF"
"$GEN" scramble "$VB" "$OUT/verify-1%.cow"
for chunk in 1M 4K; do
  best t "$prep" expect 1 "$LVMSYNC" verify -q --chunk $chunk -e "$VRSH" --remote-path "$LVMSYNC" \
    "$VA" "127.0.0.1:$VB"
  record verify "1% differ, $chunk: $(exchanged) B exchanged" cold $((2 * VBYTES)) "$t" "$VREF"
done
rm -f "$OUT/up" "$OUT/down"
