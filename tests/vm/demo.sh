#!/bin/bash
# demo.sh - the lvmsync workflow on real LVM in the test VM, narrated: an LV
# with data, a snapshot, a full copy of the snapshot, changes to the data,
# then lvmsync brings the copy up to date by sending only the changed chunks.
# Exit status 0 only if the copy ends equal to the data.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
VMTEST_SCENARIO_DIR=$HERE/demo VMTEST_SHOW=1 VMTEST_OUT=${VMTEST_OUT:-$HERE/out/demo} \
  exec "$HERE/run-scenarios.sh" workflow
