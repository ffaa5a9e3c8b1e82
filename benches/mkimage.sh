#!/bin/sh
# Benchmark of `cfsmount mkimage`: wall time (hyperfine) and peak RSS (/usr/bin/time -v) on
#   1. the cs9-x86_64-developer TOC JSON of the conformance data (64k entries, ~19 MB), and
#   2. a generated zstd:chunked TOC with 500k entries;
# plus the same trees as dumpfiles (--from-dump) and, when MKCOMPOSEFS points at a reference
# `mkcomposefs` binary, the reference on the same dumpfiles (with its default threads).
# The peak RSS covers cfsmount and its sandboxed child (time -v reports the larger of the two).
#
# Usage: benches/mkimage.sh            (needs: cargo, hyperfine, GNU time, gzip, awk)
#        MKCOMPOSEFS=/path/to/mkcomposefs RUNS=10 benches/mkimage.sh
#
# Side by side (SIDE_BY_SIDE=1, needs python3): only the cs9-developer builds, in ROUNDS (10)
# interleaved rounds of one hyperfine invocation each (RUNS_SHORT, 5, runs per tool; the tools'
# order rotates from round to round), over
# cfsmount --from-dump and --from-toc, the same with BASELINE=/path/to/an/older/cfsmount, and
# MKCOMPOSEFS --from-file on the dumpfile; so a change of machine speed during the run hits
# every tool alike. Prints mean ± sd, median, fastest run, mean CPU (user+sys, children included) and
# peak RSS (one run under GNU time, before the rounds) per tool, and the ratios to the reference.
#        SIDE_BY_SIDE=1 BASELINE=/tmp/cfsmount-main MKCOMPOSEFS=/path/to/mkcomposefs benches/mkimage.sh
# Outputs go to OUTDIR (default /var/tmp: a disk filesystem, as images are mounted from one).
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
conf=${CFS_CONFORMANCE:-$here/../shared/conformance}
runs=${RUNS:-10}
work=$(mktemp -d "${TMPDIR:-/tmp}/cfsmount-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM

for tool in hyperfine gzip awk; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 1; }
done
[ -x /usr/bin/time ] || { echo "missing GNU time (/usr/bin/time): apt-get install time" >&2; exit 1; }
[ -f "$conf/composefs-json/cs9-x86_64-developer.json.gz" ] || { echo "conformance data missing: $conf" >&2; exit 1; }

(cd "$here" && cargo build --release --quiet)
bin=$here/target/release/cfsmount

gzip -dc "$conf/composefs-json/cs9-x86_64-developer.json.gz" > "$work/cs9.json"

