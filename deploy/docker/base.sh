#!/bin/sh
# Writes to stdout a tar of the shared libraries BINARY links (as this host's ldd resolves
# them), at the paths ldd names: the root filesystem of the `BASE` stage of
# deploy/Dockerfile, for machines that cannot pull an image (the CI builds the image this way):
#
#   deploy/docker/base.sh target/release/goroscope | docker import - goroscope-base:local
#
# Taking the libraries from the host that built the binary guarantees they are the glibc it
# was linked against. Files only (symlinks resolved), owned by root, reproducible.
set -eu
bin=${1:?usage: deploy/docker/base.sh BINARY > base.tar}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
chmod 755 "$root"
# `ldd` lines: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" and
# "/lib64/ld-linux-x86-64.so.2 (0x…)"; the vDSO has no path.
libs=$(ldd "$bin" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) { print $i; break } }')
[ -n "$libs" ] || { echo "base.sh: ldd found no shared libraries in $bin" >&2; exit 1; }
for lib in $libs; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
tar -C "$root" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -c .
