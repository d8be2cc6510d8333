# shellcheck shell=sh disable=SC2034 # variables read by classic-cow-offline.sh
# classic-cow-offline.sh with more exceptions than one metadata area holds
# (256 with 4 KiB chunks): 150 scattered single-chunk writes and a 1.5 MiB
# run, 535 changed chunks in three metadata areas.
CHUNK=4k
origin_writes() {
  write_every "$1" 4096 12288 150 100 M-every-third-chunk
  write_at "$1" 12582912 1572864 M-run-of-384-chunks
  write_at "$1" 16773120 4096 M-last-chunk
}
. "$VMTEST_SCENARIOS_DIR/classic-cow-offline.sh"
[ "$(wc -l < "$TMP/cow-old")" -gt 512 ] || fail "expected more than two metadata areas of exceptions"
