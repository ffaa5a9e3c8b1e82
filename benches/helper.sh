#!/usr/bin/env bash
# The setuid helper's cost: `mount` + `umount` of a prebuilt image through the helper, run by an
# unprivileged user (nobody), for a 1-file image and the cs9-x86_64-developer image (64k
# entries). With OLD_CFSMOUNT=/path/to/another/cfsmount both binaries run side by side in one
# hyperfine run (installed setuid the same way), so the result reads as a ratio; ORDER="old new"
# runs the other binary first (the machine's load drifts over a run).
#
# Usage (root, hyperfine; the machine-wide lock of the root tier):
#   flock /tmp/cfsmount-root.lock benches/helper.sh [target/release/cfsmount] [RUNS]
# CFS_CONFORMANCE locates the conformance data (default ../shared/conformance).
set -euo pipefail
cd "$(dirname "$0")/.."
NEW=${1:-target/release/cfsmount}
RUNS=${2:-15}
OLD=${OLD_CFSMOUNT:-}
CONF=${CFS_CONFORMANCE:-$PWD/../shared/conformance}
[ "$(id -u)" = 0 ] || { echo "helper.sh: needs root (installs setuid copies, mounts)" >&2; exit 1; }
command -v hyperfine >/dev/null || { echo "helper.sh: needs hyperfine" >&2; exit 1; }

W=$(mktemp -d /tmp/cfsmount-helper-bench.XXXXXX)
chmod 755 "$W"
cleanup() {
    for t in "$W"/t-*; do umount -l "$t" 2>/dev/null || true; done
    rm -rf "$W"
}
trap cleanup EXIT

install_copy() { # NAME BINARY
    mkdir -p "$W/$1"
    cp "$2" "$W/$1/cfsmount"
    chown 0:0 "$W/$1/cfsmount"
    chmod 4755 "$W/$1/cfsmount"
}
install_copy new "$NEW"
[ -z "$OLD" ] || install_copy old "$OLD"

mkdir -p "$W/objs"
printf '/ 4096 40755 2 65534 65534 0 0.0 - - -\n/f 5 100644 1 65534 65534 0 0.0 - hello -\n' >"$W/one.dump"
"$NEW" mkimage --from-dump "$W/one.dump" "$W/one.img"
zcat "$CONF/composefs-dump/cs9-x86_64-developer.dump.gz" | "$NEW" mkimage --from-dump - "$W/cs9.img"
chown -R 65534:65534 "$W/objs" "$W/one.img" "$W/cs9.img"

cmds=()
names=()
for bin in ${ORDER:-new old}; do
    [ -x "$W/$bin/cfsmount" ] || continue
    for img in one cs9; do
        t="$W/t-$bin-$img"
        mkdir -p "$t"
        chown 65534:65534 "$t"
        names+=("$bin $img")
        cmds+=("setpriv --reuid=65534 --regid=65534 --clear-groups -- sh -c '$W/$bin/cfsmount mount $W/$img.img $t --basedir $W/objs && $W/$bin/cfsmount umount $t'")
    done
done
args=()
for i in "${!cmds[@]}"; do args+=(-n "${names[$i]}" "${cmds[$i]}"); done
echo "# $(date -u +%FT%TZ) $(uname -r) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
hyperfine -N -w 2 -r "$RUNS" --style basic ${HYPERFINE_JSON:+--export-json "$HYPERFINE_JSON"} "${args[@]}"
