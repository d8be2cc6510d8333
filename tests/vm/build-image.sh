#!/bin/bash
# build-image.sh - build the LVM test VM image: a stock Debian 12 kernel and an
# initramfs with busybox, lvm2, dmsetup, thin-provisioning-tools and mke2fs
# (e2fsprogs), with the device-mapper (snapshot, thin, log-writes) and ext4
# modules.
#
# Packages are fetched with `apt-get download` (never installed) together with
# their shared-library closure, unpacked with dpkg -x, and packed into a
# reproducible newc cpio (sorted names, mtime 0, owner 0:0).  The guest /init
# is tests/vm/guest/init.sh; the test payload (lvmsync, scenarios) is NOT part
# of the image: run-scenarios.sh appends it per run as a second cpio.
#
# Everything lands in tests/vm/cache/ (git-ignored):
#   debs/                 downloaded .deb files
#   image-KEY/            the built image; KEY hashes the package versions and
#                         the files that shape the image, so a rebuild happens
#                         only when one of them changes
#     vmlinux             uncompressed kernel with a PVH entry (fast direct boot)
#     vmlinuz             the Debian bzImage (fallback)
#     initramfs.cpio      uncompressed, so a payload cpio can be appended
#     versions.txt        package versions, libs.txt: libraries in the image
#
# Prints the image directory on stdout.  Env: VMTEST_CACHE (cache folder),
# KERNEL_PKG (default: what linux-image-amd64 depends on), FORCE=1 (rebuild).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${VMTEST_CACHE:-$HERE/cache}
T_START=$(date +%s.%N)
log() { echo "[build-image] $*" >&2; }
since() { awk -v a="$(date +%s.%N)" -v b="$1" 'BEGIN { printf "%.1f", a - b }'; }

# one build at a time per cache folder
mkdir -p "$CACHE"
exec 8> "$CACHE/.build-lock"
flock 8

