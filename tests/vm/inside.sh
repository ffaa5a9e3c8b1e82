#!/usr/bin/env bash
# Runs INSIDE the tier-3 VM (kernel with CONFIG_FS_VERITY=y), as root. Usage: inside.sh DIR
# where DIR (a virtme --rwdir) holds the cfsmount binary under test.
#
# Prints one line per test: `PASS name` or `FAIL name: reason`; nothing else on stdout is a
# result line. The host side (run-tier3.sh) counts them.
set -u
OUT=${1:?usage: inside.sh DIR}
CFS=$OUT/cfsmount
W=/tmp/cfs-tier3                 # the guest's private /tmp (overlay on tmpfs: no verity)
V=$W/verity                      # ext4 with the verity feature, on a loop file
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# run NAME FUNCTION [ARGS]: the function runs in a subshell and fails by printing a reason and
# exiting non-zero (see `no`); whatever it left mounted at $M is unmounted afterwards.
run() {
    local name=$1 msg rc t0=$SECONDS
    shift
    msg=$("$@" 2>&1)
    rc=$?
    cleanup_mnt
    echo "# $name: $((SECONDS - t0)) s" >&2
    if [ $rc -eq 0 ]; then
        echo "PASS $name"
    else
        echo "FAIL $name: $(printf '%s' "$msg" | tail -n 3 | tr '\n' ' ' | cut -c1-400)"
    fi
}
no() { echo "$*"; exit 1; }
cleanup_mnt() { :; }

hexof() { "$CFS" verity digest --compact "$1"; }
# Random content of SIZE bytes into FILE.
mkrand() { head -c "$2" /dev/urandom >"$1"; }

# ---- setup --------------------------------------------------------------------------------

setup() {
    local m
    for m in loop erofs overlay ext4; do modprobe "$m" 2>/dev/null; done
    echo "# modprobe done at ${SECONDS}s" >&2
    mkdir -p "$W" "$V" || no "mkdir failed"
    truncate -s 256M "$W/ext4.img" || no "truncate failed"
    mkfs.ext4 -q -b 4096 -O verity,^has_journal -E lazy_itable_init=1 "$W/ext4.img" || no "mkfs.ext4 -O verity failed"
    mount -o loop "$W/ext4.img" "$V" || no "mounting the verity ext4 failed"
    echo "# ext4 ready at ${SECONDS}s" >&2
    [ -x "$CFS" ] || no "no cfsmount binary at $CFS"
    # Run it from the guest's own /tmp, not through the shared directory.
    cp "$CFS" "$W/cfsmount" || no "copying cfsmount failed"
}
T0=$SECONDS
(setup) >"$OUT/setup.log" 2>&1
setup_rc=$?
grep '^#' "$OUT/setup.log" >&2
if [ $setup_rc -ne 0 ]; then
    echo "FAIL setup: $(tail -n 3 "$OUT/setup.log" | tr '\n' ' ')"
    exit 1
fi
CFS=$W/cfsmount
echo "# kernel $(uname -r); verity ext4 at $V; setup $((SECONDS - T0)) s" >&2

# ---- fs-verity: enable / measure against the userspace digest --------------------------------

# enable + measure equals the userspace digest (ours and fsverity-utils') for a file of SIZE bytes.
t_enable_measure() {
    local size=$1 f=$V/size-$1 user ref meas kref
    mkrand "$f" "$size" || no "writing the test file failed"
    user=$("$CFS" verity digest "$f") || no "digest failed"
    ref=$(fsverity digest "$f") || no "fsverity digest failed"
    [ "$user" = "$ref" ] || no "userspace digest $user != fsverity digest $ref"
    "$CFS" verity enable "$f" || no "enable failed"
    meas=$("$CFS" verity measure "$f") || no "measure failed"
    [ "$meas" = "$user" ] || no "kernel measure $meas != userspace $user"
    kref=$(fsverity measure "$f") || no "fsverity measure failed"
    [ "$kref" = "$meas" ] || no "fsverity measure $kref != cfsmount measure $meas"
}
for s in 0 1 4095 4096 4097 $((1024 * 1024 + 1)) $((3 * 1024 * 1024 + 123)); do
    run "enable_measure_equals_digest_size_$s" t_enable_measure "$s"
done

t_already_enabled() {
    local f=$V/size-4097 out
    out=$("$CFS" verity enable "$f" 2>&1) || no "second enable failed: $out"
    [ -z "$out" ] || no "second enable printed: $out"
    [ "$("$CFS" verity measure "$f")" = "$("$CFS" verity digest "$f")" ] || no "measure changed"
}
run enable_already_enabled_is_success t_already_enabled

t_several_files() {
    local a=$V/multi-a b=$V/multi-b out
    mkrand "$a" 10000; mkrand "$b" 20000
    "$CFS" verity enable "$a" "$b" || no "enable of two files failed"
    out=$("$CFS" verity measure "$a" "$b") || no "measure of two files failed"
    [ "$out" = "$(fsverity measure "$a"; fsverity measure "$b")" ] || no "output differs from fsverity measure: $out"
}
run enable_measure_several_files t_several_files

t_measure_not_enabled() {
    local f=$V/plain err
    mkrand "$f" 5000
    if err=$("$CFS" verity measure "$f" 2>&1); then no "measure succeeded on a file without verity"; fi
    case $err in *"$f"*"not enabled"*) ;; *) no "unclear error: $err" ;; esac
}
run measure_without_verity_names_file t_measure_not_enabled

t_tmpfs_unsupported() {
    local f=$W/on-tmpfs err
    mkrand "$f" 5000
    if err=$("$CFS" verity enable "$f" 2>&1); then no "enable succeeded on a filesystem without verity"; fi
    case $err in *"$f"*"not supported"*) ;; *) no "unclear error: $err" ;; esac
}
run enable_on_fs_without_verity_names_file t_tmpfs_unsupported

