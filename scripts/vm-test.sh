#!/bin/bash
# vm-test.sh - build the release lvmsync and the dm-log-writes replayer
# (examples/replay_log.rs) and run every real-LVM scenario in the QEMU test VM
# (tests/vm/run-scenarios.sh).  Arguments are passed on (scenario names).
# Exit status 0 only if every scenario passed.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
cargo build --release --bin lvmsync --example replay_log
# One emulated CPU per VM: as many VMs as cores (at most 4) finish the scenarios soonest.
cores=$(nproc)
export VMTEST_JOBS=${VMTEST_JOBS:-$((cores > 4 ? 4 : cores))}
export VMTEST_REPLAY_LOG=${VMTEST_REPLAY_LOG:-$REPO/target/release/examples/replay_log}
VMTEST_LVMSYNC=${VMTEST_LVMSYNC:-$REPO/target/release/lvmsync} exec tests/vm/run-scenarios.sh "$@"
