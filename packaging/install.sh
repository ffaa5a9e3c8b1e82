#!/bin/sh
# Builds (release) and installs cfsmount as a privileged helper.
# usage: packaging/install.sh [setuid|caps|none] [PREFIX]
set -eu
cd "$(dirname "$0")/.."
mode=${1:-setuid}
prefix=${2:-/usr/local}
cargo build --release --locked --bin cfsmount
exec make -f packaging/Makefile install MODE="$mode" PREFIX="$prefix"