# A writer that stays: enable gives up after its brief retries with a clear error.
t_busy_writer() {
    local f=$V/busy err pid
    mkrand "$f" 5000
    sleep 30 3>>"$f" &
    pid=$!
    sleep 0.2
    err=$("$CFS" verity enable "$f" 2>&1)
    local rc=$?
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    [ $rc -ne 0 ] || no "enable succeeded while a writer had the file open"
    case $err in *"$f"*"open for writing"*) ;; *) no "unclear error: $err" ;; esac
}
run enable_with_open_writer_fails_clearly t_busy_writer

# A writer that goes away within the retry window: enable succeeds (ETXTBSY was retried).
t_writer_closes() {
    local f=$V/closing pid
    mkrand "$f" 5000
    rm -f "$W/ready"
    ( exec 3>>"$f"; touch "$W/ready"; sleep 0.15 ) &
    pid=$!
    while [ ! -e "$W/ready" ]; do sleep 0.01; done
    "$CFS" verity enable "$f" || { wait "$pid"; no "enable did not wait for the writer to close"; }
    wait "$pid"
    [ "$("$CFS" verity measure "$f")" = "$("$CFS" verity digest "$f")" ] || no "measure != digest"
}
run enable_retries_while_writer_closes t_writer_closes

# ---- mount: digest= and verity=require ----------------------------------------------------

mount_ready() {
    "$CFS" mount --help >/dev/null 2>&1 && "$CFS" mkimage --help 2>/dev/null | grep -q -- '--from-dump'
}

OBJ=$V/objects
IMG=$V/image.cfs
M=$W/mnt
declare -A CONTENT_DIGEST   # name -> fs-verity digest of its object

# Object store named by fs-verity digest (xx/yyyy...), verity enabled on every object and on the
# image, built from a dumpfile whose metacopy digests are those objects' digests.
build_fixture() {
    local n d
    mkdir -p "$OBJ" "$M" "$W/src" || no "mkdir failed"
    mkrand "$W/src/a" 5000
    mkrand "$W/src/b" $((1024 * 1024 + 1))
    printf 'hello from c\n' >"$W/src/c"
    mkrand "$W/src/d" 70000
    {
        echo "/ 4096 40755 2 0 0 0 0.0 - - -"
        for n in a b c d; do
            d=$(hexof "$W/src/$n") || no "digest of $n failed"
            CONTENT_DIGEST[$n]=$d
            mkdir -p "$OBJ/${d:0:2}"
            cp "$W/src/$n" "$OBJ/${d:0:2}/${d:2}" || no "cp failed"
            "$CFS" verity enable "$OBJ/${d:0:2}/${d:2}" || no "enable on object $n failed"
            echo "/$n $(stat -c %s "$W/src/$n") 100644 1 0 0 0 0.0 ${d:0:2}/${d:2} - $d"
        done
    } >"$W/image.dump" || no "writing the dumpfile failed"
    "$CFS" mkimage --from-dump "$W/image.dump" "$IMG" || no "mkimage --from-dump failed"
    "$CFS" verity enable "$IMG" || no "enable on the image failed"
    IMG_DIGEST=$(hexof "$IMG") || no "digest of the image failed"
    [ "$("$CFS" verity measure "$IMG")" = "sha256:$IMG_DIGEST $IMG" ] || no "image measure != digest"
    {
        echo "IMG_DIGEST=$IMG_DIGEST"
        for n in "${!CONTENT_DIGEST[@]}"; do echo "CONTENT_DIGEST[$n]=${CONTENT_DIGEST[$n]}"; done
    } >"$W/fixture.env"
}

is_mounted() { grep -q " $1 " /proc/self/mounts; }
unmount() { is_mounted "$1" && { "$CFS" umount "$1" 2>/dev/null || umount "$1"; }; ! is_mounted "$1"; }
cleanup_mnt() { local i; for i in 1 2 3; do is_mounted "$M" || return 0; umount "$M" 2>/dev/null; done; }

# Every file reads back identical to its source.
all_files_ok() {
    local n
    for n in "$@"; do
        cmp -s "$M/$n" "$W/src/$n" || no "$n does not read back correctly"
    done
}

t_digest_accepts() {
    "$CFS" mount "$IMG" "$M" --basedir "$OBJ" --digest "$IMG_DIGEST" || no "mount with the right digest failed"
    all_files_ok a b c d
    unmount "$M" || no "unmount failed"
}

# Expect a refused mount whose message matches PATTERN (a shell glob), and nothing mounted.
refused() {
    local pattern=$1 err
    shift
    if err=$("$@" 2>&1); then unmount "$M"; no "mount succeeded: $*"; fi
    is_mounted "$M" && { unmount "$M"; no "refused but something is mounted at $M"; }
    # shellcheck disable=SC2254
    case $err in $pattern) ;; *) no "unclear message: $err" ;; esac
}

t_digest_wrong() {
    local other=${CONTENT_DIGEST[a]}
    refused "*$IMG*mismatch*" "$CFS" mount "$IMG" "$M" --basedir "$OBJ" --digest "$other"
}

t_digest_tampered_image() {
    local t=$V/tampered.cfs size
    cp "$IMG" "$t" || no "cp failed"
    size=$(stat -c %s "$t")
    # Change one byte in the last block, then give the copy verity of its own.
    printf '\x5a' | dd of="$t" bs=1 seek=$((size - 100)) conv=notrunc status=none
    cmp -s "$IMG" "$t" && no "tampering did not change the image"
    "$CFS" verity enable "$t" || no "enable on the tampered copy failed"
    refused "*$t*mismatch*" "$CFS" mount "$t" "$M" --basedir "$OBJ" --digest "$IMG_DIGEST"
}

