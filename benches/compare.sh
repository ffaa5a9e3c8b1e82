#!/usr/bin/env bash
# Side-by-side benchmark of cfsmount and its peers (issue 17's table), in one run, interleaved:
# every comparison runs in ROUNDS rounds, and each round times every tool once (hyperfine,
# RUNS_SHORT runs for the millisecond cases; the tools' order rotates from round to round), so a
# change of machine speed during the run hits all tools alike. Peak RSS: one extra run of each tool under GNU time.
#
#   mount of the prebuilt cs9-developer image as root     cfsmount / mount.composefs / cfsctl
#   the same through the setuid helper, as user nobody    cfsmount (and setpriv alone); a repeated
#                                                         mount: the helper's kept copy (on tmpfs,
#                                                         benches/kept-copies.sh; KEPT_COPIES=0 off)
#   the same, a first mount (verdicts, copies removed)     cfsmount (and setpriv alone)
#   a 1-file image through the helper (its fixed cost)    cfsmount (and setpriv alone)
#   /bin/true alone (one exec without a launcher)          to put back the exec a runtime's own
#                                                         launch pays: the helper rows "as a runtime
#                                                         launches it" (printed below the table)
#   the repeated mount and the 1-file image again, with    cfsmount (and /bin/true so launched)
#   hyperfine itself running as nobody (no launcher)
#   mkimage --from-dir SRC (no store)                     cfsmount / mkcomposefs / cfsctl mkcomposefs
#   mkimage --from-dir SRC --digest-store (fresh store)   idem; images AND object trees compared
#                                                         (a cfsctl without mkcomposefs: its
#                                                         create-image into a fresh repository)
#   image from the cs9 dumpfile                           idem (--from-file)
#   image from the cs9 TOC JSON                           cfsmount; the reference on the dumpfile (it reads no TOC)
#   fs-verity digest of 1 GiB (tmpfs)                     cfsmount / fsverity digest / cfsctl composefs-info measure-file
#
# The peers are optional inputs, by path (nothing is fetched or built here):
#   REFERENCE=DIR   a reference C composefs build: DIR/mkcomposefs, DIR/mount.composefs
#   CFSCTL=FILE     a composefs-rs cfsctl (its mkcomposefs / mount.composefs / composefs-info personalities;
#                   one without mkcomposefs, as 0.3.0, still joins the store case with create-image)
# Other settings: ROUNDS (10), RUNS_SHORT (5), SRC (/usr/share), STORE_DIR (/dev/shm: where the
# fresh digest stores go; on a disk filesystem see SETTLE), SETTLE (seconds to wait after deleting
# a store before the next run; default 0 on tmpfs, 45 elsewhere: on ext4 without a journal, files
# created within ~40 s of deleting many others cost several times more, which would otherwise
# measure the previous run's deletion), SECTIONS (default "mount helper dir store dump toc verity"),
# CFS_CONFORMANCE (conformance data).
#
# Needs root (mounts, the setuid copy, user nobody), hyperfine, GNU time, python3, setpriv,
# fsverity (fsverity-utils), the conformance data, and cargo with the dependencies already
# fetched (the build runs --offline). On a shared machine the mounting sections run under the
# machine-wide lock, the rest need not hold it:
#   flock /tmp/cfsmount-root.lock env SECTIONS="mount helper" benches/compare.sh
#   SECTIONS="dir store dump toc verity" benches/compare.sh
# Output: the table (markdown) on stdout and in $OUT/table.md (target/bench-compare), built from
# every section's latest results there; raw timings (hyperfine JSON per round) next to it.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-10}
RUNS_SHORT=${RUNS_SHORT:-5}
SRC=${SRC:-/usr/share}
STORE_DIR=${STORE_DIR:-/dev/shm}
SECTIONS=${SECTIONS:-mount helper dir store dump toc verity}
CONF=${CFS_CONFORMANCE:-$PWD/../shared/conformance}
OUT=${OUT:-$PWD/target/bench-compare}
REFERENCE=${REFERENCE:-}
CFSCTL=${CFSCTL:-}
if [ -z "${SETTLE:-}" ]; then
    [ "$(stat -f -c %T "$STORE_DIR")" = tmpfs ] && SETTLE=0 || SETTLE=45
fi

