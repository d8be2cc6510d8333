#!/bin/sh
# /init of the LVM test VM (busybox ash, PID 1): mount the kernel filesystems,
# load the device-mapper and virtio modules, then hand over to the test payload
# appended per run (/vmtest/runner.sh), and power off whatever happens.
export PATH=/usr/local/bin:/sbin:/usr/sbin:/bin:/usr/bin
export LVM_SUPPRESS_FD_WARNINGS=1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /run/lock/lvm /run/lvm /tmp /out
KVER=$(cat /etc/kernel-version)
while read -r m; do
  insmod "/lib/modules/$KVER/$m.ko" || echo "VMTEST-WARN insmod $m failed" > /dev/console
done < "/lib/modules/$KVER/load.order"
if [ -x /vmtest/runner.sh ]; then
  /vmtest/runner.sh
  echo "VMTEST-EXIT rc=$?" > /dev/console
else
  echo "VMTEST-EXIT no /vmtest/runner.sh in the initramfs" > /dev/console
fi
sync
poweroff -f
sleep 5
exit 1 # init exiting panics the kernel; with panic=-1 and -no-reboot qemu exits
