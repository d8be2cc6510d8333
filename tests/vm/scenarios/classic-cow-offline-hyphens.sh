# shellcheck shell=sh disable=SC2034 # variables read by classic-cow-offline.sh
# classic-cow-offline.sh with hyphens in the VG and LV names: device-mapper
# doubles them (my--vg-data--lv--snap-cow).
VG=my-vg
ORIGIN=data-lv
SNAP=data-lv-snap
. "$VMTEST_SCENARIOS_DIR/classic-cow-offline.sh"
check_eq "exception store device name" "$COW" /dev/mapper/my--vg-data--lv--snap-cow
