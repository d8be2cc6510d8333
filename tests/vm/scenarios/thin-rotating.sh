# shellcheck shell=sh
# Keeping a standby copy current with rotating thin snapshots: snapshot S1 and copy it; later
# snapshot S2 and send the changes since S1 (the difference of S1 and the origin in the pool)
# reading the data from S2, so the copy becomes S2 at one point in time; then remove S1. Two
# rounds, with writes and discards between and during them.
. "$VMTEST_LIB"
VG=trotate
MiB=1048576

step "thin origin; snapshot s1 and the standby copy of it"
make_vg $VG
thin_origin $VG 128M 20M 4
run lvcreate -y -Wy -Zy -L 32M -n standby $VG
run lvcreate -y -s -n s1 $VG/origin
run lvchange -ay -K $VG/s1
run dd if=/dev/$VG/s1 of=/dev/$VG/standby bs=1M conv=fsync status=none
write_every /dev/$VG/origin 0 $((3 * MiB)) 10 20000 R1
run blkdiscard -o $((4 * MiB)) -l $MiB /dev/$VG/origin
run sync

step "round 1: snapshot s2, send the changes since s1 read from s2, remove s1"
run lvcreate -y -s -n s2 $VG/origin
run lvchange -ay -K $VG/s2
write_every /dev/$VG/origin $MiB $((5 * MiB)) 6 4096 DURING1
run sync
run lvmsync --data-source /dev/$VG/s2 /dev/$VG/s1 /dev/$VG/standby
same_content /dev/$VG/standby /dev/$VG/s2
run lvremove -y $VG/s1
write_every /dev/$VG/origin $((2 * MiB)) $((7 * MiB)) 4 70000 R2
run blkdiscard -o $((12 * MiB)) -l $((2 * MiB)) /dev/$VG/origin
run sync

step "round 2: snapshot s3, send the changes since s2 read from s3, remove s2"
run lvcreate -y -s -n s3 $VG/origin
run lvchange -ay -K $VG/s3
write_at /dev/$VG/origin $((30 * MiB)) 8192 DURING2
run sync
run lvmsync --data-source /dev/$VG/s3 /dev/$VG/s2 /dev/$VG/standby
same_content /dev/$VG/standby /dev/$VG/s3
run lvremove -y $VG/s2
check_eq "snapshots left" "$(lvs --noheadings -o lv_name $VG | tr -d ' ' | grep '^s[0-9]')" "s3"
