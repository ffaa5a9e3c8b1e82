# Sourced by benches/helper.sh and benches/compare.sh: the setuid helper keeps its vetted image
# copies in /run/cfsmount/copies only on tmpfs (docs/helper.md, "Kept copies"). /run is tmpfs
# on systemd distributions; where it is not (this project's test machines: /run on ext4) the
# benches mount one there for their run, as docs/helper.md tells an administrator to, so that
# they measure the helper as such a machine runs it. KEPT_COPIES=0 leaves /run alone (then
# every helper mount copies).

KEPT_TMPFS=
kept_copies_setup() {
    [ "${KEPT_COPIES:-1}" = 1 ] || return 0
    mkdir -p -m 700 /run/cfsmount
    [ "$(stat -f -c %T /run/cfsmount)" = tmpfs ] && return 0
    mkdir -p -m 700 /run/cfsmount/copies
    mountpoint -q /run/cfsmount/copies && return 0
    mount -t tmpfs -o mode=0700,size=512m,nosuid,nodev,noexec cfsmount-bench-copies /run/cfsmount/copies
    KEPT_TMPFS=1
}
kept_copies_teardown() {
    [ -z "$KEPT_TMPFS" ] || umount -l /run/cfsmount/copies 2>/dev/null || true
}
