#!/bin/sh
# Runs in the booted composefs root (Debian + systemd) of the boot tests, from
# cfsmount-boot-check.service: checks what setup-root made, prints "CFSBOOT PASS/FAIL" lines on
# the serial console, then powers the VM off. /etc/cfsmount-test-expect says "insecure" in the
# image booted with composefs=?HEX; otherwise a verified boot is expected.
say() { echo "CFSBOOT $*"; }
pass() { say "PASS $*"; }
fail() { say "FAIL $*"; }
check() { # name, command...
    n=$1
    shift
    if "$@" >/dev/null 2>&1; then pass "$n"; else fail "$n"; fi
}
mode=verified
[ -e /etc/cfsmount-test-expect ] && mode=$(cat /etc/cfsmount-test-expect)
say "booted system ($mode): $(cat /proc/cmdline)"

check "[$mode] PID 1 is systemd" test "$(cat /proc/1/comm)" = systemd
root_fs=$(findmnt -n -o FSTYPE /)
root_opts=$(findmnt -n -o OPTIONS /)
say "root: $root_fs $root_opts"
check "[$mode] / is an overlay" test "$root_fs" = overlay
case ",$root_opts," in
*,ro,*) pass "[$mode] / is read-only" ;;
*) fail "[$mode] / is not read-only: $root_opts" ;;
esac
case ",$root_opts," in
*,nosuid,* | *,nodev,*) fail "[$mode] / has nosuid/nodev: $root_opts" ;;
*) pass "[$mode] / allows setuid and devices" ;;
esac
case "$mode,$root_opts" in
verified,*verity=require*) pass "[verified] / has verity=require" ;;
insecure,*verity=require*) fail "[insecure] / has verity=require" ;;
insecure,*) pass "[insecure] / boots without verity=require" ;;
*) fail "[$mode] / lacks verity=require" ;;
esac
check "[$mode] /etc is an overlay" test "$(findmnt -n -o FSTYPE /etc)" = overlay
if echo "written at $(date)" >/etc/cfsmount-boot-write && grep -q written /etc/cfsmount-boot-write; then
    pass "[$mode] /etc is writable"
else
    fail "[$mode] /etc is not writable"
fi
# the deployment booted: composefs=HEX on the command line (VM 1 passes it to setup-root by file)
hex=$(sed -n 's/.*composefs=?\{0,1\}\([0-9a-f]\{64\}\).*/\1/p' /proc/cmdline)
if [ -n "$hex" ]; then
    check "[$mode] /etc writes land in the state directory" test -e "/sysroot/state/deploy/$hex/etc/upper/cfsmount-boot-write"
else
    check "[$mode] /etc writes land in a state directory" sh -c 'ls /sysroot/state/deploy/*/etc/upper/cfsmount-boot-write'
fi
check "[$mode] /var is bound from the physical root" test "$(findmnt -n -o FSTYPE /var)" = ext4
check "[$mode] the physical root is at /sysroot" test -d /sysroot/composefs/objects
# mount points and types only: the overlay's lowerdir= option string still names the temporary
# path it was built from (docs/boot.md), which no longer exists
visible=$(awk '{ for (i = 7; $i != "-"; i++); if ($(i + 1) == "erofs" || $5 ~ /\/\.(layer|boot)-/) print $5, $(i + 1) }' /proc/self/mountinfo)
if [ -n "$visible" ]; then
    fail "[$mode] a temporary or EROFS mount is visible: $visible"
else
    pass "[$mode] no EROFS or temporary lower mount visible in the booted system"
fi
ls -A /run/cfsmount 2>/dev/null | grep -q '^\.\(layer\|boot\)-' && fail "[$mode] temporary directories left in /run/cfsmount: $(ls -A /run/cfsmount)" \
    || pass "[$mode] no temporary directory left in /run/cfsmount"
check "[$mode] /usr/bin/su keeps its setuid bit" test -u /usr/bin/su
if [ "$mode" = verified ]; then
    # what the initramfs unit said (the runtime journal moves across switch-root with /run)
    say "journal: $(journalctl -b --no-pager -o cat 2>&1 | grep -m3 -i 'cfsmount\|composefs' | tr '\n' '|')"
fi
say "system state: $(systemctl is-system-running 2>/dev/null)"
say "DONE $mode"
systemctl --no-block poweroff
