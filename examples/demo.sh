#!/usr/bin/env bash
# The main job on the bundled example: build cfsmount, import the two-layer OCI image in
# examples/oci-hello/oci (written by umoci; layer 2 deletes a file and makes a directory
# opaque) into a store, mount the flattened image, show it, unmount. Needs root (mounting);
# the store and the mount point live in a temporary directory that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo: mounting needs root (run it with sudo)" >&2; exit 1; }

cargo build --release --quiet
bin=$PWD/target/release/cfsmount
work=$(mktemp -d /tmp/cfsmount-demo.XXXXXX)
cleanup() { mountpoint -q "$work/mnt" && "$bin" umount "$work/mnt"; rm -rf "$work"; }
trap cleanup EXIT
store=$work/store

echo "== import oci:examples/oci-hello/oci:v1 (layout verified; layers read in the sandbox)"
"$bin" oci import oci:examples/oci-hello/oci:v1 --store "$store"
"$bin" oci ls --store "$store"

echo "== mount it (one flattened composefs image + the store's objects, through overlayfs)"
mkdir "$work/mnt"
"$bin" oci mount oci:examples/oci-hello/oci:v1 "$work/mnt" --store "$store"
findmnt -no FSTYPE,OPTIONS "$work/mnt"
(cd "$work/mnt" && find . | LC_ALL=C sort)
echo "== hello.txt through the mount"
cat "$work/mnt/hello.txt"
echo "== share/doc/old-notes.txt (deleted by layer 2):"
if [ -e "$work/mnt/share/doc/old-notes.txt" ]; then echo "demo: the whiteout was not applied" >&2; exit 1; fi
echo "   not there, as the whiteout says"

echo "== unmount"
"$bin" umount "$work/mnt"
echo "demo: ok"
