#!/bin/bash
# capture-fixtures.sh - boot the test VM, run the LVM-only capture scenarios
# (classic-capture, thin-capture) and copy their artefacts into
# tests/fixtures/captured/ (images gzipped), so unit tests run on what real
# LVM and device-mapper produce.  Regenerates the whole folder.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
DEST=${FIXTURES_DEST:-$REPO/tests/fixtures/captured}
OUT=$HERE/out/capture
VMTEST_OUT=$OUT VMTEST_LVMSYNC=none "$HERE/run-scenarios.sh" classic-capture thin-capture

rm -rf "$DEST"
mkdir -p "$DEST/classic" "$DEST/thin"
copy() { # copy SCENARIO DESTDIR FILE...: text as is, *.img gzipped
  local s=$1 d=$2 f
  shift 2
  for f in "$@"; do
    local src=$OUT/scenarios/$s/files/$f
    [[ -e $src ]] || { echo "capture-fixtures: $s did not produce $f" >&2; exit 1; }
    if [[ $f == *.img ]]; then
      gzip -9n < "$src" > "$d/$f.gz"
    else
      cp "$src" "$d/$f"
    fi
  done
}
copy classic-capture "$DEST/classic" snap-cow.img origin-before.img origin-after.img \
  writes.txt expected-extents.txt capvg.vgcfg lvs.json dmsetup-table.txt dmsetup-status.txt \
  dmsetup-ls-tree.txt
copy thin-capture "$DEST/thin" tmeta.img tmeta-held.img thin_delta.xml thin_dump-held.xml \
  thin_dump-offline.xml thin-ids.txt writes-before.txt writes.txt writes-snap.txt \
  expected-extents.txt thinvg.vgcfg lvs.json dmsetup-table.txt dmsetup-ls-tree.txt \
  pool-status-before.txt pool-status-held.txt pool-status-released.txt
cp "$OUT/guest-versions.txt" "$DEST/versions.txt"
lvm_version=$(sed -n 's/^ *LVM version: *\([^ ]*\).*/\1/p' "$DEST/versions.txt")
kernel=$(head -1 "$DEST/versions.txt" | awk '{ print $3 }')
cat > "$DEST/README.md" << MD
# Artefacts captured from real LVM ($lvm_version, kernel $kernel)

Made by \`tests/vm/capture-fixtures.sh\` (scenarios \`tests/vm/scenarios/classic-capture.sh\` and
\`thin-capture.sh\` in the test VM); \`versions.txt\` has the exact tool versions. Data written is
\`yes TAG | head -c LEN\` at the offsets listed in the \`writes*.txt\` files (\`OFFSET LENGTH TAG\`);
\`expected-extents.txt\` is the merged \`OFFSET LENGTH data\` list of the chunks those writes
touched (the output \`lvmsync changes\` must give). \`*.img.gz\` are raw device images.
\`tests/captured.rs\` checks what lvmsync reads from them against the writes and the tools' output.

## classic/ - dm-snapshot
VG \`capvg\`, origin \`origin\` 16 MiB, snapshot \`snap\` made with \`lvcreate -s -c 4k -L 8M\`.
- \`snap-cow.img.gz\`: the \`capvg-snap-cow\` device (the exception store) after the writes; its
  exceptions fill more than one metadata area.
- \`origin-before.img.gz\`, \`origin-after.img.gz\`: the origin before and after the writes.
- \`capvg.vgcfg\` (vgcfgbackup), \`lvs.json\` (\`lvs -a --reportformat json --units b --nosuffix\`),
  \`dmsetup-*.txt\`.

## thin/ - thin pool and thin snapshot
Pool \`thinvg/pool\` with 64 KiB blocks, thin LV \`thin1\` 128 MiB, snapshot \`tsnap\` (ids in
\`thin-ids.txt\`).
- \`writes-before.txt\`: written before the snapshot; \`writes.txt\`: to thin1 after it;
  \`writes-snap.txt\`: to the snapshot.
- \`tmeta.img.gz\`: the metadata device with the pool inactive; \`tmeta-held.img.gz\`: the live
  metadata device while a metadata snapshot was held (its root is field 7 of
  \`pool-status-held.txt\`).
- \`thin_delta.xml\` (\`--snap1 SNAP --snap2 ORIGIN\`) and \`thin_dump-held.xml\` read through the
  held metadata snapshot, \`thin_dump-offline.xml\` from the inactive pool.
- \`thinvg.vgcfg\`, \`lvs.json\`, \`dmsetup-*.txt\`, \`pool-status-{before,held,released}.txt\`.
MD
du -sh "$DEST"
echo "fixtures written to $DEST"
