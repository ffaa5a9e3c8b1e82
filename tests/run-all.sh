#!/usr/bin/env bash
# Runs every test tier (see README "Tests"):
#   1 unit      : no privileges needed (parsers, writer vs conformance, digests)
#   2 root      : real loop devices, mounts, idmaps, sandbox, setuid helper (needs root)
#   3 vm        : fs-verity inside a throwaway qemu VM with a verity-enabled kernel
# Each tier that cannot run says why and counts as failed.
set -uo pipefail
cd "$(dirname "$0")/.."

export CFS_CONFORMANCE="${CFS_CONFORMANCE:-$PWD/../shared/conformance}"
passed=0; failed=0; failed_names=()
tier() { # name, command...
    local name=$1; shift
    printf '\n==== tier %s: %s\n' "$name" "$*"
    if "$@"; then passed=$((passed+1)); else failed=$((failed+1)); failed_names+=("$name"); fi
}

bash tests/install-deps.sh || exit 1
printf '\n==== build\n'
cargo build --all-targets || exit 1

if [ ! -d "$CFS_CONFORMANCE" ]; then
    echo "conformance data not found at $CFS_CONFORMANCE (set CFS_CONFORMANCE)" >&2
    exit 1
fi

unit_tests=(); root_tests=()
for f in tests/*.rs; do
    n=$(basename "$f" .rs)
    case "$n" in
        root_sandbox) ;;  # run below, with the test-only misbehave hooks compiled in
        root_*) root_tests+=(--test "$n") ;;
        *) unit_tests+=(--test "$n") ;;
    esac
done

tier1() {
    # Formatting (rustfmt.toml) and lints (clippy.toml; Cargo.toml [lints]: too_many_lines),
    # warnings are errors; the test-only misbehave hooks are linted too.
    cargo fmt --check || return 1
    cargo clippy --all-targets -- -D warnings || return 1
    cargo clippy --all-targets --features misbehave -- -D warnings || return 1
    cargo test --lib --bins "${unit_tests[@]}" -- --test-threads=2 || return 1
    bash tests/fuzz-brief.sh || return 1
    bash packaging/build-packages.sh
}
# The helper's tests keep a setuid-root copy of the (debug) helper in this directory for the
# whole run (tests/support/helper.rs); it must not outlive the run, passed or failed.
helper_test_root=/tmp/cfsmount-helper-test
remove_helper_test_root() {
    [ -e "$helper_test_root" ] || return 0
    findmnt -rn -o TARGET | grep -E "^$helper_test_root(/|\$)" | sort -r | xargs -r -n1 umount -l
    rm -rf "$helper_test_root"
}
tier2() {
    if [ "$(id -u)" != 0 ]; then echo "tier 2 needs root (real mounts, loop devices, setuid helper)"; return 1; fi
    local rc=0
    cargo test "${root_tests[@]}" -- --test-threads=1 || rc=1
    # The sandbox escape tests need the test-only misbehave hooks (never in a release build).
    [ "$rc" = 0 ] && { cargo test --features misbehave --test root_sandbox -- --test-threads=1 || rc=1; }
    remove_helper_test_root
    if [ -e "$helper_test_root" ]; then echo "could not remove $helper_test_root"; rc=1; fi
    return "$rc"
}
tier3() {
    if [ "$(id -u)" != 0 ]; then echo "tier 3 needs root (installs a kernel, builds loop filesystems)"; return 1; fi
    [ -x tests/vm/run-tier3.sh ] || { echo "tests/vm/run-tier3.sh missing"; return 1; }
    cargo build --bin cfsmount && tests/vm/run-tier3.sh "$PWD/target/debug/cfsmount"
}

tier 1-unit tier1
tier 2-root tier2
tier 3-vm tier3

printf '\n'
[ "$failed" -eq 0 ] || echo "failed tiers: ${failed_names[*]}"
echo "tiers: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
