#!/bin/sh
# Benchmark of the drop-in personalities against the reference tools, side by side in one run:
#   1. mkcomposefs --from-file on the cs9-x86_64-developer dumpfile (64k entries, 8.7 MB);
#   2. the same through stdin and stdout (`--from-file - -`, how containers/storage calls it);
#   3. composefs-info dump and composefs-dump of that image;
#   4. mkcomposefs of a directory (DIR, default /usr/share/doc), digests included.
# Prints hyperfine's table (ratios) and the peak RSS of one run of each (GNU time). The images of
# both tools are compared byte for byte first.
#
# Usage: REF=/path/to/reference/bindir benches/dropin.sh   (needs: cargo, hyperfine, GNU time)
#        REF=... DIR=/usr RUNS=3 benches/dropin.sh
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
conf=${CFS_CONFORMANCE:-$here/../shared/conformance}
runs=${RUNS:-10}
dir=${DIR:-/usr/share/doc}
ref=${REF:?set REF to a directory holding the reference mkcomposefs, composefs-info, composefs-dump}
work=$(mktemp -d "${TMPDIR:-/tmp}/cfsmount-bench-dropin.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
command -v hyperfine >/dev/null || { echo "missing tool: hyperfine" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "missing GNU time (/usr/bin/time)" >&2; exit 1; }

(cd "$here" && cargo build --release --quiet)
mkdir "$work/bin"
for t in mkcomposefs composefs-info composefs-dump; do ln -s "$here/target/release/cfsmount" "$work/bin/$t"; done
cf=$work/bin
gzip -dc "$conf/composefs-dump/cs9-x86_64-developer.dump.gz" >"$work/cs9.dump"

"$ref/mkcomposefs" --from-file "$work/cs9.dump" "$work/ref.img"
"$cf/mkcomposefs" --from-file "$work/cs9.dump" "$work/cf.img"
cmp "$work/ref.img" "$work/cf.img"
"$ref/mkcomposefs" "$dir" "$work/ref-dir.img"
"$cf/mkcomposefs" "$dir" "$work/cf-dir.img"
cmp "$work/ref-dir.img" "$work/cf-dir.img"
echo "images identical (dumpfile and $dir)"

echo "== load before: $(cat /proc/loadavg)"
hyperfine -N -w 1 -r "$runs" --output=null \
    -n "reference mkcomposefs --from-file" "$ref/mkcomposefs --from-file $work/cs9.dump $work/o1.img" \
    -n "cfsmount mkcomposefs --from-file" "$cf/mkcomposefs --from-file $work/cs9.dump $work/o2.img"
hyperfine -w 1 -r "$runs" \
    -n "reference --from-file - -" "$ref/mkcomposefs --from-file - - <$work/cs9.dump >$work/o3.img" \
    -n "cfsmount --from-file - -" "$cf/mkcomposefs --from-file - - <$work/cs9.dump >$work/o4.img"
hyperfine -N -w 1 -r "$runs" --output=null \
    -n "reference composefs-info dump" "$ref/composefs-info dump $work/ref.img" \
    -n "cfsmount composefs-info dump" "$cf/composefs-info dump $work/ref.img" \
    -n "reference composefs-dump" "$ref/composefs-dump $work/ref.img $work/d1.img" \
    -n "cfsmount composefs-dump" "$cf/composefs-dump $work/ref.img $work/d2.img"
hyperfine -N -w 1 -r "$runs" --output=null \
    -n "reference mkcomposefs $dir" "$ref/mkcomposefs $dir $work/o5.img" \
    -n "cfsmount mkcomposefs $dir" "$cf/mkcomposefs $dir $work/o6.img"
echo "== load after: $(cat /proc/loadavg)"

echo "== peak RSS (KB), one run each"
for b in "$ref" "$cf"; do
    /usr/bin/time -f "$b mkcomposefs --from-file: %M" "$b/mkcomposefs" --from-file "$work/cs9.dump" "$work/m.img"
    /usr/bin/time -f "$b composefs-info dump: %M" "$b/composefs-info" dump "$work/ref.img" >/dev/null
    /usr/bin/time -f "$b composefs-dump: %M" "$b/composefs-dump" "$work/ref.img" "$work/m.img"
    /usr/bin/time -f "$b mkcomposefs $dir: %M" "$b/mkcomposefs" "$dir" "$work/m.img"
done
