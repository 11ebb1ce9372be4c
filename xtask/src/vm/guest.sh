#!/bin/bash
# PID 1 of the test VM, after the initramfs switched to the host's root
# filesystem (read-only 9p under a tmpfs overlay). Mounts what a booted
# system has, reports the kernel and the doctor's verdicts, runs the root
# integration suite, prints its exit status and returns (panic=-1 and
# qemu -no-reboot turn that into a clean exit). The markers are read by
# `cargo xtask vm`. With `leakmon.init=systemd` on the kernel's command
# line, PID 1 goes to the shared root's systemd instead, whose boot runs
# the suite as a service (this script again, stage `systemd`), as on a
# compute host: the packaged unit's test needs a real systemd.
set -u
repo=$1 test_binary=$2 filter=${3:-} hold_text=${4:-} stage=${5:-boot}

if [ "$stage" = boot ]; then
    mount -t proc proc /proc
    mount -t sysfs sysfs /sys
    # Where systemd mounts it: the lockdown state is read there.
    mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
    mount -t devtmpfs devtmpfs /dev 2>/dev/null
    mkdir -p /dev/pts /dev/shm
    mount -t devpts devpts /dev/pts
    mount -t tmpfs tmpfs /dev/shm
    mount -t tmpfs tmpfs /run
    # /tmp stays the overlay's (a checkout may live there); scratch files go to
    # a real tmpfs, which has file handles (open_by_handle_at) where 9p has none.
    mount -t tmpfs tmpfs /var/tmp
    mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
    ip link set lo up
    hostname leakmon-vm

    echo "LEAKMON_VM_KERNEL=$(uname -r)"
    echo "LEAKMON_VM_DOCTOR_BEGIN"
    "$repo/target/debug/leakmon" doctor --json
    echo "LEAKMON_VM_DOCTOR_END"

    if grep -qw leakmon.init=systemd /proc/cmdline; then
        cat > /etc/systemd/system/leakmon-vm-suite.service <<EOF
[Unit]
Description=leakmon root integration tests
[Service]
Type=oneshot
StandardOutput=tty
StandardError=tty
TTYPath=/dev/console
ExecStart=/bin/bash /leakmon-vm-guest.sh '$repo' '$test_binary' '$filter' '$hold_text' systemd
EOF
        cat > /etc/systemd/system/leakmon-vm.target <<EOF
[Unit]
Description=leakmon VM run
Requires=leakmon-vm-suite.service
After=leakmon-vm-suite.service
AllowIsolate=yes
EOF
        # Its walk of the shared root (9p) took 110 s of a 130 s boot under
        # emulation; nothing leakmon's unit uses comes from it.
        ln -sf /dev/null /etc/systemd/system/systemd-tmpfiles-setup.service
        exec /lib/systemd/systemd --unit=leakmon-vm.target --show-status=0 --log-level=warning
    fi
fi
export TMPDIR=/var/tmp
ulimit -n 65536
export HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LEAKMON_REQUIRE_ROOT=1 RUST_BACKTRACE=1


if [ -n "$hold_text" ]; then
    # Under emulation: do-nothing programs hold every tracepoint leakmon uses
    # for the whole suite, so that the daemons the tests start and stop patch
    # no kernel text (static keys, static calls). Multi-threaded TCG has run
    # stale translations of text patched so, and the guest died on an int3.
    hold_log=/var/tmp/hold-text.log
    "$repo/target/debug/leakmon" bench-floor --hold-text 2>"$hold_log" &
    hold_pid=$!
    for _ in $(seq 600); do
        grep -q "floor attached" "$hold_log" && break
        kill -0 "$hold_pid" 2>/dev/null || break
        sleep 0.2
    done
    if grep -q "floor attached" "$hold_log"; then
        echo "LEAKMON_VM_HOLD=held"
    else
        echo "LEAKMON_VM_HOLD=not held: $(tail -n 1 "$hold_log")"
    fi
fi

if cd "$repo/tests"; then
    # shellcheck disable=SC2086 # the filter is words (each a test-name filter) or none
    "$test_binary" $filter
    echo "LEAKMON_VM_EXIT=$?"
else
    echo "LEAKMON_VM_EXIT=2"
fi
sync
[ "$stage" = systemd ] && exec systemctl poweroff --force --force
exec /bin/busybox poweroff -f
