# Live classic snapshot, local sync: `lvmsync /dev/VG/SNAP /dev/VG/COPY` makes a copy taken at
# snapshot time equal to the origin; `lvmsync changes` lists exactly the chunks written.
. "$VMTEST_LIB"
VG=livevg
SEED=3

step "origin of 32 MiB, a copy of it, a 4 KiB-chunk snapshot, writes to the origin"
make_vg $VG
patterned_lvs $VG 32M $SEED origin copy
run lvcreate -y -s -c 4k -L 8M -n snap $VG/origin
write_at /dev/$VG/origin 0 512 W1-chunk0
write_at /dev/$VG/origin 21480 100 W2-chunk5-unaligned
write_at /dev/$VG/origin 1048576 4096 W3-chunk256
write_at /dev/$VG/origin 10498105 50000 W4-chunks2563-2575
write_at /dev/$VG/origin 16777216 1052672 W5-two-metadata-areas
write_at /dev/$VG/origin 33550336 4096 W6-last-chunk
run sync

step "lvmsync changes"
save changes.txt lvmsync changes /dev/$VG/snap
expected_extents 4k 32M > "$TMP/expected"
check_files_eq "changes of the live snapshot" "$FILES/changes.txt" "$TMP/expected"

step "local sync"
run lvmsync -v /dev/$VG/snap /dev/$VG/copy
same_content /dev/$VG/copy /dev/$VG/origin
