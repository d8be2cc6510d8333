# shellcheck shell=sh
# Keeping a standby copy current with rotating classic snapshots: snapshot S1 and copy it; later
# snapshot S2 and send the changes since S1 reading the data from S2 (--data-source), so the
# copy becomes S2 at one point in time while the origin keeps changing; then remove S1; S2 is
# the base of the next round. Two rounds, with writes going on during each sync.
. "$VMTEST_LIB"
VG=rotate
MiB=1048576

step "origin; snapshot s1 and the standby copy of it"
make_vg $VG
patterned_lvs $VG 32M 3 origin
run lvcreate -y -Wy -Zy -L 32M -n standby $VG
run lvcreate -y -s -c 8k -L 16M -n s1 $VG/origin
run dd if=/dev/$VG/s1 of=/dev/$VG/standby bs=1M conv=fsync status=none
write_every /dev/$VG/origin 0 $((3 * MiB)) 10 20000 R1
run sync

step "round 1: snapshot s2, send the changes since s1 read from s2, remove s1"
run lvcreate -y -s -c 8k -L 16M -n s2 $VG/origin
write_every /dev/$VG/origin $MiB $((5 * MiB)) 6 4096 DURING1
run sync
run lvmsync --data-source /dev/$VG/s2 /dev/$VG/s1 /dev/$VG/standby
same_content /dev/$VG/standby /dev/$VG/s2
run lvremove -y $VG/s1
write_every /dev/$VG/origin $((2 * MiB)) $((7 * MiB)) 4 70000 R2
run sync

step "round 2: snapshot s3, send the changes since s2 read from s3, remove s2"
run lvcreate -y -s -c 8k -L 16M -n s3 $VG/origin
write_at /dev/$VG/origin $((30 * MiB)) 8192 DURING2
run sync
run lvmsync --data-source /dev/$VG/s3 /dev/$VG/s2 /dev/$VG/standby
same_content /dev/$VG/standby /dev/$VG/s3
run lvremove -y $VG/s2
check_eq "snapshots left" "$(lvs --noheadings -o lv_name $VG | tr -d ' ' | grep '^s[0-9]')" "s3"
