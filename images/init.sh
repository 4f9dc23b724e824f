#!/bin/sh
# The initramfs's /init, for Debian's packaged kernel only (the built kernel
# has every driver built in and mounts the app disk as its root itself): load
# the modules the devices need, mount the app disk read-only, and switch root
# to it, where the agent is init (guest-agent/src/init.rs: the mounts, the
# sysctls, the link NIC up, then the agent). Every failure says "init: ..." on
# the console: the orchestrator reports the first such line when a processor
# does not boot.
mount -t devtmpfs dev /dev || echo "init: cannot mount /dev"
while read m; do insmod /lib/modules/$m || echo "init: insmod $m failed"; done < /modules.list
n=0; while [ ! -b /dev/vda ]; do n=$((n+1)); [ $n -gt 500 ] && break; usleep 10000; done
[ -b /dev/vda ] || { echo "init: no app disk: /dev/vda did not appear"; poweroff -f; }
mount -t ext4 -o ro /dev/vda /app || { echo "init: cannot mount the app disk (/dev/vda): is the image corrupt?"; poweroff -f; }
[ -x /app/hitless-agent ] || { echo "init: no agent on the app disk (/hitless-agent)"; poweroff -f; }
umount /dev
exec switch_root /app /hitless-agent
echo "init: cannot switch root to the app disk"
poweroff -f
