#!/usr/bin/env bash
# Import + mount of a real multi-layer OCI image, side by side in one hyperfine run:
#   cfsmount      `oci import` into an empty store + `oci mount` + `umount`
#   umoci         `umoci unpack` (extracts every layer, applies whiteouts)
#   tar+mkcfs     `tar -x` of each layer with its whiteouts applied, then the reference
#                 `mkcomposefs --digest-store` on the result and `mount.composefs` + umount
# The image: a Debian bookworm minbase root (mmdebstrap, one layer, via `skopeo copy tarball:`)
# plus a second layer that adds files and deletes others (whiteouts of whole directories and of
# files), assembled by umoci (gzip layers). Also the same image as zstd:chunked (skopeo).
# Needs root, hyperfine, mmdebstrap, skopeo, umoci; peers by path (optional):
#   MKCOMPOSEFS=/opt/peers/composefs/bin/mkcomposefs MOUNT_COMPOSEFS=/opt/peers/composefs/bin/mount.composefs
# Every command ends with its data on disk: cfsmount syncs the store itself (one syncfs per
# published layer/image), the others get a final `sync` (before the mount for mkcomposefs).
# Data is built once into $BENCH_DIR (default /var/tmp/cfsmount-bench-oci) and reused
# (BENCH_DATA_ONLY=1 builds it and stops: that part needs no mount lock).
# Run it under the machine's mount lock: flock /tmp/cfsmount-root.lock bash benches/oci.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "benches/oci.sh: needs root (mounts)" >&2; exit 1; }
BENCH_DIR=${BENCH_DIR:-/var/tmp/cfsmount-bench-oci}
RUNS=${RUNS:-10}
MKCOMPOSEFS=${MKCOMPOSEFS:-/opt/peers/composefs/bin/mkcomposefs}
MOUNT_COMPOSEFS=${MOUNT_COMPOSEFS:-/opt/peers/composefs/bin/mount.composefs}
mkdir -p "$BENCH_DIR"
cargo build --release --quiet
bin=$PWD/target/release/cfsmount

# ---- data (once) ------------------------------------------------------------------------------
L=$BENCH_DIR/layout
if [ ! -f "$L/index.json" ]; then
    rm -rf "$L" "$BENCH_DIR/work"
    mkdir -p "$BENCH_DIR/work"
    w=$BENCH_DIR/work
    mmdebstrap --variant=minbase --mode=unshare --format=tar bookworm "$w/minbase.tar"
    skopeo --insecure-policy copy "tarball:$w/minbase.tar" "oci:$L:base"
    # Layer 2: add a tree of files, delete /usr/share/doc/* (whiteouts), /usr/share/locale
    # (whiteout of a directory), make /var/cache/apt opaque and put one file back in it.
    t=$w/t2
    mkdir -p "$t/opt/added" "$t/usr/share/doc" "$t/usr/share" "$t/var/cache/apt"
    for i in $(seq 1 2000); do head -c $((i * 37 % 9000 + 1)) /dev/urandom > "$t/opt/added/f$i"; done
    tar -tf "$w/minbase.tar" | sed -n 's|^\./usr/share/doc/\([^/]*\)/$|\1|p' | sort -u |
        while read -r d; do : > "$t/usr/share/doc/.wh.$d"; done
    : > "$t/usr/share/.wh.locale"
    : > "$t/var/cache/apt/.wh..wh..opq"
    echo "fresh cache" > "$t/var/cache/apt/README"
    tar --format=posix --numeric-owner -C "$t" -cf "$w/layer2.tar" .
    umoci tag --image "$L:base" v1
    umoci raw add-layer --image "$L:v1" "$w/layer2.tar"
    skopeo --insecure-policy copy --dest-compress-format zstd:chunked "oci:$L:v1" "oci:$BENCH_DIR/layout-zstd-chunked:v1"
fi

[ "${BENCH_DATA_ONLY:-}" = 1 ] && { echo "data ready in $BENCH_DIR"; exit 0; }

