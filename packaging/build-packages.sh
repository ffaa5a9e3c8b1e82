#!/usr/bin/env bash
# Builds the .deb (cargo-deb) and the .rpm (rpmbuild) from ONE release build of cfsmount, puts them
# in target/packages/, and checks their contents without installing anything on this machine:
# setuid-root binary, mount.composefs link, the mkcomposefs/composefs-info/composefs-dump links,
# man page, /etc/cfsmount/helper.conf as a conffile / %config(noreplace), Conflicts: composefs,
# and that both packages carry target/release/cfsmount byte for byte.
# Needs cargo-deb, rpmbuild, dpkg-deb (tests/install-deps.sh installs them). See packaging/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in cargo cargo-deb rpmbuild rpm rpm2archive dpkg-deb dpkg-shlibdeps git make python3; do
    command -v "$tool" >/dev/null || { echo "build-packages: $tool not found (run tests/install-deps.sh)" >&2; exit 1; }
done

target_dir=$(cargo metadata --no-deps --format-version 1 --locked |
             python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
id=$(cargo pkgid --locked)
version=${id##*[#@]}
spec_version=$(sed -n 's/^Version:[[:space:]]*//p' packaging/cfsmount.spec)
if [ "$spec_version" != "$version" ]; then
    echo "build-packages: packaging/cfsmount.spec has Version $spec_version, Cargo.toml $version" >&2
    exit 1
fi
bin=$target_dir/release/cfsmount
out=$target_dir/packages
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The binary comes from the working tree, the rpm's Source0 from HEAD: say when they differ.
if [ -n "$(git status --porcelain --untracked-files=no -- src build.rs policy Cargo.toml Cargo.lock)" ]; then
    echo "build-packages: warning: uncommitted changes in the sources; the packaged binary is built" \
         "from the working tree, the .rpm's Source0 tarball from HEAD" >&2
fi

echo "== cargo build --release --locked --bin cfsmount"
cargo build --release --locked --bin cfsmount
rm -rf "$out"
mkdir -p "$out"

echo "== cargo deb"
# --no-strip: ship the binary exactly as built (see [package.metadata.deb] in Cargo.toml).
cargo deb --no-build --no-strip --no-separate-debug-symbols --output "$out/"

echo "== rpmbuild"
top=$tmp/rpmbuild
mkdir -p "$top"/{SOURCES,SPECS}
git archive --format=tar.gz --prefix="cfsmount-$version/" -o "$top/SOURCES/cfsmount-$version.tar.gz" HEAD
cp packaging/cfsmount.spec "$top/SPECS/"
# --nodeps: on Debian the rpm database knows nothing of cargo/rust/make; BuildRequires are for a
# distro build. cfsmount_target_dir makes %build/%install reuse the binary built above.
if ! rpmbuild -ba --nodeps --define "_topdir $top" --define "_tmppath $tmp" \
        --define "cfsmount_target_dir $target_dir" "$top/SPECS/cfsmount.spec" >"$tmp/rpmbuild.log" 2>&1; then
    cat "$tmp/rpmbuild.log" >&2
    echo "build-packages: rpmbuild failed" >&2
    exit 1
fi
sed -n '/^RPM build warnings:/,$p' "$tmp/rpmbuild.log"
cp "$top"/RPMS/*/*.rpm "$top"/SRPMS/*.src.rpm "$out/"

shopt -s nullglob
debs=("$out"/cfsmount_*.deb)
rpms=()
for f in "$out"/cfsmount-*.rpm; do case "$f" in *.src.rpm) ;; *) rpms+=("$f") ;; esac; done
if [ "${#debs[@]}" -ne 1 ] || [ "${#rpms[@]}" -ne 1 ]; then
    echo "build-packages: expected one .deb and one binary .rpm in $out, found: $(ls "$out")" >&2
    exit 1
fi
deb=${debs[0]}
rpmf=${rpms[0]}

# ---- checks ----
errors=0
fail() { echo "FAIL: $*" >&2; errors=$((errors + 1)); }
ok() { echo "ok:   $*"; }
# resolve DIR LINKTARGET: where a symlink in DIR pointing at LINKTARGET lands (lexically).
resolve() { case "$2" in /*) realpath -m -s "$2" ;; *) realpath -m -s "$1/$2" ;; esac; }
# check_link PKG PATH TARGET: PATH (a symlink) exists in the listing and resolves to TARGET.
check_link() {
    local pkg=$1 path=$2 want=$3
    local dest
    dest=$(awk -v p="$path" '$1 == p && $2 == "l" { print $5 }' "$tmp/list")
    if [ -z "$dest" ]; then fail "$pkg: $path is not a symlink in the package"
    elif [ "$(resolve "$(dirname "$path")" "$dest")" != "$want" ]; then fail "$pkg: $path -> $dest, not $want"
    else ok "$pkg: $path -> $dest"; fi
}
# check_file PKG PATH MODE OWNER: a regular file with that mode string and owner/group.
check_file() {
    local pkg=$1 path=$2 mode=$3 owner=$4
    local got
    got=$(awk -v p="$path" '$1 == p && $2 == "f" { print $3, $4 }' "$tmp/list")
    if [ -z "$got" ]; then fail "$pkg: $path missing (or not a regular file)"
    elif [ "$got" != "$mode $owner" ]; then fail "$pkg: $path is $got, want $mode $owner"
    else ok "$pkg: $path $got"; fi
}
# check_sbin_link PKG: mount.composefs in /usr/sbin or /sbin, pointing at /usr/bin/cfsmount.
check_sbin_link() {
    local p
    for p in /usr/sbin/mount.composefs /sbin/mount.composefs; do
        if awk -v p="$p" '$1 == p { f = 1 } END { exit !f }' "$tmp/list"; then
            check_link "$1" "$p" /usr/bin/cfsmount
            return
        fi
    done
    fail "$1: no mount.composefs in /usr/sbin or /sbin"
}
# check_man PKG: cfsmount.8 (compressed or not: brp-compress is distro-dependent) and the
# mount.composefs.8 link to it.
check_man() {
    local page
    page=$(awk '$1 ~ /^\/usr\/share\/man\/man8\/cfsmount\.8(\.[a-z0-9]+)?$/ { print $1 }' "$tmp/list")
    if [ -z "$page" ]; then fail "$1: no man page /usr/share/man/man8/cfsmount.8*"; return; fi
    check_file "$1" "$page" -rw-r--r-- root/root
    check_link "$1" "/usr/share/man/man8/mount.composefs.8${page#*/cfsmount.8}" "$page"
}
# check_personalities PKG: the drop-in links mkcomposefs, composefs-info, composefs-dump in
# /usr/bin resolve to /usr/bin/cfsmount, and their man1 links to the cfsmount.8 page.
check_personalities() {
    local t page
    page=$(awk '$1 ~ /^\/usr\/share\/man\/man8\/cfsmount\.8(\.[a-z0-9]+)?$/ { print $1 }' "$tmp/list")
    for t in mkcomposefs composefs-info composefs-dump; do
        check_link "$1" "/usr/bin/$t" /usr/bin/cfsmount
        [ -n "$page" ] && check_link "$1" "/usr/share/man/man1/$t.1${page#*/cfsmount.8}" "$page"
    done
}
check_scripts() { # PKG FILE: maintainer scripts must not create files dpkg/rpm do not track
    if grep -qE '(^|[^a-z])ln[[:space:]]' "$2"; then fail "$1: maintainer scripts create links:"; cat "$2" >&2
    else ok "$1: maintainer scripts create no links"; fi
}
check_binary() { # PKG FILE
    if cmp -s "$2" "$bin"; then ok "$1: usr/bin/cfsmount is byte-identical to $bin"
    else fail "$1: usr/bin/cfsmount differs from $bin (stripped or rebuilt?)"; fi
}