if [ -n "${SIDE_BY_SIDE:-}" ]; then
    command -v python3 >/dev/null || { echo "missing tool: python3" >&2; exit 1; }
    rounds=${ROUNDS:-10}
    per=${RUNS_SHORT:-5}
    out=$(mktemp -d "${OUTDIR:-/var/tmp}/cfsmount-bench-out.XXXXXX")
    trap 'rm -rf "$work" "$out"' EXIT INT TERM
    # The dumpfile as benches/compare.sh makes it (object names without their `.file` suffix).
    gzip -dc "$conf/composefs-dump/cs9-x86_64-developer.dump.gz" |
        sed -E 's#( [0-9a-f]{2}/[0-9a-f]{62})\.file #\1 #' > "$work/cs9.dump"
    # Each run writes a new file: the previous run's output is removed before it, untimed (as
    # benches/compare.sh does), so no tool's time includes deleting the last 10 MB image.
    set -- --prepare "rm -f $out/dump.img" -n "cfsmount dump" "$bin mkimage --from-dump $work/cs9.dump $out/dump.img" \
        --prepare "rm -f $out/toc.img" -n "cfsmount toc" "$bin mkimage --from-toc $work/cs9.json $out/toc.img"
    if [ -n "${BASELINE:-}" ]; then
        set -- "$@" --prepare "rm -f $out/dump-base.img" -n "baseline dump" "$BASELINE mkimage --from-dump $work/cs9.dump $out/dump-base.img" \
            --prepare "rm -f $out/toc-base.img" -n "baseline toc" "$BASELINE mkimage --from-toc $work/cs9.json $out/toc-base.img"
    fi
    if [ -n "${MKCOMPOSEFS:-}" ]; then
        set -- "$@" --prepare "rm -f $out/dump-ref.img" -n "reference dump" "$MKCOMPOSEFS --from-file $work/cs9.dump $out/dump-ref.img"
    fi
    # Peak RSS: one run of each command under GNU time (--prepare P -n NAME COMMAND), first,
    # in the order given (which is also the order of the table).
    i=0
    for a in "$@"; do
        case $i in
            1) p=$a ;;
            3) n=$a ;;
            4) $p; /usr/bin/time -f %M -o "$work/rss.$n" $a >/dev/null 2>&1; echo "$n" >>"$work/names" ;;
        esac
        i=$(((i + 1) % 5))
    done
    r=0
    while [ "$r" -le "$rounds" ]; do     # round 0 warms up and is discarded
        hyperfine -N --style none --runs "$per" --export-json "$work/round$r.json" "$@" >/dev/null 2>&1
        # The order rotates by one tool per round, so that no tool always runs in the same place.
        set -- "$@" "$1" "$2" "$3" "$4" "$5"
        shift 5
        r=$((r + 1))
    done
    for f in toc dump; do
        for other in "$out/$f-base.img" "$out/$f-ref.img"; do
            [ -f "$other" ] || continue
            cmp -s "$out/$f.img" "$other" && echo "$f: $(basename "$other") identical" || echo "$f: $(basename "$other") DIFFERS"
        done
    done
    python3 - "$work" "$rounds" <<'PYEOF'
import json, statistics, sys
d, rounds = sys.argv[1], int(sys.argv[2])
names = open(f"{d}/names").read().splitlines()
times, cpu = {n: [] for n in names}, {n: [] for n in names}
for r in range(1, rounds + 1):
    for res in json.load(open(f"{d}/round{r}.json"))["results"]:
        n = res["command"]
        times[n].extend(res["times"])
        cpu[n].extend([res["user"] + res["system"]] * len(res["times"]))
rss = {n: int(open(f"{d}/rss.{n}").read().split()[-1]) / 1024 for n in names}
ref = next((n for n in names if n.startswith("reference")), None)
print(f"{'tool':16} {'runs':>4} {'mean ms':>9} {'sd':>6} {'median':>7} {'fastest':>8} {'CPU ms':>7} {'RSS MB':>7}  vs reference (mean / median / fastest / CPU)")
for n in names:
    t, c = times[n], cpu[n]
    m, sd, md, lo, cp = (statistics.mean(t) * 1e3, statistics.stdev(t) * 1e3, statistics.median(t) * 1e3,
                         min(t) * 1e3, statistics.mean(c) * 1e3)
    vs = ""
    if ref and n != ref:
        rt = times[ref]
        vs = (f"{statistics.mean(rt) / statistics.mean(t):.2f}x / {statistics.median(rt) / statistics.median(t):.2f}x / "
              f"{min(rt) / min(t):.2f}x / {statistics.mean(cpu[ref]) / statistics.mean(c):.2f}x")
    print(f"{n:16} {len(t):4d} {m:9.1f} {sd:6.1f} {md:7.1f} {lo:8.1f} {cp:7.1f} {rss[n]:7.1f}  {vs}")
PYEOF
    exit 0
fi

