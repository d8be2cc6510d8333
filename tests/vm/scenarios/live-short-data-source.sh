# shellcheck shell=sh
# A --data-source smaller than a live snapshot's volume (classic and thin) is refused in every
# form (changes, --stdout, local DEST, HOST:DEST) before anything is written; one as large as
# the volume is used.
. "$VMTEST_LIB"
VG=shortvg
TVG=shortthin
SEED=21

step "classic: origin, copy, reference copy, snapshot, writes; a 4 MiB LV as data source"
make_vg $VG
patterned_lvs $VG 8M $SEED origin copy ref
run lvcreate -y -Wy -Zy -L 4M -n short $VG
run lvcreate -y -s -c 4k -L 4M -n snap $VG/origin
write_at /dev/$VG/origin 8192 4096 W1
write_at /dev/$VG/origin $((6 * 1048576)) 4096 W2
run sync

step "thin: a 32 MiB thin origin and its snapshot"
make_vg $TVG
thin_origin $TVG 64M 4M $SEED
run lvcreate -y -s -n snap $TVG/origin
run lvchange -ay -K $TVG/snap
write_at /dev/$TVG/origin 0 4096 T1
run sync

cat > "$TMP/rsh" << SH
#!/bin/sh
touch "$TMP/rsh-ran"
SH
chmod 755 "$TMP/rsh"

for case in "$VG 8388608" "$TVG 33554432"; do
  set -- $case
  SNAP=$1/snap
  want="data source /dev/$VG/short is 4194304 bytes, smaller than the $2-byte volume of snapshot $SNAP"
  step "$SNAP: every form refuses the short data source"
  expect_error "$want" lvmsync changes -r /dev/$VG/short /dev/$SNAP
  expect_error "$want" lvmsync --stdout -r /dev/$VG/short /dev/$SNAP
  [ -s "$TMP/out" ] && fail "a stream was written"
  expect_error "$want" lvmsync -r /dev/$VG/short /dev/$SNAP /dev/$VG/copy
  expect_error "$want" lvmsync -e "$TMP/rsh" -r /dev/$VG/short /dev/$SNAP somehost:/dev/$VG/copy
  [ -e "$TMP/rsh-ran" ] && fail "the remote shell was started"
done

step "the destination is unchanged"
same_content /dev/$VG/copy /dev/$VG/ref

step "a data source as large as the volume is used"
run lvmsync -r /dev/$VG/origin /dev/$VG/snap /dev/$VG/copy
same_content /dev/$VG/copy /dev/$VG/origin