echo "== check $(basename "$deb")"
dpkg-deb -I "$deb"
dpkg-deb -c "$deb"
# listing as "path type mode owner/group linktarget"
dpkg-deb -c "$deb" | awk '{
    t = substr($1, 1, 1) == "l" ? "l" : substr($1, 1, 1) == "d" ? "d" : "f"
    p = substr($6, 2); sub(/\/$/, "", p)
    o = $2; if (o == "0/0") o = "root/root"    # cargo-deb stores numeric ids only
    print p, t, $1, o, ($7 == "->" ? $8 : "-") }' >"$tmp/list"
control=$(dpkg-deb -f "$deb" Package Version Depends | tr '\n' ' ')
# $auto in Cargo.toml resolves through dpkg-shlibdeps; without it the libc6 dependency is lost.
if [[ "$control" == "Package: cfsmount Version: $version"[-\ ]* && "$control" == *"Depends: "*libc6* ]]; then
    ok "deb: $control"
else fail "deb: control fields wrong (want cfsmount $version, Depends with libc6): $control"; fi
check_file deb /usr/bin/cfsmount -rwsr-xr-x root/root
check_sbin_link deb
check_man deb
check_personalities deb
if [[ "$(dpkg-deb -f "$deb" Conflicts)" == *composefs* ]]; then ok "deb: Conflicts: composefs"
else fail "deb: no Conflicts: composefs (the reference package ships the same commands)"; fi
check_file deb /etc/cfsmount/helper.conf -rw-r--r-- root/root
check_file deb /lib/systemd/system/cfsmount-als.service -rw-r--r-- root/root
check_file deb /lib/systemd/system/run-cfsmount-copies.mount -rw-r--r-- root/root
check_file deb /usr/lib/dracut/modules.d/90cfsmount/module-setup.sh -rwxr-xr-x root/root
check_file deb /usr/lib/dracut/modules.d/90cfsmount/cfsmount-setup-root.service -rw-r--r-- root/root
check_file deb /usr/share/initramfs-tools/hooks/cfsmount -rwxr-xr-x root/root
check_file deb /usr/share/initramfs-tools/scripts/local-bottom/cfsmount -rwxr-xr-x root/root
if dpkg-deb -I "$deb" conffiles 2>/dev/null | grep -qx /etc/cfsmount/helper.conf; then
    ok "deb: /etc/cfsmount/helper.conf is a conffile"
