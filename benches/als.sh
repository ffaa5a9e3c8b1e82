#!/usr/bin/env bash
# podman 4.3.1 with and without cfsmount's Additional Layer Store, side by side in one
# hyperfine run per question (ratios), on a real image: a Debian bookworm minbase root plus a
# second layer with 2000 files and whiteouts (benches/oci.sh builds it; gzip layers, 70 MB),
# served by Debian's docker-registry on 127.0.0.1.
#
#   pull      `podman pull` from the registry: podman downloads and extracts every layer,
#             vs. podman takes every layer from the ALS (the ALS already has the image)
#   add       `cfsmount als add` of the image into an empty store (layer import, overlay-form
#             layer images, mounts): the one-time cost the ALS moves out of the pull
#   run       `podman run --rm IMAGE true` on the pulled image (container start)
#   read      `podman run` reading every regular file of the image (page cache warm)
# Also printed: podman's graph root size after each pull (du), the store's size.
#
# Needs root, hyperfine, podman, runc, docker-registry, skopeo, umoci, mmdebstrap.
# Run it under the machine's mount lock: flock /tmp/cfsmount-root.lock bash benches/als.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "benches/als.sh: needs root (mounts)" >&2; exit 1; }
RUNS=${RUNS:-5}
W=${BENCH_DIR:-/var/tmp/cfsmount-bench-als}
DATA=${BENCH_DATA:-/var/tmp/cfsmount-bench-oci}
mkdir -p "$W"
BENCH_DIR=$DATA BENCH_DATA_ONLY=1 bash benches/oci.sh >/dev/null
cargo build --release --quiet
bin=$PWD/target/release/cfsmount
L=$DATA/layout

reg_pid=
cleanup() {
    for c in "$W"/plain.conf "$W"/als.conf; do
        [ -f "$c" ] && CONTAINERS_STORAGE_CONF=$c podman rmi -a -f >/dev/null 2>&1 || true
    done
    "$bin" als umount-all --force --store "$W/store" >/dev/null 2>&1 || true
    for m in $(findmnt -rn -o TARGET | grep "^$W/" | sort -r); do umount -l "$m" 2>/dev/null || true; done
    [ -n "$reg_pid" ] && kill "$reg_pid" 2>/dev/null && wait "$reg_pid" 2>/dev/null || true
}
trap cleanup EXIT
cleanup
rm -rf "$W/store" "$W/als" "$W/plain" "$W/withals" "$W/registry"
mkdir -p "$W/registry/data" "$W/als"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$W/registry/config.yml" <<EOF
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $W/registry/data}}
http: {addr: 127.0.0.1:$port}
EOF
docker-registry serve "$W/registry/config.yml" >"$W/registry/log" 2>&1 &
reg_pid=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
image=127.0.0.1:$port/bench/minbase:v1
skopeo copy --quiet --dest-tls-verify=false "oci:$L:v1" "docker://$image"

conf() { # NAME DIR [ALS]
    printf '[storage]\ndriver = "overlay"\ngraphroot = "%s/graph"\nrunroot = "%s/run"\n' "$2" "$2" >"$W/$1.conf"
    [ -z "${3:-}" ] || printf '[storage.options]\nadditionallayerstores = ["%s:ref"]\n' "$3" >>"$W/$1.conf"
}
conf plain "$W/plain"
conf als "$W/withals" "$W/als"
P="podman --runtime runc --cgroup-manager cgroupfs --events-backend file"
pull="$P pull -q --tls-verify=false $image"
rmi="$P rmi -a -f"

echo "== als add (empty store)"
hyperfine --runs "$RUNS" --export-markdown "$W/add.md" \
    --prepare "$bin als rm --root $W/als --ref $image --store $W/store >/dev/null 2>&1 || true; rm -rf $W/store" \
    -n "cfsmount als add" "$bin als add --root $W/als --ref $image oci:$L:v1 --store $W/store"
[ -n "$(findmnt -rn -o TARGET | grep "^$W/als/")" ] || "$bin" als add --root "$W/als" --ref "$image" "oci:$L:v1" --store "$W/store" >/dev/null

echo "== podman pull"
hyperfine --runs "$RUNS" --export-markdown "$W/pull.md" \
    --prepare "CONTAINERS_STORAGE_CONF=$W/plain.conf $rmi >/dev/null 2>&1; CONTAINERS_STORAGE_CONF=$W/als.conf $rmi >/dev/null 2>&1; sync" \
    -n "podman pull (download + extract)" "CONTAINERS_STORAGE_CONF=$W/plain.conf $pull" \
    -n "podman pull (cfsmount ALS)" "CONTAINERS_STORAGE_CONF=$W/als.conf $pull 2>/dev/null"
# hyperfine's --prepare removed the image from both graph roots before each run: pull it
# once more into each (untimed) for the sizes and the run benchmarks.
CONTAINERS_STORAGE_CONF=$W/plain.conf $pull >/dev/null
skipped=$(CONTAINERS_STORAGE_CONF=$W/als.conf $P --log-level=debug pull --tls-verify=false "$image" 2>&1 | grep -c "Skipping blob .* (already present)" || true)
echo "podman pull with the ALS: $skipped layer blobs skipped (taken from the store)"
echo "graph root after pull: $(du -sh "$W/plain/graph" | cut -f1) without ALS, $(du -sh "$W/withals/graph" | cut -f1) with ALS; store $(du -sh "$W/store" | cut -f1)"

run="run --rm --network none --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 $image"
echo "== podman run true"
hyperfine --runs "$RUNS" --warmup 1 --export-markdown "$W/run.md" \
    -n "podman run (extracted layers)" "CONTAINERS_STORAGE_CONF=$W/plain.conf $P $run true" \
    -n "podman run (cfsmount ALS)" "CONTAINERS_STORAGE_CONF=$W/als.conf $P $run true 2>/dev/null"
echo "== podman run: read every file"
readall="sh -c 'find / -xdev -type f -exec cat {} + >/dev/null'"
hyperfine --runs "$RUNS" --warmup 1 --export-markdown "$W/read.md" \
    -n "read all (extracted layers)" "CONTAINERS_STORAGE_CONF=$W/plain.conf $P $run $readall" \
    -n "read all (cfsmount ALS)" "CONTAINERS_STORAGE_CONF=$W/als.conf $P $run $readall 2>/dev/null"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
cat "$W"/add.md "$W"/pull.md "$W"/run.md "$W"/read.md
