#!/bin/bash
# Runs every lvmsync test: unit and integration tests (cargo test, as root: loop devices, sshd),
# lint, what lvmsync ships (scripts/package-test.sh: the Debian package, installed and removed
# again, and the static binary), then the scenarios on real LVM inside the QEMU VM. Ends with
# one line "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-host.sh || exit 1
export PATH=$HOME/.cargo/bin:$PATH
log=$(mktemp)
trap 'rm -f "$log"' EXIT

echo "== cargo test (release)"
cargo test --release 2>&1 | tee "$log"
cargo_rc=${PIPESTATUS[0]}
read -r c_pass c_fail < <(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } } END { print p + 0, f + 0 }' "$log")
[[ $cargo_rc == 0 || $c_fail != 0 ]] || c_fail=1   # a build failure counts as a failure

echo "== lint: cargo fmt --check, cargo clippy -D warnings"
lint_pass=0 lint_fail=0
if cargo fmt --check && cargo clippy --release --all-targets --quiet -- -D warnings; then
  lint_pass=1
else
  lint_fail=1
fi

echo "== packaging: the Debian package and the static binary"
pkg_pass=0 pkg_fail=0
./scripts/package-test.sh 2>&1 | tee "$log"
pkg_rc=${PIPESTATUS[0]}
read -r pkg_pass pkg_fail < <(sed -n 's/^\([0-9]\+\) passed, \([0-9]\+\) failed$/\1 \2/p' "$log" | tail -1)
pkg_pass=${pkg_pass:-0} pkg_fail=${pkg_fail:-0}
[[ $pkg_rc == 0 || $pkg_fail != 0 ]] || pkg_fail=1

echo "== real-LVM scenarios in the VM"
vm_pass=0 vm_fail=0
if [[ -x scripts/vm-test.sh ]]; then
  # Two VMs at once: TCG runs one guest CPU per host thread, and the machine has two.
  VMTEST_JOBS=${VMTEST_JOBS:-2} ./scripts/vm-test.sh 2>&1 | tee "$log"
  vm_rc=${PIPESTATUS[0]}
  read -r vm_pass vm_fail < <(sed -n 's/^\([0-9]\+\) passed, \([0-9]\+\) failed$/\1 \2/p' "$log" | tail -1)
  vm_pass=${vm_pass:-0} vm_fail=${vm_fail:-0}
  [[ $vm_rc == 0 || $vm_fail != 0 ]] || vm_fail=1
else
  echo "scripts/vm-test.sh missing"; vm_fail=1
fi
echo "cargo: $c_pass passed, $c_fail failed; lint: $lint_pass passed, $lint_fail failed; packaging: $pkg_pass passed, $pkg_fail failed; vm: $vm_pass passed, $vm_fail failed"
echo "$((c_pass + lint_pass + pkg_pass + vm_pass)) passed, $((c_fail + lint_fail + pkg_fail + vm_fail)) failed"
[[ $cargo_rc == 0 && $c_fail == 0 && $lint_fail == 0 && $pkg_fail == 0 && $vm_fail == 0 ]]
