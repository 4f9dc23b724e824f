#!/bin/sh
# The guest's init (PID 1 in the initramfs): load the modules the boot image
# lists, mount the app disk read-only, bring up the inter-VM link with IPv6
# link-local only (no duplicate-address detection on a point-to-point link),
# then become the agent. Every failure says "init: ..." on the console: the
# orchestrator reports the first such line when a processor does not boot.
# One mount process for the three: each busybox command is a fork and an
# exec, 6-25 ms under TCG (~17 ms less to the agent's start, 8 interleaved boots).
printf 'proc /proc proc defaults 0 0\nsys /sys sysfs defaults 0 0\ndev /dev devtmpfs defaults 0 0\n' > /fstab
mount -a -T /fstab || echo "init: cannot mount /proc, /sys or /dev"
# Transparent huge pages: the kernel turns them off below 512 MiB of RAM, but
# the agent's database tables (sized up front) fault in 2 MiB at a time with
# them instead of 4 KiB (see images/kernel/config.fragment).
t=/sys/kernel/mm/transparent_hugepage/enabled; [ -w $t ] && echo always > $t
while read m; do insmod /lib/modules/$m || echo "init: insmod $m failed"; done < /modules.list
for f in /proc/sys/net/ipv6/conf/default/accept_dad /proc/sys/net/ipv6/conf/all/accept_dad; do echo 0 > $f; done
n=0; while [ ! -b /dev/vda ] || [ ! -e /sys/class/net/eth0 ]; do n=$((n+1)); [ $n -gt 500 ] && break; usleep 10000; done
[ -b /dev/vda ] || echo "init: no app disk: /dev/vda did not appear"
# /app is in the boot image already.
mount -t ext4 -o ro /dev/vda /app || echo "init: cannot mount the app disk (/dev/vda): is the image corrupt?"
ip link set lo up
echo 0 > /proc/sys/net/ipv6/conf/eth0/accept_dad
ip link set eth0 up || echo "init: no link NIC (eth0)"
[ -x /app/hitless-agent ] || { echo "init: no agent on the app disk (/app/hitless-agent)"; poweroff -f; }
# The version's start arguments, one per line (a test image's flaw).
set --
if [ -f /app/agent.args ]; then while IFS= read -r a || [ -n "$a" ]; do set -- "$@" "$a"; done < /app/agent.args; fi
/app/hitless-agent --from-cmdline "$@"
echo "init: the agent exited (status $?)"
# The machine stays up, as an OS whose application died would: the
# orchestrator sees the agent gone and fences the machine itself.
while :; do sleep 3600; done
