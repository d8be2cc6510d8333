# shellcheck shell=sh
# Classic snapshot, offline change source: `lvmsync changes --cow` lists
# exactly the chunks the writes touched, and the change stream brings a copy
# of the snapshot up to date with the origin, in each form: --stdout then
# --apply FILE, the direct local form, and format 3 through a pipe.  A
# truncated stream is refused.
#
# Variants source this file after setting VG, ORIGIN, SNAP, CHUNK, SIZE or
# defining origin_writes (see classic-cow-offline-*.sh).
. "$VMTEST_LIB"
VG=${VG:-cowvg}
ORIGIN=${ORIGIN:-origin}
SNAP=${SNAP:-snap}
CHUNK=${CHUNK:-4k}
SIZE=${SIZE:-16M}
SIZE_BYTES=$(to_bytes "$SIZE")
CS=$(to_bytes "$CHUNK")
if ! command -v origin_writes > /dev/null; then
  # unaligned, crossing and on chunk boundaries, a multi-chunk run, the last chunk
  origin_writes() {
    write_at "$1" 0 512 W1-chunk0
    write_at "$1" 21480 100 W2-unaligned
    write_at "$1" $((CS - 1)) 2 W3-across-chunks0-1
    write_at "$1" $((CS * 40)) "$CS" W4-one-whole-chunk
    write_at "$1" $((CS * 60 + 77)) $((CS * 3)) W5-four-chunks-unaligned
    write_at "$1" $((SIZE_BYTES / 2)) 200000 W6-run
    write_at "$1" $((SIZE_BYTES - CS)) "$CS" W7-last-chunk
    write_at "$1" $((SIZE_BYTES - 1)) 1 W8-last-byte
    write_at "$1" 2048 16 W9-chunk0-again
  }
fi

step "VG $VG: origin $VG/$ORIGIN ($SIZE, pattern data), snapshot $VG/$SNAP (chunk $CHUNK), copies of the snapshot"
make_vg "$VG"
run lvcreate -y -Wy -Zy -L "$SIZE" -n "$ORIGIN" "$VG"
fill_pattern "/dev/$VG/$ORIGIN" "$SIZE" 0
run lvcreate -y -s -c "$CHUNK" -L 8M -n "$SNAP" "$VG/$ORIGIN"
for c in copy copy2 copy3; do
  run lvcreate -y -Wy -Zy -L "$SIZE" -n $c "$VG"
  run dd if="/dev/$VG/$SNAP" of="/dev/$VG/$c" bs=1M iflag=direct oflag=direct status=none
done

step "writes to the origin"
origin_writes "/dev/$VG/$ORIGIN"
run sync
ORIG=/dev/$VG/$ORIGIN
COW=/dev/mapper/$(dm_name "$VG" "$SNAP")-cow
[ -b "$COW" ] || fail "no exception store device $COW"

step "the change list"
expected_extents "$CHUNK" "$SIZE" > "$FILES/expected-extents.txt"
cow_old_chunks "$COW" | chunks_to_extents "$CHUNK" "$SIZE" > "$TMP/cow-extents"
check_files_eq "exception store (decoded with od) vs writes" "$TMP/cow-extents" "$FILES/expected-extents.txt"
save changes.txt lvmsync changes --cow "$COW" --data-source "$ORIG"
check_files_eq "lvmsync changes --cow" "$FILES/changes.txt" "$FILES/expected-extents.txt"
changed=$(awk '{ s += $2 } END { printf "%.0f", s }' "$FILES/expected-extents.txt")
extents=$(wc -l < "$FILES/expected-extents.txt")

step "--stdout, then --apply FILE"
run lvmsync --stdout --cow "$COW" --data-source "$ORIG" > "$TMP/stream"
sent=$(stat -c %s "$TMP/stream")
echo "stream: $sent bytes for $changed changed bytes in $extents extents (volume $SIZE_BYTES bytes)"
[ "$sent" -ge "$changed" ] || fail "stream ($sent bytes) smaller than the changed data ($changed bytes)"
[ "$sent" -le $((changed + 4096 + extents * 256)) ] || fail "stream ($sent bytes) carries more than the changes ($changed bytes)"
run lvmsync --apply "$TMP/stream" "/dev/$VG/copy"
same_content "/dev/$VG/copy" "$ORIG"

step "a truncated stream is refused"
head -c $((sent / 2)) "$TMP/stream" > "$TMP/stream-truncated"
expect_fail lvmsync --apply "$TMP/stream-truncated" "/dev/$VG/copy"

step "direct local form: lvmsync --cow ... --data-source ... DEST"
run lvmsync --cow "$COW" --data-source "$ORIG" "/dev/$VG/copy2"
same_content "/dev/$VG/copy2" "$ORIG"

step "format 3 through a pipe into --apply -"
run sh -c "set -o pipefail; lvmsync --stdout --format 3 --cow '$COW' --data-source '$ORIG' | lvmsync --apply - '/dev/$VG/copy3'"
same_content "/dev/$VG/copy3" "$ORIG"
