# Sourced by benches/helper.sh and benches/compare.sh: the setuid helper keeps its vetted image
# copies only where /run/cfsmount/copies is a tmpfs mount of its own (docs/helper.md, "Kept
# copies"; the packaged unit run-cfsmount-copies.mount makes it). Unless one is mounted
# already, the benches mount one there for their run, as that unit does, so that they measure
# the helper as such a machine runs it. KEPT_COPIES=0 leaves it alone (then, without the unit,
# every helper mount copies).

KEPT_TMPFS= KEPT_MADE_DIR=
kept_copies_setup() {
    [ "${KEPT_COPIES:-1}" = 1 ] || return 0
    mountpoint -q /run/cfsmount/copies && return 0
    [ -e /run/cfsmount/copies ] || KEPT_MADE_DIR=1
    mkdir -p -m 700 /run/cfsmount /run/cfsmount/copies
    # As the packaged unit mounts it (without huge= where the kernel has no transparent huge pages).
    mount -t tmpfs -o mode=0700,size=512m,nosuid,nodev,noexec,huge=within_size cfsmount-bench-copies /run/cfsmount/copies 2>/dev/null ||
        mount -t tmpfs -o mode=0700,size=512m,nosuid,nodev,noexec cfsmount-bench-copies /run/cfsmount/copies
    KEPT_TMPFS=1
}
kept_copies_teardown() {
    [ -z "$KEPT_TMPFS" ] || umount -l /run/cfsmount/copies 2>/dev/null || true
    [ -z "$KEPT_MADE_DIR" ] || rmdir /run/cfsmount/copies 2>/dev/null || true
}