# ---- the tar -x + mkcomposefs pipeline --------------------------------------------------------
cat > "$BENCH_DIR/tar-mkcomposefs.sh" <<'EOF'
#!/usr/bin/env bash
# Extract each layer of oci:$1:v1 with GNU tar, applying its whiteouts, then mkcomposefs + mount.
set -euo pipefail
L=$1 out=$2 mk=$3 mnt_composefs=$4
rm -rf "$out"; mkdir -p "$out/root" "$out/objects" "$out/mnt"
m=$(python3 -c 'import json,sys;i=json.load(open(sys.argv[1]+"/index.json"));print([d for d in i["manifests"] if d.get("annotations",{}).get("org.opencontainers.image.ref.name")=="v1"][0]["digest"][7:])' "$L")
for d in $(python3 -c 'import json,sys;print(" ".join(l["digest"][7:] for l in json.load(open(sys.argv[1]))["layers"]))' "$L/blobs/sha256/$m"); do
    blob=$L/blobs/sha256/$d
    # OCI order: this layer's whiteouts act on the layers below, then its files are extracted.
    tar -tf "$blob" | { grep -E '(^|/)\.wh\.' || true; } | while IFS= read -r wh; do
        wh=${wh#./} dir=$(dirname "$wh") name=$(basename "$wh")
        if [ "$name" = .wh..wh..opq ]; then
            [ -d "$out/root/$dir" ] && find "$out/root/$dir" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
        else
            rm -rf "${out:?}/root/$dir/${name#.wh.}"
        fi
    done
    tar -xpf "$blob" -C "$out/root" --numeric-owner --xattrs --xattrs-include='*' --exclude='.wh.*'
done
"$mk" --digest-store="$out/objects" "$out/root" "$out/image.cfs"
sync
"$mnt_composefs" "$out/image.cfs" "$out/mnt" -o basedir="$out/objects"
umount "$out/mnt"
EOF
chmod +x "$BENCH_DIR/tar-mkcomposefs.sh"

# ---- one run ----------------------------------------------------------------------------------
S=$BENCH_DIR/store M=$BENCH_DIR/mnt B=$BENCH_DIR/bundle T=$BENCH_DIR/tarcfs
mkdir -p "$M"
echo "== $(date -u +%FT%TZ) $(uname -r), $(nproc) cores; image: $(du -sh "$L/blobs" | cut -f1) of blobs; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
cmds=(
    -n "cfsmount import+mount (gzip)" --prepare "rm -rf $S; sync" "$bin oci mount oci:$L:v1 $M --store $S && $bin umount $M"
    -n "cfsmount import+mount (zstd:chunked)" --prepare "rm -rf $S; sync" "$bin oci mount oci:$BENCH_DIR/layout-zstd-chunked:v1 $M --store $S && $bin umount $M"
    -n "umoci unpack + sync (gzip)" --prepare "rm -rf $B; sync" "umoci unpack --image $L:v1 $B >/dev/null && sync"
)
if [ -x "$MKCOMPOSEFS" ] && [ -x "$MOUNT_COMPOSEFS" ]; then
    cmds+=(-n "tar -x per layer + mkcomposefs + sync + mount.composefs (gzip)" --prepare "rm -rf $T; sync"
           "$BENCH_DIR/tar-mkcomposefs.sh $L $T $MKCOMPOSEFS $MOUNT_COMPOSEFS")
fi
hyperfine --runs "$RUNS" --export-markdown "$BENCH_DIR/result.md" "${cmds[@]}"
echo "== peak RSS (KiB), one run each"
rm -rf "$S"; /usr/bin/time -f "cfsmount oci import (gzip): %M KiB, %e s" "$bin" oci import "oci:$L:v1" --store "$S" >/dev/null
rm -rf "$B"; /usr/bin/time -f "umoci unpack: %M KiB, %e s" umoci unpack --image "$L:v1" "$B" >/dev/null
echo "== load average: $(cut -d' ' -f1-3 /proc/loadavg)"
rm -rf "$S" "$B" "$T"
cat "$BENCH_DIR/result.md"