t_digest_nonverity_image() {
    local t=$V/noverity.cfs
    cp "$IMG" "$t" || no "cp failed"
    refused "*$t*not enabled*" "$CFS" mount "$t" "$M" --basedir "$OBJ" --digest "$IMG_DIGEST"
}

# The util-linux helper form: mount.composefs SOURCE TARGET -o basedir=...,digest=...
t_helper_digest_option() {
    mkdir -p "$W/bin"
    ln -sf "$CFS" "$W/bin/mount.composefs"
    "$W/bin/mount.composefs" "$IMG" "$M" -o "basedir=$OBJ,digest=$IMG_DIGEST" || no "mount.composefs with digest= failed"
    all_files_ok a b c d
    unmount "$M" || no "unmount failed"
    refused "*mismatch*" "$W/bin/mount.composefs" "$IMG" "$M" -o "basedir=$OBJ,digest=${CONTENT_DIGEST[b]}"
}

# A copy of the object store with verity enabled on each copy (cp does not carry verity).
copy_store() {
    local dst=$1 f
    rm -rf "$dst"
    cp -a "$OBJ" "$dst" || no "cp -a failed"
    find "$dst" -type f | while read -r f; do "$CFS" verity enable "$f" || exit 1; done
}

obj_path() { local d=${CONTENT_DIGEST[$2]}; echo "$1/${d:0:2}/${d:2}"; }

# One damaged store for all object tests (each mount is slow under TCG):
#   a: replaced by other content of the same size, with verity of its own
#   b: intact
#   c: missing
#   d: right content, but without verity
BAD=$V/store-bad
M2=$W/mnt-verity
build_bad_store() {
    local o
    copy_store "$BAD" || no "copying the store failed"
    o=$(obj_path "$BAD" a)
    rm -f "$o" && mkrand "$o" 5000 || no "replacing object a failed"
    "$CFS" verity enable "$o" || no "enable on the replacement object failed"
    rm -f "$(obj_path "$BAD" c)"
    o=$(obj_path "$BAD" d)
    cp "$W/src/d" "$o.new" && mv -f "$o.new" "$o" || no "replacing object d failed"
}

t_verity_mount_bad_store() {
    mkdir -p "$M2"
    "$CFS" mount "$IMG" "$M2" --basedir "$BAD" --verity --digest "$IMG_DIGEST" || no "mount --verity failed"
    cmp -s "$M2/b" "$W/src/b" || no "intact file b does not read back correctly"
}

# Reading FILE through the --verity mount fails with EIO.
t_verity_eio() {
    local err
    is_mounted "$M2" || no "the --verity mount is not there"
    if err=$(cat "$M2/$1" 2>&1 >/dev/null); then no "$1 was readable"; fi
    case $err in *"Input/output error"*) ;; *) no "expected EIO, got: $err" ;; esac
}

t_verity_missing_object() {
    local err rc
    is_mounted "$M2" || no "the --verity mount is not there"
    err=$(timeout 30 cat "$M2/c" 2>&1 >/dev/null)
    rc=$?
    [ $rc -ne 124 ] || no "reading the file with a missing object hung"
    [ $rc -ne 0 ] || no "file with a missing object was readable"
    [ -n "$err" ] || no "no error message"
    # The rest of the mount still works afterwards.
    cmp -s "$M2/b" "$W/src/b" || no "b no longer reads correctly"
}

# mkimage --from-dir --digest-store: objects get fs-verity enabled and are named by their
# digest (also one above the store's 1 MiB in-memory limit, written as a stream); the image then
# mounts with --digest (so also --verity) and reads back.
t_digest_store() {
    local src=$W/tree store=$V/store-dir img=$V/dir.cfs f n d
    mkdir -p "$src/sub" || no "mkdir failed"
    mkrand "$src/big" 100000; mkrand "$src/sub/f" 9000; printf 'tiny\n' >"$src/small"
    mkrand "$src/huge" 3000000
    "$CFS" mkimage --from-dir "$src" "$img" --digest-store "$store" || no "mkimage --from-dir --digest-store failed"
    n=0
    for f in $(find "$store" -type f); do
        d=$("$CFS" verity measure --compact "$f") || no "object $f has no fs-verity"
        [ "$d" = "$(basename "$(dirname "$f")")$(basename "$f")" ] || no "object $f measures $d"
        n=$((n + 1))
    done
    [ "$n" -ge 3 ] || no "expected the three large files in the store, found $n objects"
    "$CFS" verity enable "$img" || no "enable on the image failed"
    "$CFS" mount "$img" "$M" --basedir "$store" --digest "$(hexof "$img")" || no "mount of the dir image failed"
    for f in big huge sub/f small; do cmp -s "$M/$f" "$src/$f" || no "$f does not read back correctly"; done
}

# The drop-in `mkcomposefs --digest-store` (docs/dropin.md) on a verity filesystem: every object
# gets fs-verity, measures as its name, composefs-info measure-file reads the kernel's digest, and
# the image (hard links as separate inodes) mounts with --verity.
t_dropin_digest_store() {
    local src=$W/dropin-tree store=$V/dropin-store img=$V/dropin.cfs f n d
    ln -sf cfsmount "$W/mkcomposefs" && ln -sf cfsmount "$W/composefs-info" || no "personality links failed"
    mkdir -p "$src/sub" || no "mkdir failed"
    mkrand "$src/big" 100000; mkrand "$src/sub/f" 9000; printf 'tiny\n' >"$src/small"
    ln "$src/big" "$src/sub/big-link" || no "hard link failed"
    "$W/mkcomposefs" --digest-store="$store" "$src" "$img" || no "mkcomposefs --digest-store failed"
    n=0
    for f in $(find "$store" -type f); do
        d=$("$CFS" verity measure --compact "$f") || no "object $f has no fs-verity"
        [ "$d" = "$(basename "$(dirname "$f")")$(basename "$f")" ] || no "object $f measures $d"
        [ "$("$W/composefs-info" measure-file "$f")" = "$d" ] || no "composefs-info measure-file $f differs"
        n=$((n + 1))
    done
    [ "$n" -eq 2 ] || no "expected the two large files in the store, found $n objects"
    "$W/composefs-info" dump "$img" | grep -q '^/sub/big-link 100000 100644 1 ' || no "the hard link is not a separate inode"
    "$CFS" mount "$img" "$M" --basedir "$store" --verity || no "mount --verity of the mkcomposefs image failed"
    for f in big sub/f sub/big-link small; do cmp -s "$M/$f" "$src/${f/big-link/../big}" || no "$f does not read back"; done
}

