#!/bin/bash
# Benchmark of `cfsmount mkimage --from-layer` against the paths a user has today, on the same
# machine in the same run (hyperfine), on a real distribution root filesystem layer:
#   - Debian bookworm minbase (`mmdebstrap --variant=minbase --format=tar`), turned into OCI
#     images by `skopeo copy tarball:` as gzip, zstd and zstd:chunked;
#   - cfsmount: import of each blob into a fresh content store (objects + image, synced);
#   - `zstd -dc | tar -x` of the layer, then the reference `mkcomposefs --digest-store` on the
#     tree (it copies and fsyncs each object);
#   - `umoci unpack` of the gzip image (extraction only, no image, no sync);
#   - the physical limit: `zstd -dc BLOB | sha256sum` (and `gzip -dc` for the gzip blob).
# The same paths again with the store and tree on tmpfs (/dev/shm: file creation is cheap there).
# Then peak RSS (GNU time; the larger of cfsmount and its sandboxed reader) on a ~1 GB layer
# (the minbase tree plus 6 files of 128 MiB of random bytes), with its time and its limit.
#
# Usage: MKCOMPOSEFS=/opt/peers/composefs/bin/mkcomposefs benches/layer.sh
#        RUNS=5 WORK=/var/tmp/cfsmount-bench-layer benches/layer.sh
# Needs root (mmdebstrap, umoci unpack), network access to Debian's archive for the first run
# (the tar is kept in $WORK), and: mmdebstrap skopeo umoci zstd hyperfine GNU time.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
runs=${RUNS:-5}
work=${WORK:-/var/tmp/cfsmount-bench-layer}
mkcomposefs=${MKCOMPOSEFS:-/opt/peers/composefs/bin/mkcomposefs}
for t in mmdebstrap skopeo umoci zstd hyperfine; do
    command -v "$t" >/dev/null || { echo "missing tool: $t" >&2; exit 1; }
done
[ -x /usr/bin/time ] || { echo "missing GNU time" >&2; exit 1; }
[ -x "$mkcomposefs" ] || { echo "reference mkcomposefs not found at $mkcomposefs (set MKCOMPOSEFS)" >&2; exit 1; }
mkdir -p "$work"
cd "$work"

(cd "$here" && cargo build --release --quiet)
bin=$here/target/release/cfsmount

if [ ! -f minbase.tar ]; then
    mmdebstrap --variant=minbase --mode=unshare --format=tar bookworm minbase.tar.tmp
    mv minbase.tar.tmp minbase.tar
fi
for f in gzip zstd zstd:chunked; do
    d=oci-${f/:/-}
    [ -d "$d" ] || skopeo --insecure-policy copy -q --dest-compress-format "$f" tarball:minbase.tar "oci:$d:v1"
done
blob_of() { ls -S "$1"/blobs/sha256/* | head -1; }
gz=$(blob_of oci-gzip); zs=$(blob_of oci-zstd); zc=$(blob_of oci-zstd-chunked)

echo "== machine: $(nproc) cores, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"
echo "== minbase: $(stat -c %s minbase.tar) bytes tar, $(tar -tf minbase.tar | wc -l) members;" \
     "gzip $(stat -c %s "$gz"), zstd $(stat -c %s "$zs"), zstd:chunked $(stat -c %s "$zc") bytes"

clean='rm -rf store img tree cfsimg bundle; sync -f .'
hyperfine --runs "$runs" --warmup 1 --prepare "$clean" --export-markdown layer.md \
    -n "limit: zstd -dc | sha256sum" "zstd -dc $zs | sha256sum" \
    -n "limit: gzip -dc | sha256sum" "gzip -dc $gz | sha256sum" \
    -n "cfsmount --from-layer zstd" "$bin mkimage --from-layer $zs img --objects store 2>/dev/null" \
    -n "cfsmount --from-layer zstd:chunked" "$bin mkimage --from-layer $zc img --objects store 2>/dev/null" \
    -n "cfsmount --from-layer gzip" "$bin mkimage --from-layer $gz img --objects store 2>/dev/null" \
    -n "tar -x + mkcomposefs --digest-store" \
       "mkdir tree && zstd -dc $zs | tar -x --numeric-owner --xattrs --xattrs-include='*' -C tree && $mkcomposefs --digest-store=store tree cfsimg" \
    -n "umoci unpack (gzip)" "umoci unpack --image oci-gzip:v1 bundle >/dev/null"
eval "$clean"

# The same on tmpfs (/dev/shm), where creating a file is cheap: what is left is the CPU side.
shm=$(mktemp -d /dev/shm/cfsmount-bench.XXXXXX)
sclean="rm -rf $shm/store $shm/img $shm/tree $shm/cfsimg"
hyperfine --runs "$runs" --warmup 1 --prepare "$sclean" --export-markdown layer-tmpfs.md \
    -n "tmpfs: limit: zstd -dc | sha256sum" "zstd -dc $zs | sha256sum" \
    -n "tmpfs: cfsmount --from-layer zstd" "$bin mkimage --from-layer $zs $shm/img --objects $shm/store 2>/dev/null" \
    -n "tmpfs: cfsmount --from-layer zstd:chunked" "$bin mkimage --from-layer $zc $shm/img --objects $shm/store 2>/dev/null" \
    -n "tmpfs: tar -x + mkcomposefs --digest-store" \
       "mkdir $shm/tree && zstd -dc $zs | tar -x --numeric-owner --xattrs --xattrs-include='*' -C $shm/tree && $mkcomposefs --digest-store=$shm/store $shm/tree $shm/cfsimg"
rm -rf "$shm"

# ~1 GB layer: peak RSS must not grow with content size.
if [ ! -f big.tar ]; then
    rm -rf bigtree && mkdir bigtree && tar -xf minbase.tar -C bigtree
    for i in 1 2 3 4 5 6; do head -c $((128 << 20)) /dev/urandom > "bigtree/big$i.bin"; done
    tar --numeric-owner --xattrs -C bigtree -cf big.tar . && rm -rf bigtree
fi
[ -f big.tar.zst ] || zstd -q -T0 big.tar -o big.tar.zst
echo "== big layer: $(stat -c %s big.tar) bytes tar, zstd $(stat -c %s big.tar.zst) bytes"
eval "$clean"
/usr/bin/time -f "cfsmount --from-layer 1 GB zstd: %e s wall, peak RSS %M KiB" \
    "$bin" mkimage --from-layer big.tar.zst img --objects store 2>&1 | grep -v '^cfsmount:'
eval "$clean"
/usr/bin/time -f "limit (zstd -dc | sha256sum), 1 GB: %e s wall" sh -c "zstd -dc big.tar.zst | sha256sum >/dev/null"
eval "$clean"
echo "== results also in $work/layer.md"
