#!/usr/bin/env bash
# Runs each cargo-fuzz target (fuzz/fuzz_targets: toc, estargz, dump, image, layer) briefly, seeded
# with the conformance inputs. Needs a nightly toolchain (cargo-fuzz builds with sanitizers);
# where none is installed it says so and exits 0: the in-tree mutation tests
# (tests/parser_mutation.rs, tests/inspect_roundtrip.rs) still run in tier 1. See README.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${FUZZ_SECONDS:-15}
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: SKIPPED: no nightly toolchain on this machine (cargo-fuzz needs one)"
    exit 0
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --quiet --locked cargo-fuzz
conf=${CFS_CONFORMANCE:-$PWD/../shared/conformance}
seed=$(mktemp -d); trap 'rm -rf "$seed"' EXIT
mkdir -p "$seed"/{toc,estargz,dump,image,layer}
cp "$conf"/composefs-json/special.json "$conf"/zstd-chunked-example-toc.json examples/hello/toc.json "$seed/toc/"
cp "$conf"/zstd-chunked-example-toc.json "$seed/estargz/"
cp "$conf"/composefs-dump/*.dump "$seed/dump/"
cargo build --quiet --release --bin cfsmount
target/release/cfsmount mkimage --from-toc examples/hello/toc.json "$seed/image/hello.img"
target/release/cfsmount mkimage --from-dump "$conf/composefs-dump/special.dump" "$seed/image/special.img"
# layer: the small (layer 2) blob of every real writer.
python3 -c 'import json,sys; d=json.load(open(sys.argv[1]+"/real-layers/layers.json"))
for w,v in d["writers"].items():
    for l in v["layers"]:
        if l["layer"] == 2: print(l["blob"])' "$conf" | while read -r b; do cp "$conf/real-layers/$b" "$seed/layer/$(basename "$(dirname "$b")")-$(basename "$b" | cut -c1-12)"; done
for t in toc estargz dump image layer; do
    echo "fuzz: $t for ${secs}s"
    (cd fuzz && cargo +nightly fuzz run --release "$t" "$seed/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=0 2>&1 | tail -n 2)
    # cargo fuzz exits non-zero on a crash; pipefail carries it out of the subshell.
done
echo "fuzz: all targets ran ${secs}s without a crash"
