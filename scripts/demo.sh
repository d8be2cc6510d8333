#!/bin/bash
# The main job: boots a small VM with real LVM and runs the whole lvmsync workflow in it
# (snapshot, copy, writes, lvmsync, verify), printing each step.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-host.sh
export PATH=$HOME/.cargo/bin:$PATH
cargo build --release --quiet
exec ./tests/vm/demo.sh "$@"
