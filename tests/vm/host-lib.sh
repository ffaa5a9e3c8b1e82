# Sourced by the scripts that boot a VM with fs-verity (tests/vm/run-tier3.sh,
# benches/helper-vm.sh): what they look up on the host, written once.

# Prints the newest /boot/vmlinuz-* whose config has CONFIG_FS_VERITY=y (and modules installed).
verity_kernel() {
    local k v best=
    for k in /boot/vmlinuz-*; do
        [ -e "$k" ] || continue
        v=${k#/boot/vmlinuz-}
        grep -qx 'CONFIG_FS_VERITY=y' "/boot/config-$v" 2>/dev/null || continue
        [ -d "/lib/modules/$v" ] || continue
        best=$(printf '%s\n%s\n' "$best" "$v" | sed '/^$/d' | sort -V | tail -n1)
    done
    [ -n "$best" ] && echo "$best"
}

# Prints the path of virtme-ng's vng (on PATH, or where pip puts it).
find_vng() {
    local d
    command -v vng 2>/dev/null && return 0
    for d in "$(python3 -c 'import sys; print(sys.prefix)' 2>/dev/null)/bin" /usr/local/bin "$HOME/.local/bin"; do
        [ -x "$d/vng" ] && { echo "$d/vng"; return 0; }
    done
    return 1
}
