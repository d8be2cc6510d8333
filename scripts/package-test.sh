#!/bin/bash
# Tests what lvmsync ships: the Debian package (scripts/build-deb.sh) is built, its contents
# checked, installed on this machine with apt, used (the binary, `man` on each man page, the
# bash, zsh and fish completions) and purged again; the static binary (scripts/build-static.sh) is built, checked to be
# static, and sends and applies a stream. Run as root (scripts/test.sh runs it). Ends with one
# line "N passed, N failed"; exit status 0 only if every check passed.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH=$HOME/.cargo/bin:$PATH:/usr/sbin:/sbin
tmp=$(mktemp -d)
# Set once this test installed the package: whatever happens after, it is purged on exit.
installed_here=
# dpkg's state of lvmsync: installed, config-files, ...; nothing when dpkg does not know it.
dpkg_state() { dpkg-query -W -f='${db:Status-Status}' lvmsync 2>/dev/null | grep -v '^not-installed$'; }
cleanup() {
  if [[ -n $installed_here && -n $(dpkg_state) ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get purge -y -q -o DPkg::Lock::Timeout=300 lvmsync > /dev/null 2>&1
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
passed=0 failed=0

# check NAME COMMAND...: runs COMMAND (its output is shown) and counts it.
check() {
  local name=$1
  shift
  if "$@"; then
    passed=$((passed + 1))
    echo "ok: $name"
  else
    failed=$((failed + 1))
    echo "FAILED: $name"
  fi
}

# The classic snapshot fixture: an exception store, the origin before and after the writes.
for f in snap-cow origin-before origin-after; do
  gunzip -c "tests/fixtures/lvm-2.03.16/classic/$f.img.gz" > "$tmp/$f.img"
done

# round_trip SENDER RECEIVER: a compressed format 4 stream from SENDER through a pipe into
# `RECEIVER --apply -`, as on a remote host, turns the origin as it was into the origin after.
round_trip() {
  cp "$tmp/origin-before.img" "$tmp/dest.img"
  "$1" -q --stdout -z --cow "$tmp/snap-cow.img" --data-source "$tmp/origin-after.img" |
    "$2" -q --apply - "$tmp/dest.img" &&
    cmp "$tmp/dest.img" "$tmp/origin-after.img"
}

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)

echo "== Debian package"
deb=
build_deb() {
  deb=$(./scripts/build-deb.sh) && [[ -f $deb ]] && echo "$deb"
}
check "scripts/build-deb.sh builds the package" build_deb

contents() {
  [[ -f $deb ]] || return 1
  dpkg-deb -c "$deb" > "$tmp/contents" || return 1
  local want=(
    "-rwxr-xr-x ./usr/sbin/lvmsync"
    "-rw-r--r-- ./usr/share/man/man8/lvmsync.8.gz"
    "-rw-r--r-- ./usr/share/man/man8/lvmsync-changes.8.gz"
    "-rw-r--r-- ./usr/share/man/man8/lvmsync-info.8.gz"
    "-rw-r--r-- ./usr/share/man/man8/lvmsync-verify.8.gz"
    "-rw-r--r-- ./usr/share/man/man8/lvmsync-replicate.8.gz"
    "-rw-r--r-- ./usr/share/bash-completion/completions/lvmsync"
    "-rw-r--r-- ./usr/share/zsh/vendor-completions/_lvmsync"
    "-rw-r--r-- ./usr/share/fish/vendor_completions.d/lvmsync.fish"
    "-rw-r--r-- ./usr/share/doc/lvmsync/README.md"
    "-rw-r--r-- ./usr/share/doc/lvmsync/copyright"
    "-rw-r--r-- ./usr/share/doc/lvmsync/changelog.Debian.gz"
    "-rw-r--r-- ./usr/share/doc/lvmsync/examples/replicate.conf.example"
    "-rw-r--r-- ./usr/lib/systemd/system/lvmsync-replicate@.service"
    "-rw-r--r-- ./usr/lib/systemd/system/lvmsync-replicate@.timer"
  )
  local ok=0 entry
  for entry in "${want[@]}"; do
    if ! awk -v mode="${entry% *}" -v path="${entry#* }" \
      '$1 == mode && $6 == path { found = 1 } END { exit !found }' "$tmp/contents"; then
      echo "missing from the package: $entry"
      ok=1
    fi
  done
  return $ok
}
check "the package holds the binary, man pages, completions and docs" contents

control() {
  [[ -f $deb ]] || return 1
  local field
  for field in Package:lvmsync "Version:$version-1" Section:admin; do
    [[ $(dpkg-deb -f "$deb" "${field%%:*}") == "${field#*:}" ]] || { echo "want $field"; return 1; }
  done
  [[ $(dpkg-parsechangelog -l packaging/debian/changelog -S Version) == "$version-1" ]] ||
    { echo "packaging/debian/changelog does not start with version $version-1"; return 1; }
  dpkg-deb -f "$deb" Depends | grep -q '^libc6' &&
    dpkg-deb -f "$deb" Recommends | grep -qw lvm2
}
check "the package's control fields and changelog match Cargo.toml" control

# Installed on this machine and removed at the end; a lock keeps two test runs apart.
exec 9> /run/lock/lvmsync-package-test
flock 9
was_installed=0
[[ -z $(dpkg_state) ]] || was_installed=1
install_deb() {
  [[ -f $deb ]] || return 1
  ((was_installed)) || installed_here=1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    -o DPkg::Lock::Timeout=300 "$(realpath "$deb")" > "$tmp/apt.log" 2>&1 ||
    { cat "$tmp/apt.log"; return 1; }
  [[ $(dpkg-query -W -f='${Version}' lvmsync) == "$version-1" ]]
}
check "apt installs the package" install_deb

installed_runs() {
  [[ $(/usr/sbin/lvmsync --version) == "lvmsync $version" ]] &&
    round_trip /usr/sbin/lvmsync /usr/sbin/lvmsync
}
check "the installed lvmsync runs, sends and applies" installed_runs

# The long options that lvmsync's --help lists (standard input), one a line.
help_options() {
  grep -oE -- '^(  -[[:alnum:]], |      )--[[:alnum:]-]+' | sed 's/.*--/--/' | sort -u
}

# The long options that the OPTIONS section of a man page as man shows it (standard input)
# lists, one a line.
man_options() {
  awk '/^OPTIONS$/ { o = 1; next } /^[A-Z]/ { o = 0 } o' |
    grep -oE -- '^       (-[[:alnum:]], )?--[[:alnum:]-]+' | sed 's/.*--/--/' | sort -u
}

# The subcommands that the installed lvmsync's --help lists, but `help`.
subcommands() {
  /usr/sbin/lvmsync --help | awk '/^Commands:$/ { c = 1; next } /^$/ { c = 0 } c' |
    grep -oE '^  [a-z]+' | tr -d ' ' | grep -vx help
}

# man_renders PAGE SECTION...: the installed man page PAGE(8) renders without warnings, has
# each SECTION, and lists every option of its command's --help.
man_renders() {
  local page=$1 section
  shift
  local file=/usr/share/man/man8/$page.8.gz
  [[ $(man -w "$page") == "$file" ]] || { echo "man -w $page: $(man -w "$page" 2>&1)"; return 1; }
  LC_ALL=C MANWIDTH=80 man -l --warnings "$file" > "$tmp/man.txt" 2> "$tmp/man.err" ||
    { cat "$tmp/man.err"; return 1; }
  [[ ! -s $tmp/man.err ]] || { echo "man warns on $page:"; cat "$tmp/man.err"; return 1; }
  for section in "$@"; do
    grep -qx "$section" "$tmp/man.txt" || { echo "$page(8) lacks $section"; return 1; }
  done
  local -a command=(/usr/sbin/lvmsync)
  [[ $page == lvmsync-* ]] && command+=("${page#lvmsync-}")
  "${command[@]}" --help | help_options > "$tmp/help.options" || return 1
  man_options < "$tmp/man.txt" > "$tmp/man.options"
  grep -qx -- --help "$tmp/help.options" ||
    { echo "no options found in ${command[*]} --help"; return 1; }
  if ! cmp -s "$tmp/help.options" "$tmp/man.options"; then
    echo "$page(8) and ${command[*]} --help list other options (<: --help only, >: man only):"
    diff "$tmp/help.options" "$tmp/man.options" | grep '^[<>]'
    return 1
  fi
}

man_page() {
  man_renders lvmsync SYNOPSIS WORKFLOW OPTIONS "EXIT STATUS" GUARANTEES EXAMPLES "SEE ALSO" ||
    return 1
  local sub n=0
  for sub in $(subcommands); do
    man_renders "lvmsync-$sub" SYNOPSIS DESCRIPTION OPTIONS EXAMPLES "SEE ALSO" || return 1
    grep -q "lvmsync-$sub(8)" < <(LC_ALL=C MANWIDTH=200 man -l /usr/share/man/man8/lvmsync.8.gz) ||
      { echo "lvmsync(8) does not refer to lvmsync-$sub(8)"; return 1; }
    n=$((n + 1))
  done
  ((n >= 4)) || { echo "lvmsync --help lists $n subcommands"; return 1; }
}
check "man renders each installed man page without warnings, with every option of --help" man_page

units() {
  # An instance of each template unit, as installed (the binary and the man page they name are
  # there): systemd-analyze has no remark.
  local u=/usr/lib/systemd/system/lvmsync-replicate@
  systemd-analyze verify "${u}test.service" "${u}test.timer" > "$tmp/verify.txt" 2>&1 ||
    { cat "$tmp/verify.txt"; return 1; }
  [[ ! -s $tmp/verify.txt ]] || { cat "$tmp/verify.txt"; return 1; }
}
check "systemd-analyze verifies the installed units" units

bash_completion() {
  # The completion is loaded, completes options, and offers none of the hidden ones (--server,
  # --session).
  bash -c 'source /usr/share/bash-completion/completions/lvmsync &&
    complete -p lvmsync | grep -q -- "-F _lvmsync" || exit 1
    offers() {
      COMP_WORDS=(lvmsync "$1") COMP_CWORD=1 COMP_LINE="lvmsync $1" COMP_POINT=$((8 + ${#1}))
      COMPREPLY=()
      _lvmsync lvmsync "$1" lvmsync
      [[ ${COMPREPLY[*]} == "$2" ]] || { echo "completing $1 offers \"${COMPREPLY[*]}\""; return 1; }
    }
    offers --snap --snapback && offers --no-ch --no-check && offers --se ""'
}
check "the bash completion loads and completes" bash_completion

zsh_completion() {
  local file=/usr/share/zsh/vendor-completions/_lvmsync
  zsh -n "$file" || return 1
  # compinit finds it where zsh looks by default; run with stand-ins for zsh's _arguments and
  # _describe (which need a command line being completed), it defines its functions and
  # offers every subcommand.
  zsh -fc 'autoload -U compinit && compinit -u -d "$1/zcompdump" || exit 1
    [[ $_comps[lvmsync] == _lvmsync ]] || { echo "compinit did not find _lvmsync"; exit 1; }
    _arguments() { return 1 }
    _describe() { print -rl -- ${(P)4} }
    _lvmsync
    _lvmsync_commands | cut -d: -f1' zsh "$tmp" > "$tmp/zsh.commands" || return 1
  subcommands | sort > "$tmp/commands"
  [[ -s $tmp/commands ]] || return 1
  sort "$tmp/zsh.commands" | grep -vx help | diff - "$tmp/commands"
}
check "the zsh completion loads and offers every subcommand" zsh_completion

fish_completion() {
  local file=/usr/share/fish/vendor_completions.d/lvmsync.fish
  fish --no-execute "$file" || return 1
  # A home of its own: fish writes its variables there.
  mkdir -p "$tmp/fish-home"
  fish_offers() {
    local got
    got=$(HOME=$tmp/fish-home XDG_CONFIG_HOME=$tmp/fish-home XDG_DATA_HOME=$tmp/fish-home \
      fish -c 'complete -C $argv[1]' "$1" | cut -f1 | tr '\n' ' ')
    [[ $got == "$2" ]] || { echo "completing \"$1\" offers \"$got\""; return 1; }
  }
  # Found where fish looks (it does once lvmsync is on PATH): it offers a subcommand, a
  # subcommand's options, and none of the hidden ones (--server, --session, verify --serve).
  fish_offers "lvmsync ver" "verify " &&
    fish_offers "lvmsync verify --ch" "--changes --chunk " &&
    fish_offers "lvmsync verify --se" "" &&
    fish_offers "lvmsync --se" ""
}
check "the fish completion parses and completes" fish_completion

remove_deb() {
  if ((was_installed)); then
    echo "lvmsync was installed before this test: left installed"
    return 0
  fi
  DEBIAN_FRONTEND=noninteractive apt-get purge -y -q -o DPkg::Lock::Timeout=300 lvmsync \
    > "$tmp/apt.log" 2>&1 || { cat "$tmp/apt.log"; return 1; }
  # Nothing left: no dpkg record (not even "config-files"), no file.
  [[ -z $(dpkg_state) ]] || { echo "dpkg still knows lvmsync: $(dpkg_state)"; return 1; }
  local f
  for f in /usr/sbin/lvmsync /usr/share/man/man8/lvmsync*.8.gz \
    /usr/share/bash-completion/completions/lvmsync /usr/share/zsh/vendor-completions/_lvmsync \
    /usr/share/fish/vendor_completions.d/lvmsync.fish /usr/share/doc/lvmsync \
    /usr/lib/systemd/system/lvmsync-replicate@.service \
    /usr/lib/systemd/system/lvmsync-replicate@.timer; do
    [[ ! -e $f ]] || { echo "left behind: $f"; return 1; }
  done
}
check "apt purges the package and leaves nothing behind" remove_deb
flock -u 9

echo "== static binary"
static=
build_static() {
  static=$(./scripts/build-static.sh) && [[ -x $static ]] && echo "$static"
}
check "scripts/build-static.sh builds a binary" build_static

is_static() {
  [[ -x $static ]] || return 1
  file -b "$static"
  file -b "$static" | grep -q 'static' || return 1
  # ldd: "not a dynamic executable", or "statically linked" for a static PIE.
  ldd "$static" 2>&1 | grep -qE 'not a dynamic executable|statically linked' ||
    { ldd "$static"; return 1; }
}
check "the static binary needs no shared library" is_static

static_runs() {
  [[ -x $static ]] || return 1
  [[ $("$static" --version) == "lvmsync $version" ]] &&
    round_trip target/release/lvmsync "$static" &&
    round_trip "$static" target/release/lvmsync
}
check "the static binary runs, applies and sends a compressed stream" static_runs

echo "$passed passed, $failed failed"
((failed == 0))
