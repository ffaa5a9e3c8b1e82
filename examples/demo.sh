#!/usr/bin/env bash
# The main job on the bundled example: build cfsmount, turn examples/hello/toc.json into a
# composefs image, mount it with its object directory, show the tree, unmount. Needs root
# (mounting); everything it creates lives in a temporary directory that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo: mounting needs root (run it with sudo)" >&2; exit 1; }

cargo build --release --quiet
bin=$PWD/target/release/cfsmount
work=$(mktemp -d /tmp/cfsmount-demo.XXXXXX)
cleanup() { mountpoint -q "$work/mnt" && "$bin" umount "$work/mnt"; rm -rf "$work"; }
trap cleanup EXIT

echo "== build the image from the TOC (parsed in the sandbox)"
digest=$("$bin" mkimage --from-toc --print-digest examples/hello/toc.json "$work/hello.img")
echo "image $work/hello.img, $(stat -c %s "$work/hello.img") bytes, fs-verity digest $digest"

echo "== mount it (EROFS metadata + objects from examples/hello/objects through overlayfs)"
mkdir "$work/mnt"
"$bin" mount "$work/hello.img" "$work/mnt" --basedir examples/hello/objects
findmnt -no FSTYPE,OPTIONS "$work/mnt"
ls -lR "$work/mnt"
echo "== hello.txt through the mount"
cat "$work/mnt/hello.txt"

echo "== unmount"
"$bin" umount "$work/mnt"
echo "demo: ok"
