#!/bin/busybox sh
# /init of the busybox initramfs of the boot tests (tests/vm/boot/run-boot.sh), run as PID 1 in
# a qemu VM whose kernel has fs-verity. The disk /dev/vda is an ext4 with the verity feature,
# holding the Debian root laid out by deploy-root (image named on the command line as
# cfsboot.good=HEX) and a copy of its /etc at /part. This init:
#   1. enables fs-verity on the layout the host made (cfsmount verity enable on every object and
#      the image), runs a verified deploy-root of /etc, and derives three more images from the
#      root's (cfsmount inspect | edit | mkimage --from-dump):
#      one without fs-verity, one that is then tampered with (one byte), one naming an object
#      that is then replaced;
#   2. runs `cfsmount setup-root` as an initramfs would, once per case, and checks the exit
#      code, the one-line message and that /sysroot is exactly as before after a failure;
#   3. boots the image without fs-verity with composefs=?HEX: setup-root, then switch_root to
#      systemd, where cfsmount-boot-check reports and powers off.
# Every result is a console line "CFSBOOT PASS name" / "CFSBOOT FAIL name: why".
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /run /tmp /sysroot
mount -t tmpfs -o mode=0755 run /run

say() { echo "CFSBOOT $*"; }
pass() { say "PASS $*"; }
fail() { say "FAIL $*"; }
stop() { fail "$*"; sync; poweroff -f; sleep 10; }
now() { cut -d' ' -f1 /proc/uptime; }

# (a module for a CPU feature the emulated CPU lacks, like crc32c-intel, may refuse: the generic
# one next to it serves)
for m in $(cat /modules.order); do
    insmod "/mod/$m" 2>/dev/null || echo "insmod $m failed, continuing"
done
mount -o rw /dev/vda /sysroot || stop "mount /dev/vda at /sysroot"
CFS=/bin/cfsmount
R=/sysroot/composefs

