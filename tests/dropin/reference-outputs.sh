#!/usr/bin/env bash
# Records what the REFERENCE composefs tools print, as expected data for tests/dropin_cli.rs:
# for every conformance dumpfile and every tests/data/dropin/*.dump, the sha256 of the image the
# reference mkcomposefs builds, and of the stdout of composefs-info ls / dump / objects /
# missing-objects (and --filter variants) on that image, with the exit status.
#
#   tests/dropin/reference-outputs.sh REF_BINDIR > tests/data/dropin/reference-outputs.tsv
#
# REF_BINDIR holds a build of the reference tools (mkcomposefs, composefs-info); nothing of the
# reference is committed here. The expected data is produced by the reference alone.
# Columns: case, composefs-info arguments separated by ';' (IMAGE and BASEDIR stand for the image
# and a basedir holding ab/present01 and cd/present2; stdin is /dev/null), exit status, sha256
# of stdout.
# The row with arguments "=image" gives the sha256 of the image itself.
set -euo pipefail
cd "$(dirname "$0")/../.."
ref=${1:?usage: $0 REF_BINDIR}
conf=${CFS_CONFORMANCE:-../shared/conformance}/composefs-dump
work=$(mktemp -d /tmp/cfsmount-refout.XXXXXX)
trap 'rm -rf -- "$work"' EXIT
mkdir -p "$work/base/ab" "$work/base/cd"
: >"$work/base/ab/present01"
: >"$work/base/cd/present2"

# Filter variants per crafted case.
declare -A filters=(
    [hardlinks.dump]="--filter=c|--filter=z --filter=e|--filter=nothing"
    [whiteouts.dump]="--filter=d2|--filter=d1 --filter=d3"
    [names.dump]="--filter=a space"
)

record() { # case args...
    local case=$1; shift
    local rc=0
    local args=()
    for a in "$@"; do a=${a//IMAGE/$work/img}; args+=("${a//BASEDIR/$work/base}"); done
    "$ref/composefs-info" "${args[@]}" </dev/null >"$work/out" 2>/dev/null || rc=$?
    local IFS=';'
    printf '%s\t%s\t%s\t%s\n' "$case" "$*" "$rc" "$(sha256sum <"$work/out" | cut -c1-64)"
}

inputs=()
for f in "$conf"/*.dump "$conf"/*.dump.gz tests/data/dropin/*.dump; do
    case $(basename "$f") in should-fail-*) continue ;; esac
    [ -s "$f" ] || continue
    inputs+=("$f")
done
for f in "${inputs[@]}"; do
    name=$(basename "$f")
    in=$f
    if [[ $f == *.gz ]]; then zcat "$f" >"$work/in.dump"; in=$work/in.dump; fi
    # special_v1.dump is a git symlink that may be checked out as a one-line text file.
    if [ "$(stat -c %s "$in")" -lt 100 ] && [ -f "$(dirname "$f")/$(cat "$in")" ]; then in=$(dirname "$f")/$(cat "$in"); fi
    v=()
    [ -f "$f.version" ] && v=(--min-version="$(cat "$f.version")" --max-version="$(cat "$f.version")")
    "$ref/mkcomposefs" "${v[@]}" --from-file "$in" "$work/img"
    printf '%s\t=image\t0\t%s\n' "$name" "$(sha256sum <"$work/img" | cut -c1-64)"
    record "$name" ls IMAGE
    record "$name" dump IMAGE
    record "$name" objects IMAGE
    record "$name" --basedir=BASEDIR missing-objects IMAGE
    record "$name" missing-objects IMAGE
    IFS='|' read -r -a fl <<<"${filters[$name]:-}"
    for fset in "${fl[@]}"; do
        read -r -a words <<<"$fset"
        [[ $fset == "--filter=a space" ]] && words=("$fset")
        record "$name" "${words[@]}" dump IMAGE
        record "$name" "${words[@]}" ls IMAGE
    done
done
