#!/bin/bash
# dracut module: cfsmount setup-root in the initramfs (see cfsmount(8), "setup-root").
# Safe in every initramfs: without a composefs= argument the unit does not run (and
# setup-root would exit 0 anyway).

check() {
    require_binaries "${CFSMOUNT_BIN:-/usr/bin/cfsmount}" || return 1
    return 0
}

depends() {
    echo systemd
    return 0
}

installkernel() {
    # EROFS for the image, overlay for the tree, loop for kernels without file-backed EROFS.
    hostonly='' instmods erofs overlay loop
}

install() {
    # CFSMOUNT_BIN: a binary other than the installed one (tests, development builds).
    inst_binary "${CFSMOUNT_BIN:-/usr/bin/cfsmount}" /usr/bin/cfsmount
    inst_simple "$moddir/cfsmount-setup-root.service" "$systemdsystemunitdir/cfsmount-setup-root.service"
    if [ -e "${CFSMOUNT_SETUP_ROOT_CONF:-/etc/cfsmount/setup-root.conf}" ]; then
        inst_simple "${CFSMOUNT_SETUP_ROOT_CONF:-/etc/cfsmount/setup-root.conf}" /etc/cfsmount/setup-root.conf
    fi
    $SYSTEMCTL -q --root "$initdir" add-wants initrd-root-fs.target cfsmount-setup-root.service
}
