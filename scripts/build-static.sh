#!/bin/bash
# Builds a statically linked lvmsync (zstd included) that runs on any x86_64 Linux, and prints
# its path: the remote side as one file to copy (scp it, then --remote-path). Stripped.
#
#   scripts/build-static.sh           musl: target/x86_64-unknown-linux-musl/release/lvmsync
#   scripts/build-static.sh --glibc   glibc, -C target-feature=+crt-static:
#                                     target/x86_64-unknown-linux-gnu/release/lvmsync
#
# musl is the default: its libc is made to be linked statically. It needs the Rust target
# x86_64-unknown-linux-musl and musl-gcc (Debian's musl-tools) for the C in zstd and blake3;
# scripts/setup-host.sh installs both, and the target is added here when missing. The glibc
# build is for hosts without rustup (lvmsync calls none of the glibc functions that need shared
# libraries at run time: no name service lookups).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$HOME/.cargo/bin:$PATH
libc=musl
case ${1:-} in
  --glibc) libc=glibc ;;
  "") ;;
  *) echo "usage: $0 [--glibc]" >&2; exit 2 ;;
esac
if [[ $libc == musl ]] && ! rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
  echo "build-static: adding the Rust target x86_64-unknown-linux-musl" >&2
  rustup target add x86_64-unknown-linux-musl >&2 || {
    echo "build-static: the Rust target x86_64-unknown-linux-musl cannot be added (rustup target add); $0 --glibc links glibc statically instead" >&2
    exit 1
  }
fi
if [[ $libc == musl ]]; then
  command -v musl-gcc >/dev/null || { echo "build-static: musl-gcc missing: apt-get install musl-tools (scripts/setup-host.sh)" >&2; exit 1; }
  target=x86_64-unknown-linux-musl
else
  target=x86_64-unknown-linux-gnu
  # With --target given, RUSTFLAGS reach only the target's code, not build scripts.
  export RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static"
fi
CARGO_PROFILE_RELEASE_STRIP=symbols cargo build --release --locked --quiet --target "$target" --bin lvmsync
bin=target/$target/release/lvmsync
# Refuse to hand out a binary that would need shared libraries on the other host.
if ! file -b "$bin" | grep -q 'static'; then
  echo "build-static: $bin is not statically linked: $(file -b "$bin")" >&2
  exit 1
fi
echo "$bin"