# ------------------------------------------------------------ host tools
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
need=()
for p in qemu-system-x86 cpio binutils xz-utils; do pkg_installed "$p" || need+=("$p"); done
if ((${#need[@]})); then
  log "installing host packages: ${need[*]}"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=300 \
    --no-install-recommends "${need[@]}" >/dev/null
fi
# a private package cache file: some images disable apt's own, and rebuilding
# it costs ~0.7 s per apt-cache call
mkdir -p "$CACHE/apt"
aptc() {
  apt-cache -o Dir::Cache::pkgcache="$CACHE/apt/pkgcache.bin" \
    -o Dir::Cache::srcpkgcache="$CACHE/apt/srcpkgcache.bin" "$@"
}
aptc show lvm2 >/dev/null 2>&1 || apt-get update -q >/dev/null

# ------------------------------------------------------------ package set
# Depends/Pre-Depends closure of the roots, restricted to library packages
# (lib*): first alternative of each dependency, virtual packages skipped.
closure() {
  local -A seen=()
  local level=("$@") next dep r
  for r in "$@"; do seen[$r]=1; done
  while ((${#level[@]})); do
    printf '%s\n' "${level[@]}"
    next=()
    while read -r dep; do
      [[ $dep == lib* && -z ${seen[$dep]:-} ]] || continue
      seen[$dep]=1
      next+=("$dep")
    done < <(aptc depends --no-recommends --no-suggests --no-conflicts --no-breaks \
      --no-replaces --no-enhances "${level[@]}" 2>/dev/null |
      awk '/^ *\|?(Pre)?Depends: [^<]/ {print $2}')
    level=("${next[@]}")
  done
}
KERNEL_PKG=${KERNEL_PKG:-$(aptc depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')}
[[ -n $KERNEL_PKG ]] || { log "cannot resolve the kernel package"; exit 1; }
mapfile -t PKGS < <(closure lvm2 dmsetup thin-provisioning-tools e2fsprogs busybox-static | sort -u)
PKGS+=("$KERNEL_PKG")
declare -A VER=()
while read -r p v; do VER[$p]=$v; done < <(aptc policy "${PKGS[@]}" |
  awk '/^[^ ].*:$/ {p = substr($1, 1, length($1) - 1)} /^  Candidate:/ {print p, $2}')
for p in "${PKGS[@]}"; do
  [[ -n ${VER[$p]:-} && ${VER[$p]} != "(none)" ]] || { log "no candidate version for $p"; exit 1; }
done
KEY=$({
  for p in "${PKGS[@]}"; do echo "$p ${VER[$p]}"; done
  cat "$HERE/build-image.sh" "$HERE/guest/init.sh"
} | sha256sum | cut -c1-16)
IMG=$CACHE/image-$KEY
if [[ -z ${FORCE:-} && -s $IMG/initramfs.cpio && -s $IMG/vmlinuz && -e $IMG/complete ]]; then
  log "cached image $IMG"
  echo "$IMG"
  exit 0
fi

# ------------------------------------------------------------ downloads
DL=$CACHE/debs
mkdir -p "$DL"
debfile() { compgen -G "$DL/${1}_${VER[$1]//:/%3a}_*.deb" | head -1; }
missing=()
for p in "${PKGS[@]}"; do [[ -n $(debfile "$p") ]] || missing+=("$p=${VER[$p]}"); done
T0=$(date +%s.%N)
if ((${#missing[@]})); then
  log "downloading ${#missing[@]} packages"
  (
    cd "$DL"
    apt-get download -q "${missing[@]}" 2>&1 |
      { grep -v -e 'Download is performed unsandboxed' -e '^Get:' >&2 || true; }
    [[ ${PIPESTATUS[0]} == 0 ]]
  )
fi
T_DL=$(since "$T0")

# ------------------------------------------------------------ unpack
WORK=$CACHE/build-tmp
ST=$WORK/stage
ROOT=$WORK/root
rm -rf "$WORK"
mkdir -p "$ST/k" "$ST/u"
# kernel subtrees the wanted modules (and their dependencies) come from
KMOD_DIRS=(drivers/md drivers/virtio drivers/block crypto lib fs/ext4 fs/jbd2 fs/mbcache.ko)
: > "$WORK/versions.txt"
for p in "${PKGS[@]}"; do
  deb=$(debfile "$p")
  [[ -n $deb ]] || { log "download of $p failed"; exit 1; }
  echo "$p ${VER[$p]}" >> "$WORK/versions.txt"
  if [[ $p == "$KERNEL_PKG" ]]; then
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$ST/k" --wildcards './boot/vmlinuz-*' \
      './lib/modules/*/modules.builtin' "${KMOD_DIRS[@]/#/./lib/modules/*/kernel/}"
  else
    dpkg -x "$deb" "$ST/u"
  fi
done
KVER=$(ls "$ST/k/lib/modules")
log "kernel $KVER"

# ------------------------------------------------------------ root tree
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,lib/x86_64-linux-gnu,lib64,etc/lvm,dev,proc,sys,run,tmp,out}
ln -s lib "$ROOT/usr/lib" # one library directory for both search paths

cp "$ST/u/bin/busybox" "$ROOT/bin/busybox"
for a in $("$ST/u/bin/busybox" --list-full); do
  [[ $a == usr/lib* ]] && continue
  [[ -e $ROOT/$a || -L $ROOT/$a ]] || ln -s /bin/busybox "$ROOT/$a"
done

# copy_tool DIR BIN: a binary and every symlink naming it (lvcreate -> lvm ...),
# replacing busybox applets of the same name
copy_tool() {
  local d=$1 b=$2 f
  rm -f "$ROOT/$d/$b"
  cp "$ST/u/$d/$b" "$ROOT/$d/$b"
  for f in "$ST/u/$d"/*; do
    if [[ -L $f && $(readlink "$f") == "$b" ]]; then
      rm -f "$ROOT/$d/${f##*/}"
      ln -s "$b" "$ROOT/$d/${f##*/}"
    fi
  done
}
copy_tool sbin lvm
copy_tool sbin dmsetup
copy_tool usr/sbin pdata_tools
copy_tool sbin mke2fs # mkfs.ext4: a journalled file system for the crash-consistency scenario
cp "$ST/u/etc/mke2fs.conf" "$ROOT/etc/mke2fs.conf"

# shared libraries: recursive DT_NEEDED closure resolved in the staging tree
declare -A have=()
libdirs=("$ST/u/lib/x86_64-linux-gnu" "$ST/u/usr/lib/x86_64-linux-gnu")
add_libs() {
  local n f d
  for n in $(readelf -d "$1" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
    [[ -n ${have[$n]:-} ]] && continue
    f=
    for d in "${libdirs[@]}"; do [[ -e $d/$n ]] && { f=$d/$n; break; }; done
    [[ -n $f ]] || { log "library $n (needed by $1) not in the package closure"; exit 1; }
    have[$n]=1
    cp -L "$f" "$ROOT/lib/x86_64-linux-gnu/$n"
    add_libs "$f"
  done
}
for e in "$ROOT/sbin/lvm" "$ROOT/sbin/dmsetup" "$ROOT/usr/sbin/pdata_tools" "$ROOT/sbin/mke2fs"; do add_libs "$e"; done
cp -L "$ST/u/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" "$ROOT/lib/x86_64-linux-gnu/"
ln -s /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$ROOT/lib64/ld-linux-x86-64.so.2"

# kernel modules: the wanted ones plus their `depends=` from .modinfo (the
# .deb carries no modules.dep), written in load order
MODS_WANTED=(virtio_pci virtio_blk loop crc32c_generic dm_mod dm_snapshot dm_thin_pool dm_log_writes ext4)
declare -A modfile=() modseen=()
while read -r f; do n=${f##*/}; n=${n%.ko}; modfile[${n//-/_}]=$f; done \
  < <(find "$ST/k/lib/modules/$KVER/kernel" -name '*.ko')
modorder=()
addmod() {
  local m=${1//-/_} d
  [[ -n ${modseen[$m]:-} ]] && return
  modseen[$m]=1
  if [[ -z ${modfile[$m]:-} ]]; then
    grep -q "/${m//_/[-_]}.ko\$" "$ST/k/lib/modules/$KVER/modules.builtin" && return
    log "module $m not found"
    exit 1
  fi
  for d in $(readelf -p .modinfo "${modfile[$m]}" | sed -n 's/.*\]  depends=//p' | tr ',' ' '); do
    addmod "$d"
  done
  modorder+=("$m")
}
# libcrc32c needs a crc32c provider registered first
addmod crc32c_generic
for m in "${MODS_WANTED[@]}"; do addmod "$m"; done
mkdir -p "$ROOT/lib/modules/$KVER"
for m in "${modorder[@]}"; do cp "${modfile[$m]}" "$ROOT/lib/modules/$KVER/$m.ko"; done
printf '%s\n' "${modorder[@]}" > "$ROOT/lib/modules/$KVER/load.order"
log "modules: ${modorder[*]}"

# no udev and no daemons in the guest: LVM makes its own /dev nodes
cat > "$ROOT/etc/lvm/lvm.conf" <<'CONF'
devices {
    obtain_device_list_from_udev = 0
    external_device_info_source = "none"
    use_devicesfile = 0
    scan = [ "/dev" ]
}
activation {
    udev_sync = 0
    udev_rules = 0
    verify_udev_operations = 0
    monitoring = 0
}
global {
    use_lvmpolld = 0
    use_lvmlockd = 0
    event_activation = 0
    thin_check_executable = "/usr/sbin/thin_check"
}
backup {
    backup = 0
    archive = 0
}
CONF
echo "$KVER" > "$ROOT/etc/kernel-version"
cp "$WORK/versions.txt" "$ROOT/etc/image-versions"
cp "$HERE/guest/init.sh" "$ROOT/init"
chmod 755 "$ROOT/init"

# ------------------------------------------------------------ image files
NEW=$WORK/image
mkdir -p "$NEW"
find "$ROOT" -exec touch -h -d @0 {} +
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --reproducible --quiet) \
  > "$NEW/initramfs.cpio"
(cd "$ROOT/lib/x86_64-linux-gnu" && ls) > "$NEW/libs.txt"
cp "$WORK/versions.txt" "$NEW/versions.txt"
cp "$ST/k/boot/vmlinuz-$KVER" "$NEW/vmlinuz"
# QEMU can boot an uncompressed ELF vmlinux directly through its PVH entry:
# no firmware and no in-guest xz decompression (seconds under TCG).  Keep it
# only if it carries the PVH note (XEN_ELFNOTE_PHYS32_ENTRY = 0x12).
off=$(LC_ALL=C grep -abo $'\xfd7zXZ' "$NEW/vmlinuz" | head -1 | cut -d: -f1 || true)
if [[ -n $off ]]; then
  tail -c +$((off + 1)) "$NEW/vmlinuz" | xz -dc > "$NEW/vmlinux" 2>/dev/null || true
  if ! readelf -n "$NEW/vmlinux" 2>/dev/null | grep -q 'Unknown note type: (0x00000012)'; then
    log "no PVH entry in the kernel; the VM will boot the bzImage"
    rm -f "$NEW/vmlinux"
  fi
fi
{
  echo "kernel $KVER"
  echo "initramfs_bytes $(stat -c %s "$NEW/initramfs.cpio")"
  echo "download_seconds $T_DL"
  echo "build_seconds $(since "$T_START")"
} > "$NEW/build-info.txt"
touch "$NEW/complete"
rm -rf "$IMG"
mv "$NEW" "$IMG"
rm -rf "$WORK"
for old in "$CACHE"/image-*; do [[ $old == "$IMG" ]] || rm -rf "$old"; done
log "built $IMG in $(since "$T_START")s ($(tr '\n' ' ' < "$IMG/build-info.txt"))"
echo "$IMG"
