# Live classic snapshot through a stream file: `--stdout` then `--apply`, in format 4 (default)
# and format 3 (the Ruby lvmsync PROTO[3] stream); the format 4 stream's identity names both
# volumes with their LVM UUIDs.
. "$VMTEST_LIB"
VG=streamvg
SEED=5

step "origin, two copies, snapshot, writes"
make_vg $VG
patterned_lvs $VG 16M $SEED origin copy4 copy3
run lvcreate -y -s -c 8k -L 4M -n snap $VG/origin
write_at /dev/$VG/origin 4096 8192 A-chunks0-1
write_at /dev/$VG/origin 5000000 70000 B-middle
write_at /dev/$VG/origin 16769024 8192 C-last-chunk
run sync

step "format 4 through a file"
run sh -c "lvmsync --stdout /dev/$VG/snap > $TMP/changes4"
run lvmsync --apply $TMP/changes4 /dev/$VG/copy4
same_content /dev/$VG/copy4 /dev/$VG/origin

step "the format 4 stream's identity: both volumes by name and LVM UUID, the chunk size"
save info4.json lvmsync info --json $TMP/changes4
for lv in origin snap; do
  uuid=$(lvs --noheadings -o lv_uuid $VG/$lv | tr -d ' ')
  [ -n "$uuid" ] || fail "no UUID for $VG/$lv"
  grep -q "\"name\":\"$VG/$lv\",\"uuid\":\"$uuid\"" "$FILES/info4.json" ||
    fail "the identity does not name $VG/$lv with its UUID $uuid: $(cat "$FILES/info4.json")"
done
grep -q '"kind":"classic"' "$FILES/info4.json" || fail "not a classic stream's identity"
grep -q '"chunk_bytes":8192,' "$FILES/info4.json" || fail "the chunk size is not the snapshot's"
grep -q '"manifest_entries":[1-9]' "$FILES/info4.json" || fail "no manifest"

step "format 3 through a pipe-less file, then applied"
run sh -c "lvmsync --format 3 --stdout /dev/$VG/snap > $TMP/changes3"
check_eq "format 3 handshake" "$(head -n 1 $TMP/changes3)" "lvmsync PROTO[3]"
run lvmsync --apply $TMP/changes3 /dev/$VG/copy3
same_content /dev/$VG/copy3 /dev/$VG/origin
