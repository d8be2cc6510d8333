# shellcheck shell=sh
# replicate-crash-thin with classic snapshots.
FLAVOR=classic
. "$VMTEST_SCENARIOS_DIR/replicate-crash-thin.sh"
