# shellcheck shell=sh
# `lvmsync replicate` stopped after each of its steps (LVMSYNC_TEST_STOP_AFTER=snapshot, send,
# retire, retag: exit status 99, nothing cleaned up, as a crash there would leave it), with
# writes before and after the stop: the next run finishes the interrupted round, DEST equals
# the base it leaves, and exactly one snapshot is left. Also in the first round (no base yet).
# On a thin LV; replicate-crash-classic runs this with classic snapshots.
. "$VMTEST_LIB"
FLAVOR=${FLAVOR:-thin}
VG=rcrash$FLAVOR
MiB=1048576
DEST=/dev/$VG/standby

snaps() { lvs --noheadings -o lv_name,lv_tags $VG | awk '$1 ~ /-lvmsync-/ { print $1, $2 }'; }
base() { snaps | awk '$2 == "lvmsync-base:'"$DEST"'" { print $1 }'; }

stopped_at() {
  echo "+ LVMSYNC_TEST_STOP_AFTER=$1 lvmsync replicate $VG/origin $DEST" >&2
  LVMSYNC_TEST_STOP_AFTER=$1 timeout -k 5 "$CMD_TIMEOUT" lvmsync replicate $VG/origin $DEST
  check_eq "exit status stopped after $1" $? 99
  snaps >&2
}

settled() {
  run lvmsync replicate $VG/origin $DEST
  b=$(base)
  check_eq "snapshots after recovering from a stop after $1" "$(snaps)" "$b lvmsync-base:$DEST"
  same_content $DEST /dev/$VG/$b
}

step "$FLAVOR origin and a standby LV"
make_vg $VG
if [ "$FLAVOR" = thin ]; then
  thin_origin $VG 128M 20M 4
else
  patterned_lvs $VG 32M 3 origin
fi
patterned_lvs $VG 32M 60 standby

step "stopped after the first round's send"
stopped_at send
check_eq "a pending snapshot, no base" "$(snaps)" "origin-lvmsync-1 lvmsync-pending:$DEST"
settled first-send

n=0
for s in snapshot send retire retag; do
  n=$((n + 1))
  step "stopped after $s"
  write_every /dev/$VG/origin $((n * MiB)) $((5 * MiB)) 5 12000 B$n
  run sync
  stopped_at $s
  check_eq "snapshots left by the stop" "$(snaps | wc -l)" 2
  write_every /dev/$VG/origin $((n * MiB + 65536)) $((6 * MiB)) 4 5000 A$n
  run sync
  settled $s
done
