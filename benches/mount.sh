#!/usr/bin/env bash
# Mount benchmarks (root): latency from exec to mounted, and a full-tree walk through the mount.
#   - cfsmount mount of the cs9-x86_64-developer image: file-backed EROFS and --force-loop
#   - cfsmount mount --toc of the same tree given as a TOC (sandboxed build on the fly + mount)
#   - `find` + lstat of every entry through the mount (warm and cold page cache)
#   - optionally the reference helper for comparison: REF_MOUNT_COMPOSEFS=/path/to/mount.composefs
# Needs: root, hyperfine, the conformance data (CFS_CONFORMANCE, default ../shared/conformance).
# Usage: benches/mount.sh [RUNS]   (results as markdown tables in $OUT, default target/bench-mount)
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "benches/mount.sh needs root (it mounts)" >&2; exit 1; }
command -v hyperfine >/dev/null || { echo "hyperfine is not installed" >&2; exit 1; }
CONF="${CFS_CONFORMANCE:-$PWD/../shared/conformance}"
[ -d "$CONF/composefs-dump" ] || { echo "conformance data not found at $CONF (set CFS_CONFORMANCE)" >&2; exit 1; }
RUNS="${1:-30}"
OUT="${OUT:-$PWD/target/bench-mount}"
mkdir -p "$OUT"

cargo build --release --bin cfsmount >&2
B="${CARGO_TARGET_DIR:-$PWD/target}/release/cfsmount"

W=$(mktemp -d /var/tmp/cfsmount-bench.XXXXXX)
export CFSMOUNT_STATE_DIR="$W/state"
mkdir -m 700 "$W/state" "$W/objs" "$W/mnt" "$W/mnt-ref"
cleanup() {
    "$B" umount "$W/mnt" 2>/dev/null || true
    umount "$W/mnt-ref" 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT

gzip -dc "$CONF/composefs-dump/cs9-x86_64-developer.dump.gz" > "$W/dev.dump"
gzip -dc "$CONF/composefs-json/cs9-x86_64-developer.json.gz" > "$W/dev.toc.json"
"$B" mkimage --from-dump "$W/dev.dump" "$W/dev.img"
echo "image: $(stat -c %s "$W/dev.img") bytes, $(wc -l < "$W/dev.dump") entries" >&2

M="$W/mnt"
unmount_cfs="$B umount $M >/dev/null 2>&1 || true"
# Latencies are a few ms: measure without a shell (-N); the unmount between runs is a script.
printf '#!/bin/sh\n%s umount %s >/dev/null 2>&1 || true\n' "$B" "$M" > "$W/unmount-cfs"
printf '#!/bin/sh\numount %s >/dev/null 2>&1 || true\n' "$W/mnt-ref" > "$W/unmount-ref"
chmod +x "$W/unmount-cfs" "$W/unmount-ref"

hyperfine -N --runs "$RUNS" --warmup 3 --export-markdown "$OUT/latency.md" \
    --prepare "$W/unmount-cfs" -n "cfsmount mount (file-backed EROFS)" \
    "$B mount $W/dev.img $M --basedir $W/objs" \
    --prepare "$W/unmount-cfs" -n "cfsmount mount --force-loop" \
    "$B mount $W/dev.img $M --basedir $W/objs --force-loop" \
    ${REF_MOUNT_COMPOSEFS:+--prepare "$W/unmount-ref" -n "reference mount.composefs" "$REF_MOUNT_COMPOSEFS -o basedir=$W/objs $W/dev.img $W/mnt-ref"}
$B umount "$M" >/dev/null 2>&1 || true
umount "$W/mnt-ref" >/dev/null 2>&1 || true

hyperfine --runs "$(( RUNS < 10 ? RUNS : 10 ))" --warmup 1 --export-markdown "$OUT/toc.md" \
    --prepare "$unmount_cfs" -n "cfsmount mount --toc (sandboxed build + mount)" \
    "$B mount --toc $W/dev.toc.json $M --basedir $W/objs"
$B umount "$M" >/dev/null 2>&1 || true

# Tree walk: every entry is lstat()ed (%s/%m/%u need it).
"$B" mount "$W/dev.img" "$M" --basedir "$W/objs"
echo "entries through the mount: $(find "$M" | wc -l)" >&2
walk="find $M -printf '%s %m %u %g\n'"
args=(--runs "$(( RUNS < 10 ? RUNS : 10 ))" --warmup 1)
if [ -n "${REF_MOUNT_COMPOSEFS:-}" ]; then
    "$REF_MOUNT_COMPOSEFS" -o "basedir=$W/objs" "$W/dev.img" "$W/mnt-ref"
fi
hyperfine "${args[@]}" --export-markdown "$OUT/walk.md" \
    --prepare true -n "find+lstat, warm (cfsmount)" "$walk >/dev/null" \
    --prepare "sync; echo 3 > /proc/sys/vm/drop_caches" -n "find+lstat, cold caches (cfsmount)" "$walk >/dev/null" \
    ${REF_MOUNT_COMPOSEFS:+--prepare true -n "find+lstat, warm (reference)" "find $W/mnt-ref -printf '%s %m %u %g\n' >/dev/null"}
$B umount "$M"
umount "$W/mnt-ref" >/dev/null 2>&1 || true

cat "$OUT/latency.md" "$OUT/toc.md" "$OUT/walk.md"
