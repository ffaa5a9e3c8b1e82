#!/usr/bin/env bash
# Runs the reference composefs project's own test scripts (tests/test-checksums.sh,
# test-dump-filtered.sh, test-should-fail.sh, test-units.sh) against cfsmount's drop-in
# personalities: a private directory holding mkcomposefs, composefs-info, composefs-dump and
# mount.composefs as links to one cfsmount binary.
#
#   tests/dropin/reference-scripts.sh REFERENCE_SRC [CFSMOUNT]
#
# REFERENCE_SRC: a checkout of github.com/composefs/composefs (its tests/ directory; not part of
#   this repository, nothing of it is committed here). Its tests/assets are used when present,
#   otherwise the same files from $CFS_CONFORMANCE/composefs-dump (default
#   ../shared/conformance). Git symlinks checked out as text files (special_v1.dump holds
#   "special.dump") are turned back into links in a private copy.
# CFSMOUNT: the binary to test (default target/debug/cfsmount); a directory is used as the
#   tool directory as it is (e.g. the reference's own build, to check this harness).
#
# Prints one "script: ok|FAILED" line per script and ends with "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/../.."

ref=${1:?usage: $0 REFERENCE_SRC [CFSMOUNT]}
bin=$(realpath "${2:-target/debug/cfsmount}")
conf=${CFS_CONFORMANCE:-../shared/conformance}
[ -x "$bin" ] || { echo "reference-scripts: $bin is not executable (cargo build first)" >&2; exit 1; }
[ -f "$ref/tests/test-checksums.sh" ] || { echo "reference-scripts: $ref/tests/test-checksums.sh missing" >&2; exit 1; }

work=$(mktemp -d /tmp/cfsmount-refscripts.XXXXXX)
trap 'rm -rf -- "$work"' EXIT
mkdir "$work/bin" "$work/assets"
for t in mkcomposefs composefs-info composefs-dump mount.composefs; do
    if [ -d "$bin" ]; then ln -s "$bin/$t" "$work/bin/$t"; else ln -s "$bin" "$work/bin/$t"; fi
done

src_assets="$ref/tests/assets"
[ -d "$src_assets" ] || src_assets="$conf/composefs-dump"
cp -a "$src_assets/." "$work/assets/"
chmod -R u+w "$work/assets"
for f in "$work/assets"/*.dump; do
    # A one-line file naming another asset is a git symlink checked out as text.
    if [ ! -L "$f" ] && [ "$(stat -c %s "$f")" -lt 100 ] && [ -f "$work/assets/$(cat "$f")" ]; then
        ln -sf "$(cat "$f")" "$f"
    fi
done

# The reference's meson.build lists the checksum cases; every asset with a .sha256 beside it and
# an input is one (test-checksums.sh skips inputs that are absent).
cases=()
for s in "$work/assets"/*.sha256; do
    name=$(basename "$s" .sha256)
    [ -e "$work/assets/$name" ] && cases+=("$name")
done
should_fail=("$work/assets"/should-fail-*.dump)

pass=0 fail=0
run() {
    local name=$1; shift
    if (cd "$work" && "$@") >"$work/$name.log" 2>&1; then
        echo "$name: ok"; pass=$((pass + 1))
    else
        echo "$name: FAILED (log below)"; sed 's/^/    /' "$work/$name.log"; fail=$((fail + 1))
    fi
    [ -n "${VERBOSE:-}" ] && sed 's/^/    | /' "$work/$name.log"
    return 0
}
run test-checksums bash "$ref/tests/test-checksums.sh" "$work/bin" "$work/assets" "${cases[*]}"
run test-dump-filtered bash "$ref/tests/test-dump-filtered.sh" "$work/bin" "$work/assets"
run test-should-fail bash "$ref/tests/test-should-fail.sh" "$work/bin" "${should_fail[@]}"
run test-units bash "$ref/tests/test-units.sh" "$work/bin"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
