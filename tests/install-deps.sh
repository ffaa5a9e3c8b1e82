#!/usr/bin/env bash
# Installs (Debian packages) what the test tiers need and a fresh machine may lack.
# Tier 3's VM kernel and virtme-ng are installed by tests/vm/run-tier3.sh itself, and dracut-core
# (bookworm-backports) by tests/vm/boot/run-boot.sh.
set -euo pipefail
pkgs=(erofs-utils fsverity util-linux mount passwd uidmap libcap2-bin strace time zstd hyperfine skopeo umoci
      gcc make python3 python3-pip qemu-system-x86 busybox-static e2fsprogs kmod xfsprogs
      mmdebstrap cpio xz-utils binutils  # boot tests (tests/vm/boot; dracut-core: backports there)
      rpm dpkg-dev   # for packaging/build-packages.sh: rpmbuild/rpm2archive, dpkg-shlibdeps
      podman runc docker-registry attr)  # tests/root_als.rs (podman 4.3.1, a registry, setfattr)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "install-deps: missing packages ${missing[*]} and not root to install them" >&2
        exit 1
    fi
    echo "install-deps: apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Tier 1 checks formatting and lints: the toolchain's rustfmt and clippy components.
if command -v rustup >/dev/null 2>&1; then
    for c in rustfmt clippy; do
        rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
    done
fi
# cargo-deb builds the .deb in packaging/build-packages.sh (a per-user cargo install, no root
# needed), pinned to the version the packaging was checked with (Cargo.toml uses its
# `{ dest, link_name }` symlink assets).
if ! command -v cargo-deb >/dev/null 2>&1; then
    echo "install-deps: cargo install cargo-deb"
    cargo install cargo-deb --locked --version 3.8.0
fi