# 500k entries: 1000 directories of 499 regular files each (content digests, xattrs on some,
# a symlink per directory), in tar order as containers/storage writes them.
awk 'BEGIN {
    srand(1);
    printf "{\"version\":1,\"entries\":[\n";
    n = 0; first = 1;
    for (d = 0; d < 1000; d++) {
        printf "%s{\"type\":\"dir\",\"name\":\"usr/share/d%04d/\",\"mode\":493,\"uid\":0,\"gid\":0,\"modtime\":\"2024-01-02T03:04:05Z\"}\n", (first ? "" : ","), d;
        first = 0; n++;
        printf ",{\"type\":\"symlink\",\"name\":\"usr/share/d%04d/link\",\"linkName\":\"f0000\",\"mode\":511,\"modtime\":\"2024-01-02T03:04:05Z\"}\n", d; n++;
        for (f = 0; f < 498; f++) {
            h = "";
            for (i = 0; i < 8; i++) h = h sprintf("%08x", int(rand() * 4294967295));
            x = (f % 10 == 0) ? ",\"xattrs\":{\"user.tag\":\"dmFsdWU=\"}" : "";
            printf ",{\"type\":\"reg\",\"name\":\"usr/share/d%04d/f%04d\",\"mode\":420,\"size\":%d,\"uid\":0,\"gid\":0,\"modtime\":\"2024-01-02T03:04:05Z\",\"accesstime\":\"0001-01-01T00:00:00Z\",\"changetime\":\"0001-01-01T00:00:00Z\",\"digest\":\"sha256:%s\",\"offset\":%d,\"endOffset\":%d%s}\n", d, f, 100 + f * 37, h, n * 512, n * 512 + 300, x;
            n++;
        }
    }
    printf "]}\n";
}' > "$work/500k.json"

"$bin" mkimage --from-toc "$work/cs9.json" "$work/cs9.img"
"$bin" mkimage --from-toc "$work/500k.json" "$work/500k.img"
"$bin" inspect "$work/cs9.img" > "$work/cs9.dump"
"$bin" inspect "$work/500k.img" > "$work/500k.dump"
entries_500k=$(grep -c '"name"' "$work/500k.json")

size_of() { wc -c < "$1" | tr -d ' '; }

# peak RSS in KiB of a command (max over the process and its waited-for children)
peak_rss() {
    /usr/bin/time -v "$@" 2>"$work/time.txt" >/dev/null
    awk -F: '/Maximum resident set size/ { gsub(/ /, "", $2); print $2 }' "$work/time.txt"
}

# mean wall time in seconds
wall() {
    hyperfine --style none --warmup 1 --runs "$runs" --export-json "$work/h.json" "$1" >/dev/null 2>&1
    awk -F: '/"mean"/ { gsub(/[ ,]/, "", $2); printf "%.3f", $2; exit }' "$work/h.json"
}
cpu() {
    awk -F: '/"user"/ { gsub(/[ ,]/, "", $2); u = $2 } /"system"/ { gsub(/[ ,]/, "", $2); s = $2 } END { printf "%.3f", u + s }' "$work/h.json"
}

printf '%-34s %12s %10s %10s %12s %8s\n' case input_bytes wall_s cpu_s peak_rss_MB rss/in
row() {
    name=$1; input=$2; shift 2
    w=$(wall "$*")
    c=$(cpu)
    r=$(peak_rss "$@")
    in=$(size_of "$input")
    awk -v n="$name" -v i="$in" -v w="$w" -v c="$c" -v r="$r" \
        'BEGIN { printf "%-34s %12d %10s %10s %12.1f %8.2f\n", n, i, w, c, r / 1024, (r * 1024) / i }'
}

row "cs9-developer toc (64k)" "$work/cs9.json" "$bin" mkimage --from-toc "$work/cs9.json" "$work/out.img"
row "generated toc ($entries_500k)" "$work/500k.json" "$bin" mkimage --from-toc "$work/500k.json" "$work/out.img"
row "cs9-developer dump" "$work/cs9.dump" "$bin" mkimage --from-dump "$work/cs9.dump" "$work/out.img"
row "generated dump" "$work/500k.dump" "$bin" mkimage --from-dump "$work/500k.dump" "$work/out.img"
if [ -n "${MKCOMPOSEFS:-}" ]; then
    row "reference mkcomposefs cs9 dump" "$work/cs9.dump" "$MKCOMPOSEFS" --from-file "$work/cs9.dump" "$work/ref.img"
    row "reference mkcomposefs gen. dump" "$work/500k.dump" "$MKCOMPOSEFS" --from-file "$work/500k.dump" "$work/ref.img"
    cmp -s "$work/out.img" "$work/ref.img" && echo "generated tree: cfsmount and reference images are identical" \
        || echo "generated tree: images DIFFER from the reference"
fi
