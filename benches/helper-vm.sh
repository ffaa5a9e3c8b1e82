#!/usr/bin/env bash
# benches/helper.sh with VERITY=1 inside a throwaway qemu VM whose kernel has fs-verity (the
# test machines' kernel has none): the setuid helper mounting cs9 by `nobody` from its sealed
# copy and, side by side in the same hyperfine run, from the caller's own fs-verity file
# (no copy), with root's plain mount as the yardstick. Under TCG every figure is several
# times the host's; read the ratios between the rows, not the times.
#
# Needs what tier 3 installs (tests/vm/run-tier3.sh): a /boot kernel with CONFIG_FS_VERITY=y,
# qemu-system-x86, virtme-ng (vng); and hyperfine. Builds nothing: give it a release binary.
#
# OLD_CFSMOUNT=/path/to/another/cfsmount runs that binary side by side, as helper.sh does (an
# older helper takes the copy for the fs-verity image too).
#
# Usage (root; the VM lock of the test tiers):
#   flock /tmp/cfsmount-vm.lock benches/helper-vm.sh [target/release/cfsmount] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath -e "${1:-target/release/cfsmount}")
RUNS=${2:-10}
CONF=$(realpath -e "${CFS_CONFORMANCE:-$PWD/../shared/conformance}")
die() { echo "helper-vm.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (boots a VM that installs a setuid copy)"
command -v hyperfine >/dev/null || die "needs hyperfine"

. tests/vm/host-lib.sh
kver=$(verity_kernel) || die "no /boot kernel with CONFIG_FS_VERITY=y (tests/vm/run-tier3.sh installs one)"
VNG=$(find_vng) || die "no vng (tests/vm/run-tier3.sh installs virtme-ng)"

OUT=$(mktemp -d /tmp/cfs-helper-vm.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
strip -o "$OUT/cfsmount" "$BIN" 2>/dev/null || cp "$BIN" "$OUT/cfsmount"
OLD=
if [ -n "${OLD_CFSMOUNT:-}" ]; then
    strip -o "$OUT/old-cfsmount" "$OLD_CFSMOUNT" 2>/dev/null || cp "$OLD_CFSMOUNT" "$OUT/old-cfsmount" || die "no $OLD_CFSMOUNT"
    OLD=$OUT/old-cfsmount
fi
cat >"$OUT/inside.sh" <<EOF
#!/usr/bin/env bash
set -eu
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
for m in loop erofs overlay ext4; do modprobe \$m 2>/dev/null || true; done
V=/tmp/verity
mkdir -p \$V
truncate -s 512M /tmp/ext4.img
mkfs.ext4 -q -b 4096 -O verity,^has_journal /tmp/ext4.img
mount -o loop /tmp/ext4.img \$V
chmod 755 \$V
echo "# in the VM: kernel \$(uname -r), \$(nproc) vCPUs (qemu TCG, one host thread)"
HELPER_BENCH_DIR=\$V VERITY=1 OLD_CFSMOUNT=$OLD ORDER="${ORDER:-new old}" CFS_CONFORMANCE=$CONF bash $PWD/benches/helper.sh $OUT/cfsmount $RUNS
umount \$V
EOF
chmod +x "$OUT/inside.sh"
echo "# $(date -u +%FT%TZ) host $(uname -r), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); guest kernel $kver"
# -accel tcg,thread=single and no_timer_check: see tests/vm/boot/run-boot.sh (vm_once).
timeout 1800 "$VNG" -r "/boot/vmlinuz-$kver" --memory 2G --cpus 2 --disable-kvm --rwdir="$OUT" \
    --qemu-opts="-accel tcg,thread=single" --append "no_timer_check" \
    --exec "$OUT/inside.sh >$OUT/log 2>&1; echo \$? >$OUT/rc" >"$OUT/vng.log" 2>&1 || true
[ -s "$OUT/log" ] && cat "$OUT/log"
[ "$(cat "$OUT/rc" 2>/dev/null)" = 0 ] || { tail -n 20 "$OUT/vng.log" >&2; die "the run in the VM failed"; }
