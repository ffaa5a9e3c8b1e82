#!/usr/bin/env bash
# Benchmark (not a test): userspace fs-verity digest of a 1 GiB file,
# `cfsmount verity digest` (parallel leaf hashing) against `fsverity digest` (fsverity-utils,
# single-threaded), with hyperfine. Checks first that both print the identical line.
#
#   benches/fsverity.sh            # 1 GiB in /dev/shm (falls back to /tmp)
#   SIZE_MIB=4096 BENCH_DIR=/var/tmp RUNS=5 benches/fsverity.sh
#
# Needs: cargo, hyperfine, fsverity (Debian packages hyperfine, fsverity).
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MIB=${SIZE_MIB:-1024}
RUNS=${RUNS:-10}
DIR=${BENCH_DIR:-/dev/shm}
[ -d "$DIR" ] && [ -w "$DIR" ] || DIR=/tmp
for t in hyperfine fsverity; do
    command -v "$t" >/dev/null || { echo "benches/fsverity.sh: $t is not installed" >&2; exit 1; }
done

cargo build --release --bin cfsmount >&2
BIN=$PWD/target/release/cfsmount

F=$(mktemp "$DIR/cfsmount-bench-verity.XXXXXX")
trap 'rm -f "$F"' EXIT
echo "writing ${SIZE_MIB} MiB of random data to $F" >&2
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom >"$F"

ours=$("$BIN" verity digest "$F")
theirs=$(fsverity digest "$F")
echo "cfsmount: $ours"
echo "fsverity: $theirs"
if [ "$ours" != "$theirs" ]; then
    echo "benches/fsverity.sh: DIGESTS DIFFER" >&2
    exit 1
fi

echo "cores: $(nproc); load: $(cut -d' ' -f1-3 /proc/loadavg); file in $(df --output=fstype "$DIR" | tail -n1)"
hyperfine -N --warmup 2 --runs "$RUNS" \
    -n "fsverity digest" "fsverity digest $F" \
    -n "cfsmount verity digest" "$BIN verity digest $F"
