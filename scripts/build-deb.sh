#!/bin/bash
# Builds the Debian package of lvmsync and prints its path (target/debian/*.deb):
# /usr/sbin/lvmsync, its man pages (lvmsync(8) and one per subcommand, lvmsync-verify(8) ...)
# and bash, zsh and fish completions (generated from the command line's definition by
# examples/man_and_completions.rs into target/assets/), the README, the
# copyright file, and the systemd units of contrib/systemd (lvmsync-replicate@.service and
# .timer in /usr/lib/systemd/system, neither enabled; their configuration's example in
# /usr/share/doc/lvmsync/examples). Metadata: [package.metadata.deb] in Cargo.toml; cargo-deb (pinned) is
# installed by scripts/setup-host.sh. The package's dates are the last commit's
# (SOURCE_DATE_EPOCH), so that the same commit gives the same package.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$HOME/.cargo/bin:$PATH
cargo deb --version >/dev/null 2>&1 ||
  { echo "build-deb: cargo-deb missing: scripts/setup-host.sh installs it" >&2; exit 1; }
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
cargo run --release --locked --quiet --example man_and_completions -- \
  target/assets "$(date -u -d "@$SOURCE_DATE_EPOCH" +%F)"
# --strip: the release profile keeps line tables for backtraces; the package does not need them.
cargo deb --locked --quiet --strip --output target/debian/
