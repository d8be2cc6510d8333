#!/bin/bash
# Installs the host packages lvmsync's tests, demo and benchmarks need on Debian 12.
# Idempotent: installs only what is missing.
set -euo pipefail
pkgs=(
  util-linux                # losetup, blkdiscard: loop-device tests
  thin-provisioning-tools   # thin_restore / thin_delta: oracle for the thin metadata reader
  dmsetup                   # the thin guard's test runs it when it is not on PATH
  openssh-server openssh-client  # remote sync tests against a real sshd on loopback
  qemu-system-x86 busybox-static cpio binutils xz-utils  # the real-LVM test VM
  gcc pkg-config            # zstd-sys builds C
  dpkg-dev man-db bash-completion file  # the Debian package: build (dpkg-shlibdeps), man page, completion
  musl-tools                # musl-gcc: the static binary's C (zstd, blake3)
)
[[ ${1:-} == --bench ]] && pkgs+=(fio rsync hyperfine)
need=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if ((${#need[@]})); then
  echo "setup-host: installing ${need[*]}" >&2
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=300 \
    --no-install-recommends "${need[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
  [[ -x $HOME/.cargo/bin/cargo ]] && export PATH=$HOME/.cargo/bin:$PATH
fi
command -v cargo >/dev/null || {
  echo "setup-host: cargo not found: install a Rust toolchain (1.88 or newer, with clippy and rustfmt, e.g. with rustup)" >&2
  exit 1
}
