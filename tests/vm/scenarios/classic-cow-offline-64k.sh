# shellcheck shell=sh disable=SC2034 # variables read by classic-cow-offline.sh
# classic-cow-offline.sh with 64 KiB snapshot chunks.
CHUNK=64k
. "$VMTEST_SCENARIOS_DIR/classic-cow-offline.sh"