# ---- 1. layout ---------------------------------------------------------------------------------
# The host laid the root out (deploy-root --no-verity); fs-verity is enabled here, where the
# kernel and the filesystem have it.
GOOD=$(sed -n 's/.*cfsboot\.good=\([0-9a-f]*\).*/\1/p' /proc/cmdline)
[ ${#GOOD} = 64 ] || stop "no cfsboot.good= on the command line"
t0=$(now)
find "$R/objects" -type f | xargs $CFS verity enable >/dev/null || stop "enabling fs-verity on the objects"
$CFS verity enable "$R/images/$GOOD" >/dev/null || stop "enabling fs-verity on the image"
t1=$(now)
say "HEX_GOOD=$GOOD"
say "TIME fs-verity enable on $(find "$R/objects" -type f | wc -l) objects and the image: $(awk "BEGIN { print $t1 - $t0 }") s"
$CFS verity measure "$R/images/$GOOD" | grep -q "$GOOD" && pass "image carries fs-verity with its name as digest" \
    || fail "image fs-verity: $($CFS verity measure "$R/images/$GOOD" 2>&1)"
# deploy-root with fs-verity, in full, on a part of the tree (/etc)
t0=$(now)
if arg=$($CFS deploy-root --from-dir /sysroot/part /sysroot 2>/tmp/deploy.err); then
    t1=$(now)
    say "TIME deploy-root (verified) of /etc: $(awk "BEGIN { print $t1 - $t0 }") s: $(cat /tmp/deploy.err)"
    PART=${arg#composefs=}
    if [ "$arg" = "composefs=$PART" ] && [ ${#PART} = 64 ] && $CFS verity measure "$R/images/$PART" | grep -q "$PART"; then
        pass "deploy-root with fs-verity prints composefs=HEX and seals the image"
    else
        fail "deploy-root with fs-verity printed $arg"
    fi
else
    fail "deploy-root with fs-verity: $(tail -n1 /tmp/deploy.err)"
fi

$CFS inspect "$R/images/$GOOD" >/tmp/good.dump || stop "inspect"
# derive IMAGE-NAME VERITY(yes/no) EXTRA-DUMP-LINE... : prints the new image's digest
derive() {
    name=$1 verity=$2
    shift 2
    cp /tmp/good.dump "/tmp/$name.dump"
    for l in "$@"; do echo "$l" >>"/tmp/$name.dump"; done
    ev=; [ "$verity" = yes ] && ev=--enable-verity
    d=$($CFS mkimage --from-dump "/tmp/$name.dump" "$R/images/.$name" --print-digest $ev) || stop "mkimage $name"
    mv "$R/images/.$name" "$R/images/$d" || stop "mv $name"
    mkdir -p "/sysroot/state/deploy/$d"
    cp -a "/sysroot/state/deploy/$GOOD/var" "/sysroot/state/deploy/$d/" || stop "var of $name"
    echo "$d"
}
# an image without fs-verity, for composefs=?HEX (the booted system finds it expected)
NV=$(derive noverity no '/etc/cfsmount-test-expect 9 100644 1 0 0 0 0.0 - insecure\n -')
# an image that gets one byte changed
TI=$(derive tamper-image yes '/etc/cfsmount-tamper-image 4 100644 1 0 0 0 0.0 - yes\n -')
# an image naming an object of its own, which then gets replaced
head -c 8192 /dev/zero | tr '\0' 'o' >/tmp/obj
OD=$($CFS verity digest /tmp/obj | cut -d" " -f1); OD=${OD#sha256:}
OP=$(echo "$OD" | cut -c1-2)/$(echo "$OD" | cut -c3-)
mkdir -p "$R/objects/${OP%/*}" && cp /tmp/obj "$R/objects/$OP" && $CFS verity enable "$R/objects/$OP" >/dev/null \
    || stop "object $OP"
TO=$(derive tamper-object yes "/etc/cfsmount-object-test 8192 100644 1 0 0 0 0.0 $OP - $OD")
say "HEX_NOVERITY=$NV HEX_TAMPERED_IMAGE=$TI HEX_TAMPERED_OBJECT=$TO"

# one byte of the image changed (in the middle), then sealed again with fs-verity
img="$R/images/$TI"
sz=$(stat -c %s "$img")
off=$((sz / 2))
cp "$img" /tmp/t.img
orig=$(dd if=/tmp/t.img bs=1 skip=$off count=1 2>/dev/null | od -An -tu1 | tr -d ' ')
printf "\\$(printf %03o $(((orig + 1) % 256)))" | dd of=/tmp/t.img bs=1 seek=$off conv=notrunc 2>/dev/null
cmp -l "$img" /tmp/t.img | wc -l | grep -qx 1 && pass "tampered image differs in exactly one byte" || fail "tamper-image: cmp"
rm -f "$img" && cp /tmp/t.img "$img" && $CFS verity enable "$img" >/dev/null || stop "re-sealing the tampered image"
# the object replaced by other bytes of the same size, with fs-verity of its own
rm -f "$R/objects/$OP"
head -c 8192 /dev/zero | tr '\0' 'x' >"$R/objects/$OP" && $CFS verity enable "$R/objects/$OP" >/dev/null || stop "replacing $OP"
sync

# ---- 2. setup-root cases -----------------------------------------------------------------------
sysroot_mounts() { awk '$5 ~ "^/sysroot" { print $1, $5, $9 }' /proc/self/mountinfo; }
# case NAME EXPECTED-RC MESSAGE-SUBSTRING CMDLINE
case_fail() {
    name=$1 want=$2 msg=$3 line=$4
    echo "$line" >/tmp/cmdline
    before=$(sysroot_mounts)
    $CFS setup-root --cmdline /tmp/cmdline >/tmp/out 2>&1
    rc=$?
    after=$(sysroot_mounts)
    say "MSG $name: $(cat /tmp/out)"
    if [ "$rc" != "$want" ]; then
        fail "$name: exit $rc, wanted $want"
    elif [ "$(wc -l </tmp/out)" != 1 ]; then
        fail "$name: $(wc -l </tmp/out) lines of output, wanted one"
    elif ! grep -qF -- "$msg" /tmp/out; then
        fail "$name: message lacks \"$msg\""
    elif [ "$before" != "$after" ]; then
        fail "$name: mounts under /sysroot changed: $after"
    else
        pass "$name"
    fi
}
case_fail "no composefs argument: exit 0, nothing mounted" 0 "nothing to do" "root=/dev/vda rw quiet"
case_fail "malformed composefs= stops the boot" 1 "kernel command line: composefs=xyz" "composefs=xyz"
case_fail "missing image stops the boot" 1 "no composefs image found" "composefs=$(printf '%064d' 0)"
case_fail "tampered image (one byte) stops the boot" 1 "is not the $TI the kernel command line names" "rw composefs=$TI"
case_fail "tampered object stops the boot" 1 "(for /etc/cfsmount-object-test): fs-verity digest mismatch" "composefs=$TO"
case_fail "image without fs-verity refused without ?" 1 "a verified boot needs it" "composefs=$NV"
case_fail "v1 form: tampered image also refused" 1 "is not the $TI" "composefs.digest=v1-sha256-12:$TI"

# first existing image wins; verified mount of the real root, objects measured first
echo "composefs=$(printf '%064d' 0) composefs.digest=v1-sha256-12:$GOOD" >/tmp/cmdline
t0=$(now)
if $CFS setup-root --cmdline /tmp/cmdline >/tmp/out 2>&1; then
    t1=$(now)
    say "TIME setup-root verified $(awk "BEGIN { print $t1 - $t0 }") s: $(tail -n1 /tmp/out)"
    opts=$(awk '$5 == "/sysroot" { o = $0 } END { print o }' /proc/self/mountinfo)
    case "$opts" in
    *" overlay "*verity=require*) pass "verified root mounted (first image that exists, verity=require)" ;;
    *) fail "verified root: $opts" ;;
    esac
    grep -q "image not present" /tmp/out && pass "absent first image reported and skipped" || fail "skip message: $(cat /tmp/out)"
    [ -d /sysroot/sysroot/composefs ] && pass "physical root at /sysroot/sysroot" || fail "no physical root at /sysroot/sysroot"
    echo probe >/sysroot/etc/cfsmount-probe && [ -e "/sysroot/sysroot/state/deploy/$GOOD/etc/upper/cfsmount-probe" ] \
        && pass "/etc writable through the state directory" || fail "/etc overlay"
    rm -f /sysroot/etc/cfsmount-probe "/sysroot/sysroot/state/deploy/$GOOD/etc/upper/cfsmount-probe"
    grep -q ' erofs ' /proc/self/mountinfo && fail "an EROFS mount is visible: $(grep ' erofs ' /proc/self/mountinfo)" \
        || pass "no EROFS or temporary lower mount visible"
    umount -l /sysroot
else
    fail "verified setup-root: $(cat /tmp/out)"
fi
[ "$(sysroot_mounts | wc -l)" = 1 ] || stop "after umount: $(sysroot_mounts)"

# ---- 3. composefs=?HEX: the image without fs-verity boots ---------------------------------------
echo "composefs=?$NV" >/tmp/cmdline
if $CFS setup-root --cmdline /tmp/cmdline >/tmp/out 2>&1; then
    say "MSG insecure: $(cat /tmp/out)"
    pass "composefs=?HEX mounts the image without fs-verity"
else
    stop "composefs=?HEX: $(cat /tmp/out)"
fi
for d in dev proc sys run; do
    mount --move "/$d" "/sysroot/$d" || stop "moving /$d"
done
say "switching root to systemd (unverified image)"
exec switch_root /sysroot /sbin/init
stop "switch_root failed"