# --try-verity on a kernel that offers verity=require behaves like --verity.
t_try_verity() {
    local err
    "$CFS" mount "$IMG" "$M" --basedir "$BAD" --try-verity || no "mount --try-verity failed"
    all_files_ok b
    if err=$(cat "$M/a" 2>&1 >/dev/null); then no "tampered object a was readable"; fi
    case $err in *"Input/output error"*) ;; *) no "expected EIO, got: $err" ;; esac
}

# mkimage --enable-verity seals the image it wrote: the kernel's measurement equals the digest
# --print-digest computed in userspace, and the image mounts with --digest right away.
t_mkimage_enable_verity() {
    local img=$V/sealed.cfs d m
    d=$("$CFS" mkimage --from-dir "$W/tree" "$img" --print-digest --enable-verity) || no "mkimage --enable-verity failed"
    m=$("$CFS" verity measure --compact "$img") || no "the image has no fs-verity after --enable-verity"
    [ "$m" = "$d" ] || no "kernel measures $m, --print-digest said $d"
    "$CFS" mount "$img" "$M" --basedir "$V/store-dir" --digest "$d" || no "mount --digest of the sealed image failed"
    cmp -s "$M/big" "$W/tree/big" || no "big does not read back"
}

# Documented limit: without --verity (and without --digest) objects are NOT checked.
t_no_verity_option_does_not_check() {
    "$CFS" mount "$IMG" "$M" --basedir "$BAD" || no "plain mount failed"
    cmp -s "$M/a" "$(obj_path "$BAD" a)" || no "expected the tampered bytes to be served without --verity"
    all_files_ok b d
}

# ---- the legacy overlay syntax, on a kernel that needs it ---------------------------------------
# Before 6.15 overlay cannot take a detached mount as a layer (EINVAL at creation). cfsmount
# confirms that with a probe overlay and builds the overlay with the legacy lowerdir= string in a
# private mount namespace of a child: the mount works, and none of its temporary layer mounts
# ever shows in this namespace (a poller watches the mount table the whole time).
t_legacy_private_namespace() {
    local err seen=$W/seen-temp-mounts i k n poll
    k=$(uname -r | awk -F. '{print $1 * 1000 + $2}')
    : >"$seen"
    rm -f "$W/stop-poll"
    (while [ ! -e "$W/stop-poll" ]; do grep ' /run/cfsmount' /proc/self/mountinfo >>"$seen"; done) &
    poll=$!
    for i in 1 2 3 4 5; do
        if ! err=$("$CFS" mount -v "$IMG" "$M" --basedir "$OBJ" 2>&1); then
            touch "$W/stop-poll"; wait "$poll"; no "mount failed: $err"
        fi
        for n in a b c d; do
            cmp -s "$M/$n" "$W/src/$n" || { touch "$W/stop-poll"; wait "$poll"; no "$n does not read back correctly"; }
        done
        "$CFS" umount "$M" || { touch "$W/stop-poll"; wait "$poll"; no "umount failed"; }
    done
    touch "$W/stop-poll"; wait "$poll"
    [ ! -s "$seen" ] || no "temporary mounts appeared in this namespace: $(head -n 2 "$seen")"
    if [ "$k" -lt 6015 ]; then
        case $err in *"legacy lowerdir string"*) ;; *) no "expected the legacy syntax on $(uname -r): $err" ;; esac
    fi
    echo "# legacy: $(printf '%s' "$err" | tail -n 1)" >&2
}

