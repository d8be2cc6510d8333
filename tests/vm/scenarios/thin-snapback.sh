# shellcheck shell=sh
# Snapback with a thin snapshot: `lvmsync -b SB SNAP DEST` makes DEST equal the
# origin and SB a stream of DEST's old contents of every changed range (the
# discarded ones too); `lvmsync --apply SB DEST` gives the snapshot's contents
# back. On a linear destination in format 4, and on a thin destination (a
# snapshot of the snapshot) in format 3; the snapback is a format 4 stream either
# way. An existing snapback file is only overwritten with --force.
. "$VMTEST_LIB"
VG=tsnapb
POOL=$VG-pool-tpool
MiB=1048576
BLK=65536

step "pool (64 KiB blocks), 32 MiB origin mapped in 0-12 MiB, thin snapshot, destinations"
make_vg $VG
thin_origin $VG 64M 12M 40
run lvcreate -y -s -n snap $VG/origin
run lvchange -ay -K $VG/snap
run lvcreate -y -Wy -Zy -L 32M -n dest $VG
run dd if=/dev/$VG/snap of=/dev/$VG/dest bs=1M iflag=direct conv=fsync status=none
run lvcreate -y -s -n tdest $VG/snap
run lvchange -ay -K $VG/tdest

step "writes and a discard to the origin"
write_at /dev/$VG/origin 100 5000 O1-block0
write_at /dev/$VG/origin $((7 * BLK)) $((3 * BLK)) O2-blocks7-9
write_at /dev/$VG/origin $((20 * MiB + 12345)) 4096 O3-block320-never-mapped
run sync
run blkdiscard -o $((6 * MiB)) -l $((2 * MiB)) /dev/$VG/origin
save changes.txt lvmsync changes /dev/$VG/snap
grep -q "^$((6 * MiB)) $((2 * MiB)) zero\$" "$FILES/changes.txt" || fail "the discard is not a zero range"

step "sync with a snapback, then roll back (format 4, linear destination)"
run lvmsync -b "$TMP/sb4" /dev/$VG/snap /dev/$VG/dest
check_eq "snapback format" "$(head -c 17 "$TMP/sb4")" "lvmsync PROTO[4]"
same_content /dev/$VG/dest /dev/$VG/origin
echo "not a snapback" > "$TMP/taken"
expect_error "already exists (use --force" lvmsync -b "$TMP/taken" /dev/$VG/snap /dev/$VG/dest
check_eq "the existing file is kept" "$(cat "$TMP/taken")" "not a snapback"
run lvmsync --apply "$TMP/sb4" /dev/$VG/dest
same_content /dev/$VG/dest /dev/$VG/snap

step "the same with --format 3 onto a thin destination, over an existing file with --force"
echo "old" > "$TMP/sb3"
run lvmsync --format 3 -b "$TMP/sb3" --force /dev/$VG/snap /dev/$VG/tdest
check_eq "snapback format" "$(head -c 17 "$TMP/sb3")" "lvmsync PROTO[4]"
same_content /dev/$VG/tdest /dev/$VG/origin
run lvmsync --apply "$TMP/sb3" /dev/$VG/tdest
same_content /dev/$VG/tdest /dev/$VG/snap
check_eq "no metadata snapshot held" "$(held_metadata_root $POOL)" "-"
