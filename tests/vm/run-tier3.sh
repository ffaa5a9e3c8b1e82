#!/usr/bin/env bash
# Tier 3: fs-verity tests inside a throwaway qemu VM whose (stock Debian backports) kernel has
# CONFIG_FS_VERITY=y, then the boot tests (tests/vm/boot/run-boot.sh: a Debian root booted as
# composefs by setup-root, two more VMs). Usage: tests/vm/run-tier3.sh PATH/TO/cfsmount
#
# Installs what it needs if missing (backports kernel, qemu-system-x86, busybox-static,
# virtme-ng), boots ONE VM with `vng --disable-kvm`, runs tests/vm/inside.sh there and prints
# its PASS/FAIL lines, then a closing line `tier3: N passed, N failed`. Exits non-zero if any
# test failed, the VM did not boot, or qemu cannot run here (it says why).
set -uo pipefail

die() { echo "tier3: $*" >&2; echo "tier3: 0 passed, 1 failed"; exit 1; }
log() { echo "tier3: $*" >&2; }

[ $# -eq 1 ] || die "usage: $0 PATH/TO/cfsmount"
BIN=$(realpath -e "$1" 2>/dev/null) || die "cfsmount binary not found: $1"
[ -x "$BIN" ] || die "not executable: $BIN"
HERE=$(dirname "$(realpath "$0")")
[ "$(id -u)" = 0 ] || die "needs root (installs packages; the VM runs as root)"
START=$(date +%s)
export DEBIAN_FRONTEND=noninteractive

# ---- what the VM needs on the host --------------------------------------------------------

# verity_kernel, find_vng
. "$HERE/host-lib.sh"

apt_updated=
apt_install() { # packages...
    [ -n "$apt_updated" ] || { apt-get update -qq || return 1; apt_updated=1; }
    apt-get install -y -qq "$@" >/dev/null
}

have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# A bookworm-backports source derived from the first URIs: line of debian.sources (no host name
# is written here; whatever mirror the machine already uses serves backports too).
add_backports() {
    local src=/etc/apt/sources.list.d/debian.sources dst=/etc/apt/sources.list.d/cfsmount-backports.sources uri
    grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/ && return 0
    [ -r "$src" ] || { log "no $src to derive a backports source from"; return 1; }
    uri=$(sed -n 's/^URIs:[[:space:]]*//p' "$src" | head -n1 | awk '{ print $1 }')
    [ -n "$uri" ] || { log "no URIs: line in $src"; return 1; }
    log "adding bookworm-backports from $uri"
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$uri" >"$dst"
    apt_updated=
}

KVER=$(verity_kernel)
if [ -z "$KVER" ]; then
    log "no kernel with CONFIG_FS_VERITY=y in /boot: installing linux-image-amd64 from bookworm-backports"
    add_backports || die "cannot add bookworm-backports"
    apt_install -t bookworm-backports linux-image-amd64 || die "installing the backports kernel failed"
    KVER=$(verity_kernel) || true
    [ -n "$KVER" ] || die "installed a kernel but none in /boot has CONFIG_FS_VERITY=y"
fi
for p in qemu-system-x86 busybox-static e2fsprogs fsverity kmod util-linux; do
    have_pkg "$p" || { log "installing $p"; apt_install "$p" || die "installing $p failed"; }
done

VNG=$(find_vng) || {
    log "installing virtme-ng (pip)"
    python3 -m pip install -q virtme-ng >/dev/null 2>&1 || python3 -m pip install -q --break-system-packages virtme-ng >/dev/null \
        || die "pip install virtme-ng failed"
    command -v pyenv >/dev/null && pyenv rehash 2>/dev/null
    VNG=$(find_vng) || die "virtme-ng installed but no vng command found"
}

# qemu must at least start here (TCG; KVM is not used, see docs/kernel-test-tiers.md).
QEMU_ERR=$(echo quit | timeout 60 qemu-system-x86_64 -machine q35 -accel tcg -display none -nodefaults \
    -monitor stdio 2>&1 >/dev/null) || die "qemu-system-x86_64 cannot run on this machine: ${QEMU_ERR:-exit $?}"

# ---- run the VM ---------------------------------------------------------------------------

OUT=$(mktemp -d /tmp/cfs-tier3.XXXXXX) || die "mktemp failed"
trap 'rm -rf "$OUT"' EXIT
# Freeze the binary and the scripts: the tree may be rebuilt while the VM runs.
# Without debug info (a debug build is mostly that): the guest reads it at ~2 MB/s under TCG.
{ strip -o "$OUT/cfsmount" "$BIN" 2>/dev/null || cp "$BIN" "$OUT/cfsmount"; } \
    && cp "$HERE/inside.sh" "$OUT/inside.sh" \
    && cp -r "$HERE/../../examples/oci-hello/oci" "$OUT/oci-hello" || die "copying into $OUT failed"
chmod +x "$OUT/cfsmount" "$OUT/inside.sh"
# A real zstd:chunked layer blob (skopeo 1.22.2, layer 2 of the real-layers data) for the
# --from-layer --enable-verity test; skipped there when the data is missing.
CONF=${CFS_CONFORMANCE:-$HERE/../../../shared/conformance}
cp "$CONF/real-layers/writers/skopeo-1.22.2-zstd-chunked/oci/blobs/sha256/79c63d87d3c1c32755d76dec9aa6c81da0d28f8c98552fa6c079be274b11d2a4" \
    "$OUT/layer.blob" 2>/dev/null || true

# Under TCG most of the boot is udev loading (decompressing) modules for emulated hardware the
# tests never use; keep those from loading. (loop, ext4, erofs, overlay, sha256 stay allowed.)
SKIP_MODULES=kvm,kvm_amd,kvm_intel,iTCO_wdt,iTCO_vendor_support,lpc_ich,powernow_k8,ahci,libahci,libata
SKIP_MODULES+=,sr_mod,cdrom,i2c_i801,i2c_smbus,pcspkr,evdev,joydev,sg,serio_raw,button,psmouse,i6300esb
SKIP_MODULES+=,qemu_fw_cfg,crct10dif_pclmul,crc32_pclmul,ghash_clmulni_intel,sha512_ssse3,sha1_ssse3
SKIP_MODULES+=,aesni_intel,gf128mul,crypto_simd,cryptd,intel_rapl_msr,intel_rapl_common,rapl,bochs

log "booting /boot/vmlinuz-$KVER under TCG (vng $("$VNG" --version 2>/dev/null | head -n1))"
# -accel tcg,thread=single and no_timer_check: see the vm_once() note in boot/run-boot.sh (two
# ways the guest kernel under TCG failed to boot on this machine); a kernel panic before the first
# program started is retried once there and here, and said on stderr.
boot_vm() {
    timeout 600 "$VNG" -r "/boot/vmlinuz-$KVER" --memory 2G --cpus 2 --disable-kvm --rwdir="$OUT" \
        --qemu-opts="-accel tcg,thread=single" \
        --append "modprobe.blacklist=$SKIP_MODULES no_timer_check" \
        --exec "$OUT/inside.sh $OUT >$OUT/log 2>&1; echo \$? >$OUT/rc" \
        >"$OUT/vng.log" 2>&1
}
boot_vm
vrc=$?
if [ ! -s "$OUT/log" ] && grep -aq 'Kernel panic' "$OUT/vng.log" \
    && sed -n '1,/Kernel panic/p' "$OUT/vng.log" | grep -a ' Comm: ' | tail -n 1 | grep -q ' Comm: swapper/'; then
    log "the guest kernel panicked before it started the first program: $(grep -a -m1 -o 'Kernel panic.*' "$OUT/vng.log" | tr -d '\r'); booting once more"
    grep -a -m1 'RIP:' "$OUT/vng.log" | sed 's/^/tier3:     /' >&2
    boot_vm
    vrc=$?
fi

if [ -s "$OUT/log" ]; then
    cat "$OUT/log"
fi
pass=$(grep -c '^PASS ' "$OUT/log" 2>/dev/null); pass=${pass:-0}
fail=$(grep -c '^FAIL ' "$OUT/log" 2>/dev/null); fail=${fail:-0}
if [ ! -s "$OUT/rc" ]; then
    echo "FAIL vm: the VM did not boot or inside.sh did not finish (vng exit $vrc); vng output:"
    tail -n 40 "$OUT/vng.log" | sed 's/^/    /'
    fail=$((fail + 1))
elif [ "$(cat "$OUT/rc")" != 0 ] && [ "$fail" -eq 0 ]; then
    echo "FAIL inside.sh: exited $(cat "$OUT/rc") without reporting a failure"
    fail=$((fail + 1))
fi
[ $((pass + fail)) -gt 0 ] || { echo "FAIL vm: no test results"; fail=1; }

# ---- boot tests: setup-root in real initramfs boots (two more VMs, tests/vm/boot/) ----------------
bash "$HERE/boot/run-boot.sh" "$KVER" "$BIN" >"$OUT/boot.log"
brc=$?
cat "$OUT/boot.log"
bpass=$(grep -c '^PASS ' "$OUT/boot.log"); bfail=$(grep -c '^FAIL ' "$OUT/boot.log")
pass=$((pass + bpass)); fail=$((fail + bfail))
if [ "$brc" != 0 ] && [ "$bfail" -eq 0 ]; then
    echo "FAIL boot: run-boot.sh exited $brc without reporting a failure"
    fail=$((fail + 1))
fi

log "took $(( $(date +%s) - START )) s (kernel $KVER)"
echo "tier3: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
