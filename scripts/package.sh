#!/bin/sh
# Packages a built tarn binary as a release archive:
#
#   OUTDIR/tarn-VERSION-TARGET.tar.gz   one top directory tarn-VERSION-TARGET/ holding the
#                                        `tarn` binary, README.md and LICENSE
#   OUTDIR/SHA256SUMS                    gets the archive's line (an older line for the same
#                                        archive name is replaced), `sha256sum -c` format
#
# Usage: scripts/package.sh TARGET BINARY OUTDIR VERSION
#   TARGET   the Rust target triple the binary was built for, e.g. x86_64-unknown-linux-gnu
#   BINARY   path of the built `tarn` binary
#   OUTDIR   where the archive and SHA256SUMS go (created if missing)
#   VERSION  tarn's version, e.g. 0.1.0 (a leading "v", as in a tag, is dropped)
#
# The names match the install script (scripts/install.sh) and the `cargo binstall` metadata in
# crates/tarn-server/Cargo.toml. Used by .github/workflows/release.yml; runs on Linux and macOS.
set -eu

if [ $# -ne 4 ]; then
  echo "usage: $0 TARGET BINARY OUTDIR VERSION" >&2
  exit 2
fi
target=$1
binary=$2
outdir=$3
version=${4#v}
root=$(cd "$(dirname "$0")/.." && pwd)

case $target in
  *-*-*) ;;
  *) echo "package: '$target' is not a target triple (e.g. x86_64-unknown-linux-gnu)" >&2; exit 2 ;;
esac
case $version in
  [0-9]*.[0-9]*.[0-9]*) ;;
  *) echo "package: '$4' is not a version (e.g. 0.1.0 or v0.1.0)" >&2; exit 2 ;;
esac
if [ ! -f "$binary" ] || [ ! -x "$binary" ]; then
  echo "package: no executable binary at $binary" >&2
  exit 1
fi

if command -v sha256sum >/dev/null 2>&1; then
  sha256() { sha256sum "$1"; }
elif command -v shasum >/dev/null 2>&1; then
  sha256() { shasum -a 256 "$1"; }
else
  echo "package: needs sha256sum or shasum" >&2
  exit 1
fi

name="tarn-$version-$target"
archive="$name.tar.gz"
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
stage=$(mktemp -d "${TMPDIR:-/tmp}/tarn-package.XXXXXX")
trap 'rm -rf "$stage"' EXIT INT TERM

mkdir "$stage/$name"
cp "$binary" "$stage/$name/tarn"
chmod 755 "$stage/$name/tarn"
cp "$root/README.md" "$stage/$name/README.md"
if [ -f "$root/LICENSE" ]; then
  cp "$root/LICENSE" "$stage/$name/LICENSE"
else
  echo "package: warning: no LICENSE file in the repository; the archive ships without one" >&2
fi
chmod 644 "$stage/$name/README.md" "$stage/$name/LICENSE" 2>/dev/null || true

# Owner root, no macOS metadata (._ files, extended attributes): the archive unpacks cleanly
# with GNU tar and bsdtar alike.
if tar --version 2>/dev/null | grep -q 'GNU tar'; then
  tar_flags="--owner=0 --group=0 --numeric-owner"
else
  tar_flags="--uid 0 --gid 0 --no-xattrs --no-mac-metadata"
fi
# shellcheck disable=SC2086 # the flags are words
(cd "$stage" && COPYFILE_DISABLE=1 tar $tar_flags -czf "$name.tar.gz" "$name")
mv "$stage/$archive" "$outdir/$archive"

line=$(cd "$outdir" && sha256 "$archive")
sums="$outdir/SHA256SUMS"
{
  if [ -f "$sums" ]; then
    awk -v a="$archive" '$2 != a' "$sums"
  fi
  echo "$line"
} | sort -k2 >"$stage/SHA256SUMS"
mv "$stage/SHA256SUMS" "$sums"

size=$(wc -c <"$outdir/$archive" | tr -d ' ')
echo "package: $outdir/$archive ($size bytes)"
echo "package: $line"