# ---- privileged helper: --toc --verity ---------------------------------------------------------
# The setuid helper, run by an unprivileged user (nobody), builds the image from a TOC. With
# --verity its sandboxed builder (running as that user) records each object's fs-verity digest,
# so verity=require serves the intact objects and refuses, with EIO, an object swapped after
# the build.
HV=$V/helper            # the setuid copy (the verity ext4 is not nosuid)
HU=$V/helper-user       # the caller's own files
as_nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups -- "$@"; }
build_helper_fixture() {
    local n sha size first=1
    mkdir -p "$HV" "$HU/store" "$HU/mnt" || no "mkdir failed"
    cp "$CFS" "$HV/cfsmount" && chown 0:0 "$HV/cfsmount" && chmod 4755 "$HV/cfsmount" || no "installing the setuid copy failed"
    {
        printf '{"version":1,"entries":[{"type":"dir","name":"./","mode":493}'
        for n in a b; do
            sha=$(sha256sum "$W/src/$n" | cut -c1-64)
            size=$(stat -c %s "$W/src/$n")
            mkdir -p "$HU/store/${sha:0:2}"
            cp "$W/src/$n" "$HU/store/${sha:0:2}/${sha:2}" || exit 1
            "$CFS" verity enable "$HU/store/${sha:0:2}/${sha:2}" || exit 1
            printf ',{"type":"reg","name":"%s","mode":420,"size":%s,"digest":"sha256:%s"}' "$n" "$size" "$sha"
            echo "SHA_$n=$sha" >>"$W/helper.env"
        done
        printf ']}\n'
    } >"$HU/toc.json" || no "writing the TOC or the store failed"
    chown -R 65534:65534 "$HU" || no "chown failed"
}
t_helper_toc_verity() {
    local err o
    . "$W/helper.env"
    as_nobody "$HV/cfsmount" mount "$HU/toc.json" "$HU/mnt" --toc --basedir "$HU/store" --verity \
        || no "privileged mount --toc --verity as nobody failed"
    grep " $HU/mnt " /proc/self/mounts | grep -q 'verity=require' || no "the overlay has no verity=require: $(grep " $HU/mnt " /proc/self/mounts)"
    cmp -s "$HU/mnt/b" "$W/src/b" || no "b does not read back through the verity=require mount"
    # swap object a (not read yet) for other content of the same size with verity of its own
    o=$HU/store/${SHA_a:0:2}/${SHA_a:2}
    mkrand "$o.new" 5000 && "$CFS" verity enable "$o.new" && chown 65534:65534 "$o.new" && mv -f "$o.new" "$o" || no "swapping object a failed"
    if err=$(cat "$HU/mnt/a" 2>&1 >/dev/null); then no "the swapped object a was served"; fi
    case $err in *"Input/output error"*) ;; *) no "expected EIO for the swapped object, got: $err" ;; esac
    as_nobody "$HV/cfsmount" umount "$HU/mnt" || no "umount as nobody failed"
    ! is_mounted "$HU/mnt" || no "still mounted after umount"
}

