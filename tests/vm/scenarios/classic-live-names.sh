# Hyphenated VG and LV names (device-mapper doubles the hyphens) and an origin striped over two
# PVs; the snapshot is named by /dev/VG/LV, /dev/mapper/VG-LV and /dev/dm-N.
. "$VMTEST_LIB"
VG=my-vg
SEED=11

step "striped origin over 2 PVs, copy, snapshot, writes"
make_vg $VG 2
run lvcreate -y -Wy -Zy -i 2 -I 64k -L 16M -n data-lv $VG
run lvcreate -y -Wy -Zy -L 16M -n data-lv-copy $VG
fill_pattern /dev/$VG/data-lv 16M $SEED
fill_pattern /dev/$VG/data-lv-copy 16M $SEED
run lvcreate -y -s -c 16k -L 4M -n data-lv-snap $VG/data-lv
lvs -o lv_name,segtype,stripes $VG
write_at /dev/$VG/data-lv 65536 65536 N1-second-stripe
write_at /dev/$VG/data-lv 100000 10 N2
write_at /dev/$VG/data-lv 12582912 131072 N3
run sync

step "changes by every name of the snapshot"
expected_extents 16k 16M > "$TMP/expected"
MAPPER=/dev/mapper/$(dm_name $VG data-lv-snap)
DMN=/dev/$(basename "$(readlink -f /sys/dev/block/$(dmsetup info -c --noheadings -o major,minor --separator : "$(dm_name $VG data-lv-snap)"))")
for p in /dev/$VG/data-lv-snap "$MAPPER" "$DMN"; do
  run sh -c "lvmsync changes '$p' > $TMP/changes"
  check_files_eq "changes via $p" "$TMP/changes" "$TMP/expected"
done

step "sync"
run lvmsync "$MAPPER" /dev/$VG/data-lv-copy
same_content /dev/$VG/data-lv-copy /dev/$VG/data-lv
