#!/usr/bin/env bash
# How examples/oci-hello/oci was made (kept for the record; the demo does not run this).
# Two layers written by GNU tar from the small trees below (nothing machine-specific: fixed
# mtimes, owner 0:0), assembled into an OCI image layout by umoci 0.4.7 (Debian bookworm).
# Layer 2 deletes share/doc/old-notes.txt (whiteout), makes data/ opaque and adds files.
set -euo pipefail
out=${1:?usage: make-layout.sh OUTDIR}
w=$(mktemp -d); trap 'rm -rf "$w"' EXIT
mkdir -p "$w"/t1/share/doc "$w"/t1/data "$w"/t2/share/doc "$w"/t2/data
cd "$w"
printf 'Hello from an OCI image, flattened into one composefs image and mounted by cfsmount.\n' > t1/hello.txt
ln -s hello.txt t1/greeting
printf 'This file is deleted by the second layer (an OCI whiteout).\n' > t1/share/doc/old-notes.txt
printf 'cfsmount example image: two layers written by GNU tar, assembled by umoci.\n' > t1/share/doc/README
printf 'one\n' > t1/data/one.txt; printf 'two\n' > t1/data/two.txt
: > t2/share/doc/.wh.old-notes.txt
: > t2/data/.wh..wh..opq
printf 'Only this file is left in data/: the second layer made the directory opaque.\n' > t2/data/new.txt
printf 'Added by the second layer.\n' > t2/layer2.txt
chmod 0644 t1/hello.txt t1/share/doc/* t1/data/* t2/share/doc/.wh.old-notes.txt t2/data/* t2/layer2.txt
chmod 0755 t1 t1/share t1/share/doc t1/data t2 t2/share t2/share/doc t2/data
taropts=(--format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime
         --sort=name --numeric-owner --owner=0 --group=0 --mtime=@1714564800)
tar "${taropts[@]}" -C t1 -cf layer1.tar .
tar "${taropts[@]}" -C t2 -cf layer2.tar share data layer2.txt
umoci init --layout oci
umoci new --image oci:v1
umoci config --image oci:v1 --created 2024-05-01T12:00:00Z --history.created 2024-05-01T12:00:00Z \
    --config.cmd /bin/sh --os linux --architecture amd64
umoci raw add-layer --image oci:v1 --history.created 2024-05-01T12:00:00Z \
    --history.created_by 'layer 1 (GNU tar)' layer1.tar
umoci raw add-layer --image oci:v1 --history.created 2024-05-01T12:00:01Z \
    --history.created_by 'layer 2 (GNU tar): a whiteout, an opaque directory, new files' layer2.tar
umoci gc --layout oci
cp -r oci "$out"