# ---- privileged helper: an image with fs-verity is mounted without a copy ----------------------
# The setuid helper, run by nobody, mounts the caller's own fs-verity image itself (the loop
# device's backing file is that file, not the helper's sealed memory copy), keys its remembered
# verdict by the kernel's fs-verity digest, checks --digest against the kernel's measurement,
# and still vets the image: one with a device node is refused. The same image without verity
# still goes through the sealed copy.
back_files() { losetup -n -l -O BACK-FILE 2>/dev/null; }
t_helper_verity_source() {
    local h=$HU/verity img plain dev vd t0 t1 n round
    . "$W/fixture.env"
    img=$h/image.cfs plain=$h/plain.cfs dev=$h/devnode.cfs vd=/run/cfsmount/verdicts
    mkdir -p "$h/mnt" && copy_store "$h/objs" && cp "$IMG" "$img" && cp "$IMG" "$plain" || no "copying the fixture failed"
    printf '/ 4096 40755 2 0 0 0 0.0 - - -\n/null 0 20644 1 0 0 259 0.0 - - -\n' >"$h/devnode.dump"
    "$CFS" mkimage --from-dump "$h/devnode.dump" "$dev" || no "mkimage of the device-node image failed"
    "$CFS" verity enable "$img" && "$CFS" verity enable "$dev" || no "verity enable failed"
    chown -R 65534:65534 "$h" || no "chown failed"
    rm -rf "$vd"
    for round in first repeated; do
        t0=${EPOCHREALTIME/./}
        as_nobody "$HV/cfsmount" mount "$img" "$h/mnt" --basedir "$h/objs" || no "$round helper mount of the verity image failed"
        t1=${EPOCHREALTIME/./}
        echo "# helper mount of the verity image ($round): $(((t1 - t0) / 1000)) ms" >&2
        back_files | grep -qx "$img" || no "$round mount: the loop device is not backed by $img: $(back_files | tr '\n' ' ')"
        for n in a b c d; do cmp -s "$h/mnt/$n" "$W/src/$n" || no "$n does not read back ($round mount)"; done
        as_nobody "$HV/cfsmount" umount "$h/mnt" || no "umount as nobody failed"
        [ -f "$vd/v2-65534-fsverity-$IMG_DIGEST" ] || no "no verdict keyed by the fs-verity digest after the $round mount: $(ls "$vd" 2>&1 | tr '\n' ' ')"
    done
    [ "$(ls "$vd" | wc -l)" = 1 ] || no "expected one verdict, found: $(ls "$vd" | tr '\n' ' ')"
    # --digest is checked against the kernel's measurement of that file.
    as_nobody "$HV/cfsmount" mount "$img" "$h/mnt" --basedir "$h/objs" --digest "$IMG_DIGEST" || no "mount with the right --digest failed"
    cmp -s "$h/mnt/b" "$W/src/b" || no "b does not read back (--digest mount)"
    as_nobody "$HV/cfsmount" umount "$h/mnt" || no "umount as nobody failed"
    M=$h/mnt refused "*does not match*" as_nobody "$HV/cfsmount" mount "$img" "$h/mnt" --basedir "$h/objs" --digest "${CONTENT_DIGEST[a]}"
    # Still vetted: a verity image with a device node is refused, and remembered as nothing.
    M=$h/mnt refused "*device node*" as_nobody "$HV/cfsmount" mount "$dev" "$h/mnt" --basedir "$h/objs"
    [ "$(ls "$vd" | wc -l)" = 1 ] || no "a verdict was recorded for the refused image: $(ls "$vd" | tr '\n' ' ')"
    # Without verity: the helper's copy, keyed by its BLAKE3 hash. With a tmpfs of its own on
    # /run/cfsmount/copies (as the packaged run-cfsmount-copies.mount makes; mounted here for
    # this test) the copy is kept, and the repeated mount is backed by that kept copy.
    local own_tmpfs= kept=
    if ! mountpoint -q /run/cfsmount/copies; then
        mkdir -p -m 700 /run/cfsmount/copies &&
            { mount -t tmpfs -o mode=0700,size=64m,huge=within_size cfsmount-copies /run/cfsmount/copies 2>/dev/null ||
                mount -t tmpfs -o mode=0700,size=64m cfsmount-copies /run/cfsmount/copies; } || no "mounting the copies tmpfs failed"
        own_tmpfs=1
    fi
    for round in first repeated; do
        t0=${EPOCHREALTIME/./}
        as_nobody "$HV/cfsmount" mount "$plain" "$h/mnt" --basedir "$h/objs" || no "$round helper mount of the image without verity failed"
        t1=${EPOCHREALTIME/./}
        echo "# helper mount of the same image without verity ($round): $(((t1 - t0) / 1000)) ms" >&2
        if [ $round = first ]; then
            back_files | grep -q '^/run/cfsmount/copies/' || no "the first mount of the image without verity is not backed by a new copy: $(back_files | tr '\n' ' ')"
        else
            kept=$(back_files | grep '^/run/cfsmount/copies/k2-' | head -1)
            [ -n "$kept" ] && cmp -s "$kept" "$plain" || no "the repeated mount is not backed by a kept copy of the image: $(back_files | tr '\n' ' ')"
        fi
        back_files | grep -qx "$plain" && no "the image without verity was mounted from the caller's file"
        cmp -s "$h/mnt/d" "$W/src/d" || no "d does not read back (copy, $round mount)"
        as_nobody "$HV/cfsmount" umount "$h/mnt" || no "umount as nobody failed"
    done
    local bv
    bv=$(ls "$vd" | grep -v fsverity | grep '^v2-65534-[0-9a-f]\{64\}$' | head -1)
    [ -n "$bv" ] || no "no BLAKE3 verdict for the copy: $(ls "$vd" | tr '\n' ' ')"
    # --digest on the copy: computed by the first such mount and kept in the copy's verdict,
    # which the second one compares with (shown by a digest root writes there: it decides); a
    # wrong digest is refused either way.
    grep -q fsverity= "$vd/$bv" && no "the verdict holds a digest before any --digest mount: $(cat "$vd/$bv")"
    for round in first repeated; do
        as_nobody "$HV/cfsmount" mount "$plain" "$h/mnt" --basedir "$h/objs" --digest "$IMG_DIGEST" ||
            no "$round --digest mount of the image without verity failed"
        cmp -s "$h/mnt/b" "$W/src/b" || no "b does not read back (--digest mount of the copy, $round)"
        as_nobody "$HV/cfsmount" umount "$h/mnt" || no "umount as nobody failed"
        grep -q " fsverity=$IMG_DIGEST\$" "$vd/$bv" || no "the verdict does not hold the digest after the $round --digest mount: $(cat "$vd/$bv")"
    done
    M=$h/mnt refused "*does not match*" as_nobody "$HV/cfsmount" mount "$plain" "$h/mnt" --basedir "$h/objs" --digest "${CONTENT_DIGEST[a]}"
    sed -i "s/ fsverity=$IMG_DIGEST\$/ fsverity=${CONTENT_DIGEST[a]}/" "$vd/$bv" || no "rewriting the verdict failed"
    M=$h/mnt refused "*fs-verity digest ${CONTENT_DIGEST[a]} does not match the expected $IMG_DIGEST*" \
        as_nobody "$HV/cfsmount" mount "$plain" "$h/mnt" --basedir "$h/objs" --digest "$IMG_DIGEST"
    sed -i "s/ fsverity=${CONTENT_DIGEST[a]}\$/ fsverity=$IMG_DIGEST/" "$vd/$bv" || no "restoring the verdict failed"
    # An image whose fs-verity has a salt: the kernel's measurement is not the composefs digest,
    # so --digest is computed (on the caller's file, mounted without a copy) and kept in the
    # verdict keyed by that measurement.
    local salted=$h/salted.cfs sm
    cp "$IMG" "$salted" && fsverity enable --salt=cf50 "$salted" && chown 65534:65534 "$salted" || no "a salted verity image failed"
    sm=$(fsverity measure "$salted" | sed -n 's/^sha256:\([0-9a-f]\{64\}\) .*/\1/p')
    [ -n "$sm" ] && [ "$sm" != "$IMG_DIGEST" ] || no "the salted image measures ${sm:-nothing}"
    for round in first repeated; do
        as_nobody "$HV/cfsmount" mount "$salted" "$h/mnt" --basedir "$h/objs" --digest "$IMG_DIGEST" ||
            no "$round --digest mount of the salted image failed"
        back_files | grep -qx "$salted" || no "the salted image was not mounted from the caller's file: $(back_files | tr '\n' ' ')"
        as_nobody "$HV/cfsmount" umount "$h/mnt" || no "umount as nobody failed"
        grep -q " fsverity=$IMG_DIGEST\$" "$vd/v2-65534-fsverity-$sm" ||
            no "the salted image's verdict does not hold the digest ($round): $(cat "$vd/v2-65534-fsverity-$sm" 2>&1)"
    done
    M=$h/mnt refused "*does not match*" as_nobody "$HV/cfsmount" mount "$salted" "$h/mnt" --basedir "$h/objs" --digest "${CONTENT_DIGEST[a]}"
    [ "$(stat -c %a:%u "$kept")" = 400:0 ] || no "the kept copy $kept is not root's and read-only"
    [ -z "$own_tmpfs" ] || umount /run/cfsmount/copies || no "unmounting the copies tmpfs failed"
    ! is_mounted "$h/mnt" || no "still mounted"
}