die() { echo "benches/compare.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (mounts, a setuid copy, runs as nobody)"
for t in hyperfine python3 setpriv fsverity; do command -v "$t" >/dev/null || die "$t is not installed"; done
[ -x /usr/bin/time ] || die "GNU time (/usr/bin/time) is not installed"
[ -f "$CONF/composefs-dump/cs9-x86_64-developer.dump.gz" ] || die "conformance data not found at $CONF (set CFS_CONFORMANCE)"
[ -z "$REFERENCE" ] || [ -x "$REFERENCE/mkcomposefs" ] || die "REFERENCE=$REFERENCE has no mkcomposefs"
[ -z "$CFSCTL" ] || [ -x "$CFSCTL" ] || die "CFSCTL=$CFSCTL is not executable"
# rs CMD...: true if CFSCTL is given and has the personality CMD (cfsctl before 0.4 has no
# mount.composefs, mkcomposefs or composefs-info): composefs-rs joins only the cases it can run,
# and a case never fails as a whole for an optional peer.
rs() { [ -n "$CFSCTL" ] && "$CFSCTL" "$@" --help >/dev/null 2>&1; }
rs_missing=
rs_repo= # set when the store case runs cfsctl create-image (no mkcomposefs personality)
for p in mount.composefs mkcomposefs "composefs-info measure-file"; do
    [ -z "$CFSCTL" ] || rs $p || rs_missing="$rs_missing${rs_missing:+, }$p"
done

cargo build --release --offline --quiet --bin cfsmount
B=${CARGO_TARGET_DIR:-$PWD/target}/release/cfsmount
mkdir -p "$OUT/checks"

W=$(mktemp -d /var/tmp/cfsmount-compare.XXXXXX)
S=$(mktemp -d "$STORE_DIR/cfsmount-compare-store.XXXXXX")
chmod 755 "$W"
. benches/kept-copies.sh
cleanup() {
    for m in "$W/mnt" "$W/hmnt"; do
        while mountpoint -q "$m" 2>/dev/null; do umount "$m" 2>/dev/null || umount -l "$m" || break; done
    done
    kept_copies_teardown
    rm -rf "$W" "$S"
}
trap cleanup EXIT INT TERM
export CFSMOUNT_STATE_DIR=$W/state
mkdir -m 700 "$W/state"
mkdir -m 755 "$W/objs" "$W/hobjs" "$W/mnt" "$W/hmnt" "$W/bin"
chown nobody: "$W/hmnt" "$W/hobjs"    # the helper wants the caller's own basedir and target

# composefs-rs accepts only `xx/<62 hex>` payloads: the dumpfile case uses the cs9 tree with the
# `.file` suffix of its object names dropped (same tree otherwise), for all three tools.
gzip -dc "$CONF/composefs-dump/cs9-x86_64-developer.dump.gz" |
    sed -E 's#( [0-9a-f]{2}/[0-9a-f]{62})\.file #\1 #' >"$W/cs9.dump"
gzip -dc "$CONF/composefs-json/cs9-x86_64-developer.json.gz" >"$W/cs9.json"
gzip -dc "$CONF/composefs-dump/cs9-x86_64-developer.dump.gz" >"$W/cs9-orig.dump"
"$B" mkimage --from-dump "$W/cs9-orig.dump" "$W/cs9.img" # the prebuilt image (TOC case compares to it)
chmod 644 "$W/cs9.img"
# A 1-file image: what any helper mount costs whatever the image (an image with fs-verity, which
# the helper mounts from the caller's file without its copy, costs this much on a repeated mount).
printf '/ 4096 40755 2 65534 65534 0 0.0 - - -\n/f 5 100644 1 65534 65534 0 0.0 - hello -\n' |
    "$B" mkimage --from-dump - "$W/one.img"
chmod 644 "$W/one.img"

# --- helpers ------------------------------------------------------------------------------------
# A case is a list of tools; tool i has a name, a prepare command and a command (argv strings,
# run without a shell by hyperfine -N). Each round runs hyperfine once over all tools.
names=() prepares=() cmds=()
case_reset() { names=() prepares=() cmds=(); }
tool() { names+=("$1"); prepares+=("$2"); cmds+=("$3"); }

# run_case ID RUNS_PER_ROUND [AS]: AS (a command prefix, e.g. setpriv ...) runs hyperfine itself,
# the prepares and the peak-RSS runs as another user
run_case() {
    local id=$1 per=$2 as=${3:-} r i k args
    rm -rf "${OUT:?}/$id"
    mkdir -p "$OUT/$id"
    # Where hyperfine and GNU time write: with AS, a directory of nobody's in $W (OUT may be in a
    # tree nobody cannot reach), copied to $OUT/$id at the end.
    local jd=$OUT/$id
    if [ -n "$as" ]; then jd=$W/out-$id; mkdir -p "$jd"; chown 65534 "$jd"; fi
    for r in $(seq 0 "$ROUNDS"); do          # round 0 warms up and is discarded
        # The order rotates from round to round, so that no tool always runs in the same place
        # (first after the warm-up of the round, or right after the same other tool).
        args=()
        for k in "${!names[@]}"; do
            i=$(((k + r) % ${#names[@]}))
            args+=(--prepare "${prepares[$i]}" -n "${names[$i]}" "${cmds[$i]}")
        done
        if ! $as hyperfine -N --style none --runs "$per" --export-json "$jd/round$r.json" "${args[@]}" \
            >/dev/null 2>"$OUT/$id/hyperfine.err"; then
            echo "benches/compare.sh: case $id failed, left out of the table:" >&2
            tail -n 5 "$OUT/$id/hyperfine.err" >&2
            return 0
        fi
    done
    for i in "${!names[@]}"; do
        if [ -z "$as" ]; then eval "${prepares[$i]}"; else $as ${prepares[$i]}; fi >/dev/null 2>&1 || true
        # peak RSS (KiB) of one more run, the tool and its children
        $as /usr/bin/time -f %M -o "$jd/rss.$i" ${cmds[$i]} >/dev/null 2>"$OUT/$id/stderr.$i" || true
    done
    [ "$jd" = "$OUT/$id" ] || cp "$jd"/* "$OUT/$id"/
    python3 - "$OUT/$id" "$ROUNDS" "${names[@]}" <<'EOF'
import json, statistics, sys, os
d, rounds, names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
times = {n: [] for n in names}
cpu = {n: [] for n in names}
for r in range(1, rounds + 1):
    for res in json.load(open(f"{d}/round{r}.json"))["results"]:
        times[res["command"]].extend(res["times"])
        cpu[res["command"]].extend([res["user"] + res["system"]] * len(res["times"]))
with open(f"{d}/summary.tsv", "w") as out:
    for i, n in enumerate(names):
        t = times[n]
        rss = open(f"{d}/rss.{i}").read().strip().splitlines()[-1] if os.path.exists(f"{d}/rss.{i}") else "?"
        sd = statistics.stdev(t) if len(t) > 1 else 0
        out.write(f"{n}\t{len(t)}\t{statistics.mean(t)}\t{sd}\t{min(t)}\t{rss}\t{statistics.mean(cpu[n])}\t{statistics.median(t)}\n")
EOF
}

script() { # script NAME LINES...: an executable sh script in $W/bin
    local f=$W/bin/$1
    shift
    printf '#!/bin/sh\n' >"$f"
    printf '%s\n' "$@" >>"$f"
    chmod 755 "$f"
    echo "$f"
}

# --- the cases ------------------------------------------------------------------------------
has() { case " $SECTIONS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
M=$W/mnt
if has mount; then
    case_reset
    un_cfs=$(script un-cfs "$B umount $M >/dev/null 2>&1 || true")
    un_plain=$(script un-plain "umount $M >/dev/null 2>&1 || true")
    tool cfsmount "$un_cfs" "$B mount $W/cs9.img $M --basedir $W/objs"
    [ -z "$REFERENCE" ] || tool reference "$un_plain" "$REFERENCE/mount.composefs -o basedir=$W/objs $W/cs9.img $M"
    ! rs mount.composefs || tool composefs-rs "$un_plain" "$CFSCTL mount.composefs -o basedir=$W/objs $W/cs9.img $M"
    run_case mount "$RUNS_SHORT"
    "$un_cfs"
fi
if has helper; then
    case_reset
    kept_copies_setup
    install -o root -g root -m 4755 "$B" "$W/bin/cfsmount-suid"
    as_nobody="setpriv --reuid=65534 --regid=65534 --clear-groups"
    un_h=$(script un-h "$as_nobody $W/bin/cfsmount-suid umount $W/hmnt >/dev/null 2>&1 || true")
    tool "cfsmount (setuid, as nobody)" "$un_h" "$as_nobody $W/bin/cfsmount-suid mount $W/cs9.img $W/hmnt --basedir $W/hobjs"
    # A first mount: no remembered verdict and no kept copy (both removed, the copies' key kept).
    first_h=$(script first-h "$un_h" "rm -rf /run/cfsmount/verdicts" \
        "[ ! -d /run/cfsmount/copies ] || find /run/cfsmount/copies -mindepth 1 ! -name .key -delete")
    tool "cfsmount (setuid, as nobody, first mount)" "$first_h" "$as_nobody $W/bin/cfsmount-suid mount $W/cs9.img $W/hmnt --basedir $W/hobjs"
    tool "cfsmount (setuid, 1-file image)" "$un_h" "$as_nobody $W/bin/cfsmount-suid mount $W/one.img $W/hmnt --basedir $W/hobjs"
    tool "setpriv alone (exec overhead)" "true" "$as_nobody /bin/true"
    # The exec a runtime's own launch of the helper still costs: "beyond setpriv alone" takes the
    # launcher out, and with it one exec of /bin/true, which a direct launch pays too.
    tool "true alone (one exec, no launcher)" "true" "/bin/true"
    run_case helper "$RUNS_SHORT"
    "$un_h"
    # The same without a launcher, as a runtime launches the helper: hyperfine itself runs as
    # nobody and execs the setuid helper (a first mount needs root between runs: not here).
    case_reset
    un_hd=$(script un-hd "$W/bin/cfsmount-suid umount $W/hmnt >/dev/null 2>&1 || true")
    tool "cfsmount (setuid, launched by nobody)" "$un_hd" "$W/bin/cfsmount-suid mount $W/cs9.img $W/hmnt --basedir $W/hobjs"
    tool "cfsmount (setuid, 1-file image, launched by nobody)" "$un_hd" "$W/bin/cfsmount-suid mount $W/one.img $W/hmnt --basedir $W/hobjs"
    tool "true (launched by nobody)" "true" "/bin/true"
    run_case helper-direct "$RUNS_SHORT" "$as_nobody"
    "$un_h"
fi
if has dir; then
    case_reset
    tool cfsmount "true" "$B mkimage --from-dir $SRC $W/dir-cfs.img"
    [ -z "$REFERENCE" ] || tool reference "true" "$REFERENCE/mkcomposefs $SRC $W/dir-ref.img"
    ! rs mkcomposefs || tool composefs-rs "true" "$CFSCTL mkcomposefs $SRC $W/dir-rs.img"
    run_case dir 1
fi
if has store; then
    case_reset
    for t in cfs ref rs; do
        script "clear-$t" "rm -rf $S/obj-$t" "sleep $SETTLE" >/dev/null
    done
    tool cfsmount "$W/bin/clear-cfs" "$B mkimage --from-dir $SRC $W/store-cfs.img --digest-store $S/obj-cfs"
    [ -z "$REFERENCE" ] || tool reference "$W/bin/clear-ref" "$REFERENCE/mkcomposefs --digest-store=$S/obj-ref $SRC $W/store-ref.img"
    if rs mkcomposefs; then
        tool composefs-rs "$W/bin/clear-rs" "$CFSCTL mkcomposefs --digest-store=$S/obj-rs $SRC $W/store-rs.img"
    elif rs create-image; then
        # A cfsctl without the mkcomposefs personality (0.3.0) writes the same objects with
        # create-image: SRC's files into a repository (made fresh before each run, untimed; no
        # fs-verity required, as on tmpfs), then the image, committed there as one more object.
        # --no-propagate-usr-to-root: SRC is not a root filesystem with a /usr.
        script clear-rs "rm -rf $S/obj-rs" "sleep $SETTLE" \
            "$CFSCTL init --insecure --algorithm fsverity-sha256-12 $S/obj-rs >/dev/null" >/dev/null
        tool composefs-rs "$W/bin/clear-rs" "$CFSCTL --repo $S/obj-rs create-image --no-propagate-usr-to-root $SRC"
        rs_repo=1
    fi
    run_case store 1
fi
# The image builds: every tool reads the same input file and writes a new file in $W (ext4 on
# /var/tmp here, as images are mounted from disk); the previous run's output is removed before
# each run, untimed, so that no tool's time includes deleting 10 MB of the last run's image
# (the reference truncates it on open, cfsmount renames over it). The TOC case runs the
# reference on the dumpfile of the same tree in the same rounds, for issue 17's TOC ratio (the
# original dumpfile, `.file` names kept, so that all three images can be compared).
if has dump; then
    case_reset
    tool cfsmount "rm -f $W/dump-cfs.img" "$B mkimage --from-dump $W/cs9.dump $W/dump-cfs.img"
    [ -z "$REFERENCE" ] || tool reference "rm -f $W/dump-ref.img" "$REFERENCE/mkcomposefs --from-file $W/cs9.dump $W/dump-ref.img"
    ! rs mkcomposefs || tool composefs-rs "rm -f $W/dump-rs.img" "$CFSCTL mkcomposefs --from-file $W/cs9.dump $W/dump-rs.img"
    run_case dump "$RUNS_SHORT"
fi
if has toc; then
    case_reset
    tool cfsmount "rm -f $W/toc-cfs.img" "$B mkimage --from-toc $W/cs9.json $W/toc-cfs.img"
    [ -z "$REFERENCE" ] || tool "reference (dumpfile)" "rm -f $W/toc-ref.img" "$REFERENCE/mkcomposefs --from-file $W/cs9-orig.dump $W/toc-ref.img"
    run_case toc "$RUNS_SHORT"
fi
if has verity; then
    case_reset
    V=$(mktemp /dev/shm/cfsmount-compare-verity.XXXXXX)
    head -c $((1 << 30)) /dev/urandom >"$V"
    tool cfsmount "true" "$B verity digest $V"
    tool "fsverity digest" "true" "fsverity digest $V"
    ! rs composefs-info measure-file || tool composefs-rs "true" "$CFSCTL composefs-info measure-file $V"
    run_case verity "$RUNS_SHORT"
    digests=$({ "$B" verity digest "$V"; fsverity digest "$V"; ! rs composefs-info measure-file || echo "sha256:$("$CFSCTL" composefs-info measure-file "$V")"; } | awk '{print $1}' | sort -u | wc -l)
    rm -f "$V"
fi

# --- same outputs? ----------------------------------------------------------------------------
# One file of findings per section in $OUT/checks, so that sections run separately (the mounting
# ones under the lock, the others without) add up to one table.
check() { echo "- $2" >>"$OUT/checks/$1"; }
for sec in $SECTIONS; do rm -f "$OUT/checks/$sec"; done
same() { # same SECTION LABEL FILE...: all existing files identical
    local sec=$1 label=$2 first="" f
    shift 2
    for f in "$@"; do
        [ -e "$f" ] || continue
        if [ -z "$first" ]; then first=$f; elif ! cmp -s "$first" "$f"; then check "$sec" "$label: DIFFER ($first vs $f)"; return; fi
    done
    [ -z "$first" ] || check "$sec" "$label: identical ($(sha256sum <"$first" | cut -c1-16)...)"
}
if has dir; then same dir "dir images" "$W"/dir-{cfs,ref,rs}.img; fi
if has store; then
    same store "store images" "$W"/store-{cfs,ref,rs}.img
    listing() { (cd "$1" && find . -type f -printf '%P %s %m\n' | sort) >"$2"; }
    listing "$S/obj-cfs" "$W/l-cfs"
    for t in ref rs; do
        [ -d "$S/obj-$t" ] || continue
        if [ "$t" = rs ] && [ -n "$rs_repo" ]; then
            # create-image's repository: its objects are cfsmount's and one more, the image it
            # committed (an EROFS image: its superblock magic at 1024); that one is left out.
            listing "$S/obj-rs/objects" "$W/l-rs"
            extra=$(comm -13 "$W/l-cfs" "$W/l-rs")
            img=${extra%% *}
            if [ -z "$(comm -23 "$W/l-cfs" "$W/l-rs")" ] && [ "$(printf '%s\n' "$extra" | grep -c .)" = 1 ] &&
                [ "$(od -An -tx4 -j1024 -N4 "$S/obj-rs/objects/$img" | tr -d ' ')" = e0f5e1e2 ] &&
                diff -rq -x "${img##*/}" "$S/obj-cfs" "$S/obj-rs/objects" >/dev/null; then
                check store "object trees cfsmount / rs (cfsctl create-image's repository, less its image): identical ($(wc -l <"$W/l-cfs") objects: names, sizes, modes, contents)"
            else
                check store "object trees cfsmount / rs (cfsctl create-image's repository): DIFFER"
            fi
            continue
        fi
        listing "$S/obj-$t" "$W/l-$t"
        if cmp -s "$W/l-cfs" "$W/l-$t" && diff -rq "$S/obj-cfs" "$S/obj-$t" >/dev/null; then
            check store "object trees cfsmount / $t: identical ($(wc -l <"$W/l-cfs") objects: names, sizes, modes, contents)"
        else
            check store "object trees cfsmount / $t: DIFFER"
        fi
    done
fi
if has dump; then same dump "dumpfile images" "$W"/dump-{cfs,ref,rs}.img; fi
if has toc; then same toc "TOC image vs dumpfile images (cfsmount, reference)" "$W/cs9.img" "$W/toc-cfs.img" "$W/toc-ref.img"; fi
if has verity; then
    [ "$digests" = 1 ] && check verity "fs-verity digests: identical" || check verity "fs-verity digests: DIFFER"
fi

# --- the table --------------------------------------------------------------------------------
fmt() { # fmt SUMMARY NAME -> "mean ± sd s[ (median, CPU)][ (CPU)], RSS MB"
    awk -F'\t' -v n="$2" '$1 == n {
        m = $3; s = $4; u = "s"; if (m < 1) { m *= 1000; s *= 1000; u = "ms" }
        c = ($7 != "" && $3 >= 1) ? sprintf(" (CPU %.2f s)", $7) : ""
        md = ($8 != "" && $3 < 1) ? sprintf(" (median %.1f ms, CPU %.1f ms)", $8 * 1000, $7 * 1000) : ""
        printf "%.*f ± %.*f %s%s%s, %.1f MB", (m < 10 ? 2 : 1), m, (m < 10 ? 2 : 1), s, u, md, c, $6 / 1024 }' "$1"
}
ratio() { # ratio SUMMARY A B -> mean(B)/mean(A) [, the same of medians and of CPU for the ms cases]
    awk -F'\t' -v a="$2" -v b="$3" '$1 == a { x = $3; mx = $8; cx = $7 } $1 == b { y = $3; my = $8; cy = $7 }
        END { if (x && y) printf "%.2f×", y / x
              if (x && y && mx && my && y < 1) printf " mean, %.2f× median, %.2f× CPU", my / mx, cy / cx }' "$1"
}
row() { # row LABEL CASE CFS REF RS [noratio]
    local f=$OUT/$2/summary.tsv c r s
    [ -f "$f" ] || return 0
    c=$(fmt "$f" "$3")
    r=$([ -n "$4" ] && fmt "$f" "$4" || true)
    s=$([ -n "$5" ] && fmt "$f" "$5" || true)
    [ -z "$4" ] || [ -z "$r" ] || [ -n "${6:-}" ] || r="$r ($(ratio "$f" "$3" "$4"))"
    [ -z "$5" ] || [ -z "$s" ] || s="$s ($(ratio "$f" "$3" "$5"))"
    echo "| $1 | $c | ${r:-—} | ${s:-—} |"
}
launched() { # the helper rows as a runtime launches the helper (directly, as the user), against root's mount
    local h=$OUT/helper/summary.tsv m=$OUT/mount/summary.tsv d=$OUT/helper-direct/summary.tsv
    [ -f "$h" ] && [ -f "$m" ] || return 0
    [ -f "$d" ] || d=/dev/null
    echo
    python3 - "$h" "$m" "$d" <<'PY'
import sys
rows = {}
for f in sys.argv[1:]:
    for line in open(f):
        x = line.rstrip("\n").split("\t")
        rows[(f, x[0])] = float(x[2]) * 1e3, float(x[7]) * 1e3
h, m, d = sys.argv[1], sys.argv[2], sys.argv[3]
sp, tr = rows.get((h, "setpriv alone (exec overhead)")), rows.get((h, "true alone (one exec, no launcher)"))
root = rows.get((m, "cfsmount"))
if sp and tr and root:
    print(f"The helper as a runtime launches it (directly, as the user): the row's time - setpriv alone ({sp[0]:.2f} ms)"
          f" + /bin/true alone ({tr[0]:.2f} ms); means (medians), against root's mount: {root[0]:.2f} ms ({root[1]:.2f})")
    for name, label in (("cfsmount (setuid, as nobody)", "repeated mount"),
                        ("cfsmount (setuid, as nobody, first mount)", "first mount"),
                        ("cfsmount (setuid, 1-file image)", "1-file image")):
        if (h, name) in rows:
            t, md = (rows[(h, name)][i] - sp[i] + tr[i] for i in (0, 1))
            print(f"- {label}: {t:.2f} ms ({md:.2f}): {t / root[0]:.2f}× root's mount ({md / root[1]:.2f}× of the medians)")
if root:
    for name, label in (("cfsmount (setuid, launched by nobody)", "repeated mount"),
                        ("cfsmount (setuid, 1-file image, launched by nobody)", "1-file image")):
        if (d, name) in rows:
            t, md = rows[(d, name)]
            print(f"- {label}, measured so (hyperfine as nobody, no launcher): {t:.2f} ms ({md:.2f}): "
                  f"{t / root[0]:.2f}× root's mount ({md / root[1]:.2f}× of the medians)")
PY
}
{
    echo "benches/compare.sh, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), kernel $(uname -r)"
    echo "$("$B" -V | head -1) ($(git rev-parse --short HEAD 2>/dev/null || echo '?')), reference: ${REFERENCE:-not given}, composefs-rs: $([ -n "$CFSCTL" ] && echo "$("$CFSCTL" --version) ($CFSCTL)${rs_missing:+; without $rs_missing: not in those rows${rs_repo:+ but the store case (its create-image)}}" || echo "not given")"
    echo "rounds: $ROUNDS (+1 warm-up), runs per round: $RUNS_SHORT for ms cases, 1 otherwise; SRC=$SRC; stores in $(stat -f -c %T "$STORE_DIR") ($STORE_DIR), settle ${SETTLE}s; load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo "| work | cfsmount | reference C | composefs-rs |"
    echo "|---|---|---|---|"
    row "mount of the prebuilt cs9-developer image, as root" mount cfsmount reference composefs-rs
    row "the same through the setuid helper, as nobody (reference column: setpriv exec alone)" helper "cfsmount (setuid, as nobody)" "setpriv alone (exec overhead)" "" noratio
    row "the same, a first mount (no remembered verdict, no kept copy: copied and vetted in full; reference column: setpriv exec alone)" helper "cfsmount (setuid, as nobody, first mount)" "setpriv alone (exec overhead)" "" noratio
    row "a 1-file image through the setuid helper (its fixed cost; reference column: setpriv exec alone)" helper "cfsmount (setuid, 1-file image)" "setpriv alone (exec overhead)" "" noratio
    row "the repeated helper mount launched by a process of nobody, no launcher (reference column: /bin/true launched so)" helper-direct "cfsmount (setuid, launched by nobody)" "true (launched by nobody)" "" noratio
    row "the 1-file image so (reference column: /bin/true launched so)" helper-direct "cfsmount (setuid, 1-file image, launched by nobody)" "true (launched by nobody)" "" noratio
    row "mkimage --from-dir $SRC (no store)" dir cfsmount reference composefs-rs
    row "mkimage --from-dir $SRC --digest-store (fresh store${rs_repo:+; composefs-rs column: cfsctl create-image into a fresh repository})" store cfsmount reference composefs-rs
    row "image from the cs9 dumpfile (64k entries; payloads without .file)" dump cfsmount reference composefs-rs
    row "image from the cs9 TOC JSON (reference column: the reference on the dumpfile, same rounds)" toc cfsmount "reference (dumpfile)" ""
    row "fs-verity digest of 1 GiB (tmpfs; reference column: fsverity digest)" verity cfsmount "fsverity digest" composefs-rs
    launched
    echo
    echo "Times: wall, mean ± standard deviation over all rounds (and the median, for the millisecond cases); CPU: user + system time of the process and"
    echo "its children (hyperfine), mean; memory: peak RSS of one more run (with children)."
    echo "(N×) = peer time / cfsmount time. Output checks:"
    cat "$OUT"/checks/* 2>/dev/null || true
} | tee "$OUT/table.md"
