# shellcheck shell=sh
# The lvmsync workflow on real LVM, narrated (run by tests/vm/demo.sh).
. "$VMTEST_LIB"
say() { printf '\n### %s\n' "$*"; }
VG=demo
SIZE=64M

say "A volume group on a fresh 256 MiB disk, and a $SIZE logical volume holding data"
make_vg $VG
run lvcreate -y -Wy -Zy -L $SIZE -n data $VG
fill_pattern /dev/$VG/data $SIZE 0

say "1. Take a classic snapshot of the data: from now on, the snapshot records which chunks change"
run lvcreate -y -s -L 16M -n data-snap $VG/data
run lvs -o lv_name,lv_attr,lv_size,origin,chunk_size $VG

say "2. Copy the snapshot (a stable image) to the destination: the one full transfer"
run lvcreate -y -Wy -Zy -L $SIZE -n copy $VG
run dd if=/dev/$VG/data-snap of=/dev/$VG/copy bs=1M iflag=direct oflag=direct status=none
echo "(copied $(blockdev --getsize64 /dev/$VG/copy) bytes)"

say "3. Meanwhile the data keeps changing"
write_at /dev/$VG/data 4096 4096 "new record"
write_at /dev/$VG/data 10000000 300 "an update in the middle"
write_at /dev/$VG/data 50331648 1048576 "a bigger rewrite"
run sync
run lvs -o lv_name,snap_percent $VG/data-snap

say "4. What changed since the snapshot (lvmsync changes)"
run lvmsync changes /dev/$VG/data-snap

say "5. Send only those changes to the copy"
run lvmsync /dev/$VG/data-snap /dev/$VG/copy
run lvmsync --stdout /dev/$VG/data-snap > "$TMP/stream"
sent=$(stat -c %s "$TMP/stream")
size=$(blockdev --getsize64 /dev/$VG/data)
echo "the change stream is $sent bytes for a $size-byte volume ($(awk -v a="$sent" -v b="$size" 'BEGIN { printf "%.2f", a * 100 / b }')%)"

say "6. The copy now equals the live data"
same_md5 /dev/$VG/copy /dev/$VG/data
echo "copy == data"