if mount_ready; then
    if (build_fixture) >"$W/fixture.log" 2>&1 && . "$W/fixture.env"; then
        run mount_digest_accepts_right_image t_digest_accepts
        run mkimage_digest_store_enables_verity_and_mounts t_digest_store
        run dropin_mkcomposefs_digest_store_enables_verity_and_mounts t_dropin_digest_store
        run mkimage_enable_verity_seals_image t_mkimage_enable_verity
        run mount_digest_refuses_wrong_digest t_digest_wrong
        run mount_digest_refuses_tampered_image t_digest_tampered_image
        run mount_digest_refuses_image_without_verity t_digest_nonverity_image
        run mount_helper_digest_option t_helper_digest_option
        run legacy_syntax_in_a_private_namespace t_legacy_private_namespace
        if (build_bad_store) >"$W/bad-store.log" 2>&1; then
            run mount_verity_with_damaged_store_intact_file_reads t_verity_mount_bad_store
            run mount_verity_tampered_object_is_eio t_verity_eio a
            run mount_verity_object_without_verity_is_eio t_verity_eio d
            run mount_verity_missing_object_fails_cleanly t_verity_missing_object
            unmount "$M2" || echo "FAIL mount_verity_unmount: $M2 still mounted"
            run mount_try_verity_checks_objects_here t_try_verity
            run mount_without_verity_does_not_check_objects t_no_verity_option_does_not_check
            if (build_helper_fixture) >"$W/helper-fixture.log" 2>&1; then
                run helper_toc_verity_records_and_enforces_object_digests t_helper_toc_verity
                is_mounted "$HU/mnt" && umount "$HU/mnt"
                run helper_mounts_verity_image_without_copy t_helper_verity_source
                is_mounted "$HU/verity/mnt" && umount "$HU/verity/mnt"
            else
                echo "FAIL helper_fixture: $(tail -n 3 "$W/helper-fixture.log" | tr '\n' ' ' | cut -c1-400)"
            fi
        else
            echo "FAIL mount_damaged_store: $(tail -n 3 "$W/bad-store.log" | tr '\n' ' ' | cut -c1-400)"
        fi
    else
        echo "FAIL mount_fixture: $(tail -n 3 "$W/fixture.log" | tr '\n' ' ' | cut -c1-400)"
    fi
else
    echo "FAIL mount_tests: this cfsmount has no working 'mount' and 'mkimage --from-dump' yet"
fi

# ---- OCI images in a store on a filesystem with fs-verity -----------------------------------

# The store seals objects and image; `oci mount` checks the image's digest and the objects'.
OS=$V/oci-store
OM=$W/mnt-oci
t_oci_store_verity() {
    local out obj img
    mkdir -p "$OM"
    out=$("$CFS" oci import "oci:$OUT/oci-hello:v1" --store "$OS") || no "oci import failed: $out"
    "$CFS" oci ls --store "$OS" | grep -q $'\ton\t' || no "oci ls does not show verity on: $("$CFS" oci ls --store "$OS")"
    img=$(ls -d "$OS"/images/*/image.cfs)
    [ "$("$CFS" verity measure "$img")" = "sha256:$(printf '%s' "$out" | cut -f2) $img" ] || no "image.cfs verity != recorded digest"
    "$CFS" oci mount "oci:$OUT/oci-hello:v1" "$OM" --store "$OS" || no "oci mount failed"
    grep " $OM " /proc/self/mounts | grep -q "verity=require" || no "no verity=require overlay: $(grep " $OM " /proc/self/mounts)"
    grep -q "flattened into one composefs image" "$OM/hello.txt" || no "hello.txt unreadable"
    [ ! -e "$OM/share/doc/old-notes.txt" ] || no "whiteout not applied"
    unmount "$OM" || no "umount failed"
    # An object swapped for other content of the same size (with verity of its own): EIO.
    local h
    h=$(printf 'Hello from an OCI image, flattened into one composefs image and mounted by cfsmount.\n' | sha256sum | cut -c1-64)
    obj=$OS/objects/${h:0:2}/${h:2}
    [ -f "$obj" ] || no "object of hello.txt not at $obj"
    "$CFS" verity measure "$obj" >/dev/null || no "object has no verity"
    head -c "$(stat -c %s "$obj")" /dev/zero | tr '\0' x >"$obj.new" && "$CFS" verity enable "$obj.new" && mv -f "$obj.new" "$obj" || no "swap failed"
    "$CFS" oci mount "oci:$OUT/oci-hello:v1" "$OM" --store "$OS" || no "oci mount after the swap failed"
    if out=$(cat "$OM/hello.txt" 2>&1 >/dev/null); then no "the swapped object was served"; fi
    case $out in *"Input/output error"*) ;; *) no "expected EIO, got: $out" ;; esac
    unmount "$OM" || no "umount failed"
    # A tampered image (with verity of its own) is refused at mount.
    cp "$img" "$img.t" && printf 'X' | dd of="$img.t" bs=1 seek=$(( $(stat -c %s "$img") - 1 )) conv=notrunc 2>/dev/null \
        && "$CFS" verity enable "$img.t" && mv -f "$img.t" "$img" || no "tampering the image failed"
    if out=$("$CFS" oci mount "oci:$OUT/oci-hello:v1" "$OM" --store "$OS" 2>&1); then no "tampered image mounted"; fi
    ! is_mounted "$OM" || no "something is mounted after the refusal"
    printf '%s' "$out" | grep -qi "digest" || no "refusal does not name the digest: $out"
}
run oci_store_verity_sealed_and_checked_at_mount t_oci_store_verity
unmount "$OM" 2>/dev/null

# ---- the Additional Layer Store on a verity filesystem --------------------------------------

# `als add` into a store on the verity ext4: every layer's overlay-form image is sealed and named
# by its fs-verity digest, every object it names is sealed, every diff mount is verity=require;
# an object swapped for other content reads as EIO through the ALS layer; rm leaves nothing.
AS=$V/als-store
AR=$W/als-root
t_als_verity() {
    local out n=0 img d key h obj
    out=$("$CFS" als add --root "$AR" --ref localhost/hello:v1 "oci:$OUT/oci-hello:v1" --store "$AS") \
        || no "als add failed: $out"
    for img in "$AS"/als-records/images/*.cfs; do
        d=$(basename "$img" .cfs)
        [ "$("$CFS" verity measure "$img")" = "sha256:$d $img" ] || no "$img is not sealed with its name's digest"
        n=$((n + 1))
    done
    [ "$n" = 2 ] || no "expected 2 layer images, found $n"
    n=$(grep -c " $AR/.layers/[^ ]*/diff overlay .*verity=require" /proc/self/mounts)
    [ "$n" = 2 ] || no "expected 2 verity=require diff mounts: $(grep " $AR/" /proc/self/mounts)"
    key=$(ls -d "$AR"/*/sha256:* | head -n 1)
    for key in "$AR"/*/sha256:*; do
        [ -f "$key/diff/hello.txt" ] && break
    done
    grep -q "flattened into one composefs image" "$key/diff/hello.txt" || no "hello.txt unreadable through $key/diff"
    h=$(sha256sum <"$key/diff/hello.txt" | cut -c1-64)
    obj=$AS/objects/${h:0:2}/${h:2}
    "$CFS" verity measure "$obj" >/dev/null || no "object $obj is not sealed"
    "$CFS" als umount-all --store "$AS" >/dev/null || no "umount-all failed"
    head -c "$(stat -c %s "$obj")" /dev/zero | tr '\0' x >"$obj.new" && "$CFS" verity enable "$obj.new" && mv -f "$obj.new" "$obj" \
        || no "swap failed"
    "$CFS" als mount-all --store "$AS" >/dev/null || no "mount-all failed"
    if out=$(cat "$key/diff/hello.txt" 2>&1 >/dev/null); then no "the swapped object was served"; fi
    case $out in *"Input/output error"*) ;; *) no "expected EIO, got: $out" ;; esac
    "$CFS" als rm --root "$AR" --ref localhost/hello:v1 --store "$AS" >/dev/null || no "als rm failed"
    ! grep -q " $AR" /proc/self/mounts || no "mounts left under $AR"
    [ -z "$(find "$AS/objects" -type f)" ] || no "objects left"
}
run als_store_verity_sealed_and_checked t_als_verity
"$CFS" als umount-all --force --store "$AS" >/dev/null 2>&1

