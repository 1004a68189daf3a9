#!/bin/sh
# Installs a prebuilt tarn binary from a GitHub release of tarn.
#
#   curl -fsSL https://github.com/OWNER/REPO/releases/latest/download/install.sh | sh
#   curl -fsSL https://github.com/OWNER/REPO/releases/latest/download/install.sh | sh -s -- --to /usr/local/bin
#
# The copy attached to a release knows its repository; this copy in the source tree does not:
# set TARN_REPO=OWNER/REPO, or TARN_INSTALL_BASE_URL, when running it from a checkout.
# `sh install.sh --help` lists the options. POSIX sh; needs curl or wget, tar, and sha256sum
# or shasum. See docs/install.md.
set -eu

# Replaced by the release workflow with the repository the release belongs to.
TARN_REPO=${TARN_REPO:-__TARN_REPO__}

usage() {
  cat <<'EOF'
Installs tarn, a datalake in one binary, from a prebuilt release archive.

usage: install.sh [--version vX.Y.Z] [--to DIR]

  --version vX.Y.Z   the release to install (default: the latest release)
  --to DIR           where to put the tarn binary (default: $HOME/.local/bin)
  -h, --help         this help

Environment:
  TARN_REPO              the GitHub repository (OWNER/NAME) whose releases to install from
  TARN_INSTALL_BASE_URL  a directory URL holding the release files (tarn-VERSION-TARGET.tar.gz
                         and SHA256SUMS) to download from instead of GitHub; without
                         --version, the version is the one SHA256SUMS lists

Prebuilt for Linux (glibc) and macOS, on x86_64 and aarch64. The archive's SHA-256 is checked
against the release's SHA256SUMS before anything is installed. Elsewhere, build from source:
`cargo build --release --bin tarn` in a checkout of tarn.
EOF
}

say() { printf 'install: %s\n' "$*"; }
warn() { printf 'install: warning: %s\n' "$*" >&2; }
die() {
  printf 'install: error: %s\n' "$*" >&2
  exit 1
}
from_source="build tarn from source instead: \`cargo build --release --bin tarn\` in a checkout of tarn (see docs/install.md)"

version=""
dir=""
while [ $# -gt 0 ]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --version) [ $# -ge 2 ] || die "--version needs a value, e.g. --version v0.1.0"; version=$2; shift 2 ;;
    --version=*) version=${1#--version=}; shift ;;
    --to) [ $# -ge 2 ] || die "--to needs a directory"; dir=$2; shift 2 ;;
    --to=*) dir=${1#--to=}; shift ;;
    *) printf 'install: error: unknown argument: %s\n\n' "$1" >&2; usage >&2; exit 2 ;;
  esac
done
if [ -z "$dir" ]; then
  [ -n "${HOME:-}" ] || die "HOME is not set: say where to install with --to DIR"
  dir=$HOME/.local/bin
fi
case $version in
  "" | latest) version="" ;;
  v[0-9]* | [0-9]*) version=${version#v} ;;
  *) die "'$version' is not a version: use e.g. --version v0.1.0" ;;
esac

# The target triple of this machine, as the release archives are named.
os=$(uname -s)
arch=$(uname -m)
case $arch in
  x86_64 | amd64) arch=x86_64 ;;
  aarch64 | arm64) arch=aarch64 ;;
  *) die "no prebuilt tarn for the $arch architecture (there are x86_64 and aarch64 builds); $from_source" ;;
esac
case $os in
  Linux)
    if ldd --version 2>&1 | grep -qi musl; then
      die "the prebuilt tarn for Linux needs glibc and this system uses musl; $from_source"
    fi
    target=$arch-unknown-linux-gnu
    ;;
  Darwin)
    # A shell under Rosetta reports x86_64 on Apple silicon: take the native build.
    if [ "$arch" = x86_64 ] && [ "$(sysctl -n sysctl.proc_translated 2>/dev/null || true)" = 1 ]; then
      arch=aarch64
    fi
    target=$arch-apple-darwin
    ;;
  *) die "no prebuilt tarn for $os (there are Linux and macOS builds); $from_source" ;;
