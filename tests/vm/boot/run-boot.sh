#!/usr/bin/env bash
# Boot tests of `cfsmount setup-root` (issue 16), two qemu boots of a real Debian root laid out
# as composefs on a verity-enabled ext4 disk. Called by tests/vm/run-tier3.sh (which installed
# the backports kernel and qemu); usage: tests/vm/boot/run-boot.sh KERNEL-VERSION PATH/TO/cfsmount
#
#   1. mmdebstrap: Debian bookworm minbase + systemd-sysv, with a check service added
#      (boot-check.sh); cfsmount deploy-root lays it out (composefs/images, composefs/objects,
#      state/deploy) and mkfs.ext4 -b 4096 -O verity -d puts that on a disk image.
#   2. VM 1, busybox initramfs (init-busybox.sh): fs-verity enabled on every object and the image
#      (cfsmount verity enable), a verified deploy-root of /etc, the failure cases (tampered
#      image, tampered object, ...), then composefs=?HEX boots systemd unverified.
#   3. VM 2, dracut initramfs with packaging/dracut/90cfsmount: root=/dev/vda composefs=HEX,
#      systemd in the initramfs runs cfsmount-setup-root.service, switch-root, systemd in the
#      composefs root runs the check service, which powers off.
#   4. VM 3, the same boot with an initramfs-tools initramfs (packaging/initramfs-tools).
# Prints PASS/FAIL lines (and timings) on stdout; exits non-zero when anything failed.
# Everything used comes from Debian packages (installed here when missing); mmdebstrap fetches
# from the mirror that apt on this machine is configured with.
set -uo pipefail
HERE=$(dirname "$(realpath "$0")")
REPO=$(realpath "$HERE/../../..")
[ $# -eq 2 ] || { echo "usage: $0 KERNEL-VERSION PATH/TO/cfsmount" >&2; exit 2; }
KVER=$1
BIN=$(realpath -e "$2") || { echo "FAIL boot: no cfsmount binary at $2"; exit 1; }
START=$(date +%s)
export DEBIAN_FRONTEND=noninteractive
FAILED=0
pass() { echo "PASS boot: $*"; }
fail() { echo "FAIL boot: $*"; FAILED=1; }
log() { echo "boot: $*" >&2; }
die() { fail "$*"; exit 1; }
step_start=$START
step() { local t; t=$(date +%s); log "$1 ($((t - step_start)) s)"; TIMES+=("$1: $((t - step_start)) s"); step_start=$t; }
TIMES=()

# ---- packages ---------------------------------------------------------------------------------
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
apt_updated=
apt_install() {
    [ -n "$apt_updated" ] || { apt-get -o DPkg::Lock::Timeout=1800 update -qq || return 1; apt_updated=1; }
    apt-get -o DPkg::Lock::Timeout=1800 install -y -qq "$@" >/dev/null
}
for p in mmdebstrap cpio xz-utils e2fsprogs busybox-static qemu-system-x86 kmod binutils initramfs-tools; do
    have_pkg "$p" || { log "installing $p"; apt_install "$p" || die "installing $p failed"; }
done
# dracut from bookworm-backports (run-tier3.sh added that suite for the kernel)
if ! have_pkg dracut-core || ! dpkg-query -W -f='${Version}' dracut-core | grep -q bpo; then
    log "installing dracut-core from bookworm-backports"
    apt_install -t bookworm-backports dracut-core || die "installing dracut-core from bookworm-backports failed"
fi
[ -r "/boot/vmlinuz-$KVER" ] && [ -d "/lib/modules/$KVER" ] || die "no kernel $KVER in /boot"
step "packages"

W=$(mktemp -d /var/tmp/cfs-boot.XXXXXX) || die "mktemp"
# CFSMOUNT_BOOT_KEEP=1 keeps the work directory (logs, disk image) for a look afterwards.
if [ "${CFSMOUNT_BOOT_KEEP:-0}" = 1 ]; then log "keeping $W"; else trap 'rm -rf "$W"' EXIT; fi
strip -o "$W/cfsmount" "$BIN" 2>/dev/null || cp "$BIN" "$W/cfsmount"

# ---- 1. the Debian root on a verity-enabled ext4 ------------------------------------------------
mirror=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1 | awk '{ print $1 }')
[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" { print $2; exit }' /etc/apt/sources.list 2>/dev/null)
[ -n "$mirror" ] || die "no Debian mirror in the apt sources of this machine"
log "mmdebstrap bookworm minbase + systemd-sysv from $mirror"
# documentation and translations left out: a smaller tree to lay out under TCG
mmdebstrap --quiet --variant=minbase --include=systemd-sysv --mode=unshare --format=tar \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --aptopt='Acquire::Check-Valid-Until "false"' bookworm "$W/debian.tar" "deb $mirror bookworm main" \
    >"$W/mmdebstrap.log" 2>&1 || { tail -n 20 "$W/mmdebstrap.log" >&2; die "mmdebstrap failed"; }
step "mmdebstrap"
# The tree is laid out here, on a tmpfs (deploy-root --no-verity: the host kernel has no
# fs-verity); VM 1 then enables fs-verity on every object and the image with cfsmount, on the
# verity-enabled ext4, and runs a verified deploy-root of its own on a part of the tree. (A
# verified deploy-root of the whole root in the guest hashes it three times under TCG: 100-225 s.)
FS=$(mktemp -d /dev/shm/cfs-boot-fs.XXXXXX) || die "mktemp on /dev/shm"
if [ "${CFSMOUNT_BOOT_KEEP:-0}" = 1 ]; then trap 'rm -rf "$FS"' EXIT; else trap 'rm -rf "$W" "$FS"' EXIT; fi
T=$FS/tree
mkdir -p "$T" && tar -xpf "$W/debian.tar" --xattrs --xattrs-include='*' --numeric-owner -C "$T" || die "extracting the root"
rm -f "$W/debian.tar"
install -m 0755 "$HERE/boot-check.sh" "$T/usr/local/sbin/cfsmount-boot-check"
cat >"$T/etc/systemd/system/cfsmount-boot-check.service" <<'EOF'
[Unit]
Description=cfsmount boot test: check the composefs root, then power off
After=basic.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/cfsmount-boot-check
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
TTYReset=no
TTYVHangup=no

[Install]
WantedBy=multi-user.target
EOF
mkdir -p "$T/etc/systemd/system/multi-user.target.wants" "$T/sysroot"
ln -sf /etc/systemd/system/cfsmount-boot-check.service "$T/etc/systemd/system/multi-user.target.wants/"
ln -sf /dev/null "$T/etc/systemd/system/serial-getty@ttyS0.service"
ln -sf /dev/null "$T/etc/systemd/system/getty@tty1.service"
ln -sf /lib/systemd/system/multi-user.target "$T/etc/systemd/system/default.target"
echo cfsboot >"$T/etc/hostname"
arg=$("$W/cfsmount" deploy-root --from-dir "$T" "$FS/disk" --no-verity) || die "deploy-root of the Debian root"
GOOD=${arg#composefs=?}
[ ${#GOOD} = 64 ] && pass "deploy-root lays out the Debian root: $arg" || die "deploy-root printed $arg"
# /var of the deployment starts as the tree's /var (the documented recipe); /etc of the tree
# is the part VM 1 deploys with fs-verity itself.
cp -a "$T/var/." "$FS/disk/state/deploy/$GOOD/var/" && mkdir "$FS/disk/part" && cp -a "$T/etc" "$FS/disk/part/" \
    || die "copying /var and /etc"
rm -rf "$T"
truncate -s 3G "$W/disk.img"
mkfs.ext4 -q -b 4096 -O verity -L cfsroot -d "$FS/disk" "$W/disk.img" || die "mkfs.ext4 -O verity -d"
rm -rf "$FS"
step "root tree, layout and disk"

# ---- 2. the busybox initramfs ---------------------------------------------------------------------
B=$W/bb
mkdir -p "$B"/{bin,mod,lib64,proc,sys,dev,run,tmp,sysroot}
cp /bin/busybox "$B/bin/busybox" && cp "$W/cfsmount" "$B/bin/cfsmount" || die "copying busybox/cfsmount"
install -m 0755 "$HERE/init-busybox.sh" "$B/init"
mknod -m 600 "$B/dev/console" c 5 1 || die "mknod console"
for lib in $(ldd "$W/cfsmount" | grep -o '/[^ ]*'); do
    mkdir -p "$B$(dirname "$lib")" && cp -L "$lib" "$B$lib" || die "copying $lib"
done
: >"$B/modules.order"
for m in virtio_blk ext4 erofs overlay loop; do
    modprobe -S "$KVER" --show-depends "$m" | awk '$1 == "insmod" { print $2 }'
done | awk '!seen[$0]++' | while read -r ko; do
    n=$(basename "$ko" .xz)
    case "$ko" in *.xz) xz -dc "$ko" >"$B/mod/$n" ;; *) cp "$ko" "$B/mod/$n" ;; esac || exit 1
    echo "$n" >>"$B/modules.order"
done || die "collecting kernel modules"
(cd "$B" && find . | cpio --quiet -o -H newc) >"$W/initrd-busybox.img" || die "cpio"
step "busybox initramfs"

# ---- 3. the dracut initramfs ----------------------------------------------------------------------
D=$W/dracut
cp -a /usr/lib/dracut "$D" && cp -r "$REPO/packaging/dracut/90cfsmount" "$D/modules.d/" || die "dracut module dir"
mkdir -p "$W/dracut.conf.d"
CFSMOUNT_BIN=$W/cfsmount dracutbasedir=$D dracut --quiet --force --no-hostonly --no-hostonly-cmdline \
    --conf /dev/null --confdir "$W/dracut.conf.d" --kver "$KVER" --no-compress --no-early-microcode \
    --modules "base systemd systemd-initrd systemd-journald dracut-systemd kernel-modules rootfs-block udev-rules fs-lib cfsmount" \
    --add-drivers "virtio_blk ext4" "$W/initrd-dracut.img" >"$W/dracut.log" 2>&1 \
    || { tail -n 20 "$W/dracut.log" >&2; die "dracut failed"; }
lsinitrd "$W/initrd-dracut.img" >"$W/initrd-dracut.list" 2>/dev/null
if grep -q 'systemd/system/initrd-root-fs.target.wants/cfsmount-setup-root.service' "$W/initrd-dracut.list" \
    && grep -q 'usr/lib/systemd/system/cfsmount-setup-root.service' "$W/initrd-dracut.list" \
    && grep -q 'usr/bin/cfsmount$' "$W/initrd-dracut.list"; then
    pass "dracut module 90cfsmount installs cfsmount and its unit, wanted by initrd-root-fs.target"
else
    fail "dracut initramfs lacks cfsmount or cfsmount-setup-root.service in initrd-root-fs.target.wants"
fi
for m in erofs overlay loop; do
    grep -Eq "/$m\.ko(\.xz|\.zst)?\$" "$W/initrd-dracut.list" && pass "dracut initramfs has the $m module" \
        || fail "dracut initramfs lacks $m.ko"
done
step "dracut initramfs"

# ---- initramfs-tools (Debian's default): the hook and script build into an initramfs ----------------
I=$W/initramfs-tools
mkdir -p "$I/hooks" "$I/scripts/local-bottom" "$I/conf.d"
cp "$REPO/packaging/initramfs-tools/hooks/cfsmount" "$I/hooks/" \
    && cp "$REPO/packaging/initramfs-tools/scripts/local-bottom/cfsmount" "$I/scripts/local-bottom/" \
    && printf 'MODULES=list\nCOMPRESS=zstd\n' >"$I/initramfs.conf" && printf 'virtio_blk\next4\n' >"$I/modules" \
    || die "initramfs-tools config dir"
if CFSMOUNT_BIN=$W/cfsmount mkinitramfs -d "$I" -o "$W/initrd-itools.img" "$KVER" >"$W/mkinitramfs.log" 2>&1; then
    lsinitramfs "$W/initrd-itools.img" >"$W/initrd-itools.list" 2>/dev/null
    if grep -qx 'usr/bin/cfsmount' "$W/initrd-itools.list" && grep -qx 'scripts/local-bottom/cfsmount' "$W/initrd-itools.list" \
        && grep -Eq '/erofs\.ko(\.xz|\.zst)?$' "$W/initrd-itools.list" && grep -Eq '/overlay\.ko(\.xz|\.zst)?$' "$W/initrd-itools.list"; then
        pass "initramfs-tools hook puts cfsmount, the local-bottom script, erofs and overlay in the initramfs"
    else
        fail "initramfs-tools initramfs lacks cfsmount, its script or the modules"
    fi
else
    fail "mkinitramfs with the cfsmount hook failed: $(tail -n 3 "$W/mkinitramfs.log" 2>/dev/null | tr '\n' ' ')"
fi
step "initramfs-tools initramfs"

# ---- the VMs ---------------------------------------------------------------------------------------
SKIP_MODULES=kvm,kvm_amd,kvm_intel,iTCO_wdt,iTCO_vendor_support,lpc_ich,ahci,libahci,libata,sr_mod,cdrom
SKIP_MODULES+=,i2c_i801,i2c_smbus,pcspkr,evdev,joydev,sg,serio_raw,button,psmouse,qemu_fw_cfg,bochs,drm
# The guest kernel under TCG, two ways it failed before any of our code ran, both avoided here:
# - thread=single (one host thread runs both vCPUs): with qemu 7.2's default multi-threaded TCG
#   the kernel sometimes panicked while it patched its own code (RIP sched_clock_cpu+0x9, "Fatal
#   exception in interrupt"; 1 of 46 bare boots here, and once in CI; 0 of 200 single-threaded);
# - no_timer_check: on a loaded host the kernel's IO-APIC timer check can miss its window and
#   panic ("IO-APIC + timer doesn't work!"; 3 of 100 bare boots at load 5-10; 0 of 100 with it).
# If the kernel still panics before it started the first program (the oops names the task
# "swapper/N": nothing of the initramfs ran and the disk was not touched), the boot is made once
# more and that is said on stderr (an emulator failure, not a test result). docs/verity.md "Testing".
early_panic() { # console log: the kernel panicked, and the last oops before it was in "swapper/N"
    grep -aq 'Kernel panic' "$1" && sed -n '1,/Kernel panic/p' "$1" | grep -a ' Comm: ' | tail -n 1 | grep -q ' Comm: swapper/'
}
vm_once() { # log, initrd, kernel command line
    timeout 900 qemu-system-x86_64 -machine q35 -accel tcg,thread=single -cpu max -smp 2 -m 2G -nodefaults -display none -no-reboot \
        -serial "file:$1" -kernel "/boot/vmlinuz-$KVER" -initrd "$2" -append "$3 no_timer_check" \
        -drive "file=$W/disk.img,if=virtio,format=raw,cache=unsafe" >"$1.qemu" 2>&1
}
vm() { # log, initrd, kernel command line
    local r
    vm_once "$@"
    r=$?
    if early_panic "$1"; then
        log "the guest kernel panicked before it started the first program: $(grep -a -m1 -o 'Kernel panic.*' "$1" | tr -d '\r'); booting once more"
        grep -a -m1 'RIP:' "$1" | sed 's/^/boot:     /' >&2
        mv "$1" "$1.panic"
        vm_once "$@"
        r=$?
    fi
    return $r
}
results() { # log tag: CFSBOOT PASS/FAIL lines as PASS/FAIL lines; the others to stderr
    grep -a -o 'CFSBOOT .*' "$1" | tr -d '\r' | while IFS= read -r l; do
        case "$l" in
        "CFSBOOT PASS "*) echo "PASS boot ($2): ${l#CFSBOOT PASS }" ;;
        "CFSBOOT FAIL "*) echo "FAIL boot ($2): ${l#CFSBOOT FAIL }" ;;
        *) echo "boot:   ${l#CFSBOOT }" >&2 ;;
        esac
    done
}
# verified_boot NAME INITRD: boots root=/dev/vda rw composefs=$GOOD; the check service must report
verified_boot() {
    local name=$1 initrd=$2 r unit_line
    log "$name: root=/dev/vda composefs=$GOOD"
    vm "$W/$name.log" "$initrd" "root=/dev/vda rw composefs=$GOOD $CMDLINE_COMMON systemd.show_status=false rd.udev.log_level=3"
    r=$?
    results "$W/$name.log" "$name" | tee "$W/$name.results"
    grep -q '^FAIL' "$W/$name.results" && FAILED=1
    grep -aq 'CFSBOOT DONE verified' "$W/$name.log" || {
        fail "$name did not reach the check in the composefs root (qemu exit $r)"
        tail -n 40 "$W/$name.log" | sed 's/^/    /' >&2
    }
    unit_line="cfsmount: setup-root: composefs image $GOOD mounted at /sysroot (verity=require"
    [ "$name" = dracut ] || unit_line="cfsmount: setup-root: composefs image $GOOD mounted at /root (verity=require"
    if grep -aqF "$unit_line" "$W/$name.log"; then
        pass "($name) setup-root ran in the initramfs: $(grep -a -o "cfsmount: setup-root: composefs image.*" "$W/$name.log" | head -n1 | tr -d '\r')"
    else
        fail "($name) no setup-root line on the console"
    fi
    step "VM $name"
}
CMDLINE_COMMON="console=ttyS0 quiet loglevel=3 panic=-1 modprobe.blacklist=$SKIP_MODULES"

log "VM 1: busybox initramfs (layout, failure cases, composefs=?HEX boot)"
vm "$W/vm1.log" "$W/initrd-busybox.img" "$CMDLINE_COMMON cfsboot.good=$GOOD"
r1=$?
results "$W/vm1.log" busybox | tee "$W/vm1.results"
grep -q '^FAIL' "$W/vm1.results" && FAILED=1
grep -aq 'CFSBOOT DONE insecure' "$W/vm1.log" || { fail "VM 1 did not finish (qemu exit $r1)"; tail -n 30 "$W/vm1.log" | sed 's/^/    /' >&2; }
step "VM 1 busybox"
grep -aq "CFSBOOT HEX_GOOD=$GOOD" "$W/vm1.log" || die "VM 1 did not seal the deployed image"

verified_boot dracut "$W/initrd-dracut.img"
[ -s "$W/initrd-itools.img" ] && verified_boot initramfs-tools "$W/initrd-itools.img"

for t in "${TIMES[@]}"; do log "time: $t"; done
log "took $(($(date +%s) - START)) s"
exit $FAILED