else fail "deb: /etc/cfsmount/helper.conf is not listed in conffiles"; fi
dpkg-deb -e "$deb" "$tmp/deb-control"
cat "$tmp/deb-control"/{preinst,postinst,prerm,postrm} >"$tmp/scripts" 2>/dev/null || true
check_scripts deb "$tmp/scripts"
dpkg-deb -x "$deb" "$tmp/deb-root"
check_binary deb "$tmp/deb-root/usr/bin/cfsmount"
if v=$("$tmp/deb-root/usr/bin/cfsmount" --version 2>&1) && [[ "$v" == *"$version"* ]]; then
    ok "deb: extracted cfsmount --version: $v"
else fail "deb: extracted cfsmount --version failed or lacks $version: $v"; fi

echo "== check $(basename "$rpmf")"
rpm -qip "$rpmf"
rpm -qlvp "$rpmf"
rpm -qp --scripts "$rpmf" | tee "$tmp/scripts"
rpm -qlvp "$rpmf" | awk '{
    t = substr($1, 1, 1) == "l" ? "l" : substr($1, 1, 1) == "d" ? "d" : "f"
    print $9, t, $1, $3 "/" $4, ($10 == "->" ? $11 : "-") }' >"$tmp/list"
nvr=$(rpm -qp --qf '%{NAME} %{VERSION} %{RELEASE} %{ARCH}' "$rpmf")
if [[ "$nvr" == "cfsmount $version "* ]]; then ok "rpm: $nvr"; else fail "rpm: $nvr is not cfsmount $version"; fi
check_file rpm /usr/bin/cfsmount -rwsr-xr-x root/root
check_sbin_link rpm
check_man rpm
check_personalities rpm
if rpm -qp --conflicts "$rpmf" | grep -qx composefs; then ok "rpm: Conflicts: composefs"
else fail "rpm: no Conflicts: composefs (the reference package ships the same commands)"; fi
check_file rpm /etc/cfsmount/helper.conf -rw-r--r-- root/root
check_file rpm /usr/lib/systemd/system/cfsmount-als.service -rw-r--r-- root/root
check_file rpm /usr/lib/systemd/system/run-cfsmount-copies.mount -rw-r--r-- root/root
check_file rpm /usr/lib/dracut/modules.d/90cfsmount/module-setup.sh -rwxr-xr-x root/root
check_file rpm /usr/lib/dracut/modules.d/90cfsmount/cfsmount-setup-root.service -rw-r--r-- root/root
# %config(noreplace) shows as file flags "cn".
flags=$(rpm -qp --qf '[%{FILENAMES} %{FILEFLAGS:fflags}\n]' "$rpmf" | awk '$1 == "/etc/cfsmount/helper.conf" { print $2 }')
if [[ "$flags" == *c* && "$flags" == *n* ]]; then ok "rpm: /etc/cfsmount/helper.conf is %config(noreplace)"
else fail "rpm: /etc/cfsmount/helper.conf file flags are '$flags', want %config(noreplace) (cn)"; fi
check_scripts rpm "$tmp/scripts"
mkdir "$tmp/rpm-root"
(cd "$tmp/rpm-root" && rpm2archive -n - <"$rpmf" | tar -xf -)
check_binary rpm "$tmp/rpm-root/usr/bin/cfsmount"

echo "== packages in $out"
for f in "$deb" "$rpmf" "$out"/*.src.rpm; do
    printf '%10d bytes  %s\n' "$(stat -c %s "$f")" "$(basename "$f")"
done
if [ "$errors" -ne 0 ]; then
    echo "build-packages: $errors check(s) failed" >&2
    exit 1
fi
echo "build-packages: all checks passed"
