#!/usr/bin/env bash
# The setuid helper's cost: `mount` + `umount` of a prebuilt image through the helper, run by an
# unprivileged user (nobody), for a 1-file image and the cs9-x86_64-developer image (64k
# entries). With OLD_CFSMOUNT=/path/to/another/cfsmount both binaries run side by side in one
# hyperfine run (installed setuid the same way), so the result reads as a ratio; ORDER="old new"
# runs the other binary first (the machine's load drifts over a run).
# Cases: the 1-file image, cs9 (repeated mounts: from the second run on, a helper that remembers
# verdicts finds this caller's verdict, and one that keeps copies mounts its kept copy), and
# "cs9 first" (the verdicts and kept copies removed before every run: the first mount of the
# image), "cs9d" (cs9 repeated with `--digest`: the image's fs-verity digest checked on the
# helper's copy, computed on every mount before the digest was kept with the verdict; this
# needs an overlay that takes `verity=require`, as 6.18's does with no fs-verity and no object
# present), and "root cs9
# (plain)": root mounting the same image with the new binary directly, "root cs9 (plain, via
# setpriv)" the same through the helper cases' launcher, and the launcher alone (`setpriv` +
# `sh -c true` as nobody: about 1-1.5 ms of every helper case is this). Then one line
# of peak RSS (`time -f %M`, the helper process, after the runs) per binary and case.
# Two binaries with different verdict versions (v1: SHA-256 key, v2: BLAKE3) remove each other's
# verdicts whenever one records a new one; each case's warm-up runs record its own again, so the
# timed runs of "cs9" are repeated mounts for both.
# Kept copies need a tmpfs mount of their own on /run/cfsmount/copies: benches/kept-copies.sh
# mounts one for the run unless one is there (KEPT_COPIES=0:
# leave /run alone).
#
# With VERITY=1 (a kernel with fs-verity and HELPER_BENCH_DIR on ext4 made with -O verity:
# benches/helper-vm.sh runs it so inside a VM), two more cases mount a copy of cs9 with
# fs-verity enabled, which the helper mounts from the caller's file without its sealed copy:
# "cs9v" (repeated) and "cs9v first".
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

VERITY=${VERITY:-}
W=$(mktemp -d "${HELPER_BENCH_DIR:-/tmp}/cfsmount-helper-bench.XXXXXX")
chmod 755 "$W"
. benches/kept-copies.sh
cleanup() {
    for t in "$W"/t-*; do umount -l "$t" 2>/dev/null || true; done
    kept_copies_teardown
    rm -rf "$W"
}
trap cleanup EXIT
kept_copies_setup

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
DIGEST=$("$NEW" verity digest --compact "$W/cs9.img")
CASES="one cs9 cs9-first cs9d"
if [ -n "$VERITY" ]; then
    cp "$W/cs9.img" "$W/cs9v.img"
    "$NEW" verity enable "$W/cs9v.img" >/dev/null || { echo "helper.sh: fs-verity cannot be enabled under $W" >&2; exit 1; }
    CASES="$CASES cs9v cs9v-first"
fi
chown -R 65534:65534 "$W/objs" "$W"/*.img
# Before every "first" run: no verdict and no kept copy.
printf '#!/bin/sh\nrm -rf /run/cfsmount/verdicts\n[ ! -d /run/cfsmount/copies ] || find /run/cfsmount/copies -mindepth 1 ! -name .key -delete\n' >"$W/first.sh"
chmod 755 "$W/first.sh"

cmds=()
names=()
prepares=()
as_nobody="setpriv --reuid=65534 --regid=65534 --clear-groups --"
for bin in ${ORDER:-new old}; do
    [ -x "$W/$bin/cfsmount" ] || continue
    for case in $CASES; do
        img=${case%-first} extra=
        [ "$case" != cs9d ] || { img=cs9 extra="--digest $DIGEST"; }
        t="$W/t-$bin-$case"
        mkdir -p "$t"
        chown 65534:65534 "$t"
        names+=("$bin ${case/-/ }")
        cmds+=("$as_nobody sh -c '$W/$bin/cfsmount mount $W/$img.img $t --basedir $W/objs $extra && $W/$bin/cfsmount umount $t'")
        if [ "${case%-first}" != "$case" ]; then prepares+=("$W/first.sh"); else prepares+=("true"); fi
    done
done
# The same image mounted by root with the plain (not setuid) new binary: the yardstick; once
# started directly, once through the same launcher as the helper's cases (setpriv, to uid 0),
# and the launcher alone (setpriv + sh as nobody), so its cost can be told apart.
t="$W/t-root-cs9"
mkdir -p "$t"
names+=("root cs9 (plain)")
cmds+=("sh -c '$NEW mount $W/cs9.img $t --basedir $W/objs && $NEW umount $t'")
prepares+=("true")
names+=("root cs9 (plain, via setpriv)")
cmds+=("setpriv --reuid=0 --regid=0 --clear-groups -- sh -c '$NEW mount $W/cs9.img $t --basedir $W/objs && $NEW umount $t'")
prepares+=("true")
names+=("launcher alone (setpriv + sh)")
cmds+=("$as_nobody sh -c true")
prepares+=("true")
args=()
for i in "${!cmds[@]}"; do args+=(-n "${names[$i]}" --prepare "${prepares[$i]}" "${cmds[$i]}"); done
echo "# $(date -u +%FT%TZ) $(uname -r) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); kept copies: $(mountpoint -q /run/cfsmount/copies && echo "tmpfs on /run/cfsmount/copies" || echo off)"
hyperfine -N -w 2 -r "$RUNS" --style basic ${HYPERFINE_JSON:+--export-json "$HYPERFINE_JSON"} "${args[@]}"

# Peak RSS of the helper process (KiB), mount only: a repeated mount, then a first one.
peak_rss() { # BIN IMAGE-NAME LABEL
    local exe=$W/$1/cfsmount img=$W/$2.img t=$W/t-$1-cs9 repeated first
    rss() { /usr/bin/time -f %M $as_nobody "$exe" mount "$img" "$t" --basedir "$W/objs" 2>&1 >/dev/null | tail -1; }
    $as_nobody "$exe" mount "$img" "$t" --basedir "$W/objs"
    $as_nobody "$exe" umount "$t"
    repeated=$(rss)
    $as_nobody "$exe" umount "$t"
    "$W/first.sh"
    first=$(rss)
    $as_nobody "$exe" umount "$t"
    echo "peak RSS $1 $3: repeated ${repeated} KiB, first ${first} KiB"
}
for bin in ${ORDER:-new old}; do
    [ -x "$W/$bin/cfsmount" ] || continue
    peak_rss "$bin" cs9 cs9
    [ -z "$VERITY" ] || peak_rss "$bin" cs9v "cs9v (fs-verity)"
done