esac

# Where the release files are.
if [ -n "${TARN_INSTALL_BASE_URL:-}" ]; then
  base=${TARN_INSTALL_BASE_URL%/}
else
  case $TARN_REPO in
    */*) ;;
    *) die "this install script does not know which repository to download tarn from: set TARN_REPO=OWNER/NAME (the GitHub repository with tarn's releases), or TARN_INSTALL_BASE_URL to a URL holding the release files" ;;
  esac
  if [ -n "$version" ]; then
    base=https://github.com/$TARN_REPO/releases/download/v$version
  else
    # The latest release's SHA256SUMS (through GitHub's releases/latest redirect) names the
    # version; the archive then comes from that exact release.
    base=https://github.com/$TARN_REPO/releases/latest/download
  fi
fi

if command -v curl >/dev/null 2>&1; then
  fetch() { curl -fsSL --retry 3 -o "$2" "$1"; }
elif command -v wget >/dev/null 2>&1; then
  fetch() { wget -q -O "$2" "$1"; }
else
  die "needs curl or wget to download tarn"
fi
if command -v sha256sum >/dev/null 2>&1; then
  sha256() { sha256sum "$1" | awk '{print $1}'; }
elif command -v shasum >/dev/null 2>&1; then
  sha256() { shasum -a 256 "$1" | awk '{print $1}'; }
else
  die "needs sha256sum or shasum to check the download"
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/tarn-install.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fetch "$base/SHA256SUMS" "$tmp/SHA256SUMS" ||
  die "could not download $base/SHA256SUMS${version:+ (is v$version a tarn release?)}"
if [ -z "$version" ]; then
  archive=$(awk -v t="$target" '$2 ~ ("^tarn-[0-9][^ ]*-" t "\\.tar\\.gz$") {print $2; exit}' "$tmp/SHA256SUMS")
  [ -n "$archive" ] || die "the release at $base has no build for $target; $from_source"
  version=${archive#tarn-}
  version=${version%-"$target".tar.gz}
  if [ -z "${TARN_INSTALL_BASE_URL:-}" ]; then
    base=https://github.com/$TARN_REPO/releases/download/v$version
  fi
fi
name=tarn-$version-$target
archive=$name.tar.gz
expected=$(awk -v a="$archive" '$2 == a {print $1; exit}' "$tmp/SHA256SUMS")
[ -n "$expected" ] || die "tarn $version has no build for $target (SHA256SUMS lists none); $from_source"

say "downloading tarn $version for $target"
fetch "$base/$archive" "$tmp/$archive" || die "could not download $base/$archive"
actual=$(sha256 "$tmp/$archive")
if [ "$actual" != "$expected" ]; then
  die "checksum mismatch for $archive: SHA256SUMS says $expected, the download is $actual; nothing was installed"
fi
say "checksum ok ($actual)"

tar -xzf "$tmp/$archive" -C "$tmp" || die "could not unpack $archive"
[ -f "$tmp/$name/tarn" ] || die "$archive holds no $name/tarn"
chmod 755 "$tmp/$name/tarn"
# Run it before installing it: a system too old for the build (glibc) says so here.
if ! out=$("$tmp/$name/tarn" --version 2>&1); then
  die "the prebuilt tarn does not run on this system: $out; $from_source"
fi

mkdir -p "$dir" || die "could not create $dir"
dir=$(cd "$dir" && pwd)
# Copy next to the destination and rename: replacing a running tarn is safe.
cp "$tmp/$name/tarn" "$dir/.tarn.install.$$" || die "could not write to $dir (choose another with --to DIR)"
mv -f "$dir/.tarn.install.$$" "$dir/tarn"
say "installed $out to $dir/tarn"
case :${PATH:-}: in
  *:"$dir":* | *:"$dir"/:*) say "run: tarn --help" ;;
  *) warn "$dir is not on your PATH; add it (e.g. in your shell's profile): export PATH=\"$dir:\$PATH\"" ;;
esac
