#!/bin/bash
# Installs the host packages lvmsync's tests, demo and benchmarks need on Debian 12.
# Idempotent: installs only what is missing.
set -euo pipefail
pkgs=(
  util-linux                # losetup, blkdiscard: loop-device tests
  e2fsprogs                 # mkfs.ext4: a file system on a loop device (snapback tests)
  thin-provisioning-tools   # thin_restore / thin_delta: oracle for the thin metadata reader
  dmsetup                   # the thin guard's test runs it when it is not on PATH
  openssh-server openssh-client  # remote sync tests against a real sshd on loopback
  qemu-system-x86 busybox-static cpio binutils xz-utils  # the real-LVM test VM
  gcc pkg-config            # zstd-sys builds C
  dpkg-dev man-db bash-completion file  # the Debian package: build (dpkg-shlibdeps), man page, completion
  zsh fish                  # the Debian package: its zsh and fish completions
  musl-tools                # musl-gcc: the static binary's C (zstd, blake3)
  systemd                   # systemd-analyze verify: the units of contrib/systemd
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
# The static binary (scripts/build-static.sh) is built for musl.
if ! rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
  command -v rustup >/dev/null || {
    echo "setup-host: rustup not found: it adds the Rust target x86_64-unknown-linux-musl for the static binary" >&2
    exit 1
  }
  echo "setup-host: adding the Rust target x86_64-unknown-linux-musl" >&2
  rustup target add x86_64-unknown-linux-musl >&2
fi
# The Debian package (scripts/build-deb.sh) is built by cargo-deb: this version, with the
# dependency versions of its own Cargo.lock.
cargo_deb=3.8.0
if [[ $(cargo deb --version 2>/dev/null) != "cargo-deb $cargo_deb" ]]; then
  echo "setup-host: installing cargo-deb $cargo_deb" >&2
  cargo install --quiet --locked cargo-deb --version "=$cargo_deb"
fi