# ---- layer import with --enable-verity ------------------------------------------------------

# A real zstd:chunked blob imported into a store on the verity ext4: every new object sealed,
# its fs-verity digest recorded in the image, the image sealed; a --verity mount then reads all.
# Objects already in the store are reused, and sealed if an earlier import left them unsealed.
t_layer_import_verity() {
    local L=$V/layer d n=0 o
    mkdir -p "$L/mnt" || no "mkdir failed"
    d=$("$CFS" mkimage --from-layer "$OUT/layer.blob" "$L/img" --objects "$L/objs" --enable-verity --print-digest) \
        || no "mkimage --from-layer --enable-verity failed"
    [ "$("$CFS" verity measure "$L/img")" = "sha256:$d $L/img" ] || no "the image is not sealed with digest $d"
    for o in "$L"/objs/??/*; do
        "$CFS" verity measure "$o" >/dev/null || no "object $o is not sealed"
        n=$((n + 1))
    done
    [ "$n" -gt 0 ] || no "no objects"
    "$CFS" mount "$L/img" "$L/mnt" --basedir "$L/objs" --digest "$d" --verity || no "--verity mount failed"
    find "$L/mnt" -type f -exec cat {} + >/dev/null || { umount "$L/mnt"; no "reading the files failed"; }
    [ -f "$L/mnt/opt/edge/new-in-layer-2.txt" ] || { umount "$L/mnt"; no "a file is missing"; }
    "$CFS" umount "$L/mnt" || no "umount failed"
    # A second import reuses the sealed objects.
    "$CFS" mkimage --from-layer "$OUT/layer.blob" "$L/img2" --objects "$L/objs" --enable-verity 2>"$L/err" \
        || no "second import failed: $(cat "$L/err")"
    grep -q "(0 new," "$L/err" || no "second import stored objects again: $(cat "$L/err")"
    cmp -s "$L/img" "$L/img2" || no "the second image differs"
    # Objects an import without --enable-verity left unsealed are sealed by one with it.
    "$CFS" mkimage --from-layer "$OUT/layer.blob" "$L/img3" --objects "$L/objs3" 2>/dev/null \
        || no "import without --enable-verity failed"
    for o in "$L"/objs3/??/*; do
        ! "$CFS" verity measure "$o" >/dev/null 2>&1 || no "object $o sealed without --enable-verity"
    done
    "$CFS" mkimage --from-layer "$OUT/layer.blob" "$L/img4" --objects "$L/objs3" --enable-verity 2>"$L/err" \
        || no "--enable-verity over unsealed objects failed: $(cat "$L/err")"
    for o in "$L"/objs3/??/*; do
        "$CFS" verity measure "$o" >/dev/null || no "existing object $o was not sealed"
    done
    cmp -s "$L/img" "$L/img4" || no "the image over formerly unsealed objects differs"
}
if [ -f "$OUT/layer.blob" ]; then
    run layer_import_enable_verity t_layer_import_verity
else
    echo "FAIL layer_import_enable_verity: no layer blob (conformance data missing on the host)"
fi

t_kernel_log_clean() {
    local bad
    bad=$(dmesg 2>/dev/null | grep -E 'BUG:|Oops|WARNING:|general protection|Call Trace' | head -n 3)
    [ -z "$bad" ] || no "kernel log: $bad"
}
run kernel_log_clean t_kernel_log_clean

umount "$V" 2>/dev/null
exit 0
