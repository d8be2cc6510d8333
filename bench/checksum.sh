# shellcheck shell=bash
# The checksum section of bench/run.sh (sourced by it, after the ssh server is up): a sync
# without a snapshot, `lvmsync --checksum a.img 127.0.0.1:b.img`, of two 2 GiB images that
# differ in 1% of their 4 KiB blocks, scattered (b.img is scrambled again before every run).
#
# The reference is what the same job costs done in two steps: a whole-volume `lvmsync verify`
# of the two images over ssh, plus sending the differing blocks (a sync of exactly those
# blocks, listed by the store that scrambled them, --no-check). The bytes on the wire of both
# ssh connections are counted by a wrapper around ssh that appends a copy of each direction to
# two files (the label of the row gives them; MB is the differing data), and compared with
# rsync --inplace --no-whole-file on the same images (its own count of bytes sent and
# received). bdsync and blocksync, two other block-device syncs, are not packaged in Debian 12.
CA=$OUT/verify-a.img
CB=$OUT/verify-b.img
CBYTES=$((2 << 30))
CSTORE=$OUT/verify-1%.cow
if [[ ! -f $CA || $(stat -c %s "$CA") != "$CBYTES" || ! -f $CSTORE ]]; then
  log "generating the two 2 GiB images of the checksum rows"
  "$GEN" image "$CA" $CBYTES 7
  "$GEN" store "$CSTORE" $CBYTES 4096 $((CBYTES / 4096 / 100)) 11 >>"$LOG"
fi
cp "$CA" "$CB"
CDIFF=$("$LVMSYNC" changes --cow "$CSTORE" --data-source "$CA" | awk '{s+=$2} END {print s}')
cat >"$OUT/bin/appending-rsh" <<'EOF'
#!/bin/bash
# appending-rsh DIR SSH...: runs ssh, appending what goes to it to DIR/up and back to DIR/down.
set -o pipefail
d=$1
shift
tee -a "$d/up" | "$@" | tee -a "$d/down"
EOF
chmod 755 "$OUT/bin/appending-rsh"
CRSH="$OUT/bin/appending-rsh $OUT $RSH"
wire() { echo $(($(stat -c %s "$OUT/up" 2>/dev/null || echo 0) + $(stat -c %s "$OUT/down" 2>/dev/null || echo 0))); }
cprep='"$GEN" scramble "$CB" "$CSTORE"; drop "$CA" "$CB" "$CSTORE"; rm -f "$OUT/up" "$OUT/down"'
# The steps of the reference.
best tv "$cprep" sh -c '"$0" verify -q -e "$1" --remote-path "$0" "$2" "127.0.0.1:$3" >/dev/null; [ $? = 1 ]' \
  "$LVMSYNC" "$RSH" "$CA" "$CB"
best ts "$cprep" "$LVMSYNC" -q --no-check -e "$RSH" --remote-path "$LVMSYNC" --cow "$CSTORE" \
  --data-source "$CA" "127.0.0.1:$CB"
cmp "$CA" "$CB" || { echo "bench: the send of the differing blocks left them different" >&2; exit 1; }
record checksum "verify ssh" cold "$CDIFF" "$tv" ""
record checksum "send of the differing ssh" cold "$CDIFF" "$ts" ""
CREF="checksum/verify + send ssh/cold"
record checksum "verify + send ssh" cold "$CDIFF" "$(echo "$tv + $ts" | bc -l)" ""
# lvmsync --checksum, locally and over ssh (the bytes of both connections counted).
best t "$cprep" "$LVMSYNC" -q --checksum "$CA" "$CB"
cmp "$CA" "$CB" || { echo "bench: --checksum left the images different" >&2; exit 1; }
record checksum "--checksum local" cold "$CDIFF" "$t" "$CREF"
best t "$cprep" "$LVMSYNC" -q --checksum -e "$CRSH" --remote-path "$LVMSYNC" "$CA" "127.0.0.1:$CB"
cmp "$CA" "$CB" || { echo "bench: --checksum left the images different" >&2; exit 1; }
record checksum "--checksum ssh: $(wire) B wire" cold "$CDIFF" "$t" "$CREF"
best t "$cprep" "$LVMSYNC" -q --checksum -z -e "$CRSH" --remote-path "$LVMSYNC" "$CA" "127.0.0.1:$CB"
cmp "$CA" "$CB" || { echo "bench: --checksum -z left the images different" >&2; exit 1; }
record checksum "--checksum -z ssh: $(wire) B wire" cold "$CDIFF" "$t" "$CREF"
# Equal images: nothing is sent, the comparison's exchange alone crosses.
best t 'drop "$CA" "$CB"; rm -f "$OUT/up" "$OUT/down"' "$LVMSYNC" -q --checksum -e "$CRSH" \
  --remote-path "$LVMSYNC" "$CA" "127.0.0.1:$CB"
record checksum "--checksum ssh, equal: $(wire) B wire" cold 0 "$t" ""
# rsync's delta transfer on the same images: its own count of the bytes it sent and received.
best t "$cprep" sh -c 'rsync -I --inplace --no-whole-file --stats -e "$0" "$1" "127.0.0.1:$2" >"$3"' \
  "$RSH" "$CA" "$CB" "$OUT/rsync.stats"
cmp "$CA" "$CB" || { echo "bench: rsync left the images different" >&2; exit 1; }
rwire=$(awk -F': ' '/^Total bytes (sent|received)/ {gsub(",", "", $2); s+=$2} END {print s}' "$OUT/rsync.stats")
record checksum "rsync ssh: $rwire B wire" cold "$CDIFF" "$t" "$CREF"
rm -f "$OUT/up" "$OUT/down" "$OUT/rsync.stats"
