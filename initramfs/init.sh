#!/bin/sh
# mkspawn's default spawn init (busybox sh).  It prints one machine-readable ready line
# on the console, runs the recipe's [initramfs] command, then reboots: with QEMU's
# -no-reboot (or a multikernel host watching the spawn) that ends the run.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mkdir -p /proc /sys /dev /tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
# /dev/console in the archive was enough to start; devtmpfs brings the rest.
mount -t devtmpfs devtmpfs /dev 2>/dev/null

# The hand-off a multikernel host copied into our /chosen (docs/handover-binding.md);
# absent on any other host, and then nothing is said.
ht=/sys/firmware/devicetree/base/chosen/multikernel,host-tree/mkspawn
if [ -r "$ht/instance/instance-name" ]; then
    MKSPAWN_INSTANCE=$(tr -d '\000' < "$ht/instance/instance-name")
    MKSPAWN_ID=$((0x$(od -An -tx1 "$ht/instance/id" | tr -d ' \n')))  # u32, big-endian
    MKSPAWN_PROFILE=$(tr -d '\000' < "$ht/abi/profile")
    export MKSPAWN_INSTANCE MKSPAWN_ID MKSPAWN_PROFILE
    echo "MKSPAWN-HANDOVER instance=$MKSPAWN_INSTANCE id=$MKSPAWN_ID profile=$MKSPAWN_PROFILE"
fi

cpus=$(grep -c '^processor' /proc/cpuinfo)
mem_kb=$(sed -n 's/^MemTotal: *\([0-9]*\) kB$/\1/p' /proc/meminfo)
echo "MKSPAWN-READY release=$(uname -r) cpus=$cpus mem_kb=$mem_kb"

rc=0
if [ -s /etc/mkspawn/command ]; then
    sh -c "$(cat /etc/mkspawn/command)"
    rc=$?
fi
echo "MKSPAWN-DONE rc=$rc"
# -f: there is no service manager to stop; the kernel reboots at once.
reboot -f
