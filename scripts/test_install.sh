#!/usr/bin/env bash
# Tests the prebuilt path end to end on this machine: packages a built tarn binary with
# scripts/package.sh as a release would, serves the release directory on 127.0.0.1 with
# Python's http.server, and installs from it with scripts/install.sh (run by `sh`, so a
# bashism fails here). Checks that the installed tarn runs; that a corrupted archive is
# refused with a checksum error and nothing installed; the wget path; that the `cargo
# binstall` metadata names the same archive; the GitHub URLs the script builds once the
# release workflow has substituted the repository; and the messages for an unknown OS, an
# unknown architecture and an unknown repository.
#
# Usage: bash scripts/test_install.sh [TARN_BINARY]
# Without an argument it takes the quick-profile build the tests use in cargo's target
# directory (CARGO_TARGET_DIR is respected), building it if missing. Run by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)

binary=${1:-}
if [ -z "$binary" ]; then
  target_dir=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
  binary=$target_dir/quick/tarn
  if [ ! -x "$binary" ]; then
    echo "test_install: building $binary"
    cargo build --profile quick --bin tarn
  fi
fi
[ -x "$binary" ] || { echo "test_install: no tarn binary at $binary" >&2; exit 1; }
binary=$(cd "$(dirname "$binary")" && pwd)/$(basename "$binary")
expected_version=$("$binary" --version)
version=${expected_version#tarn }

# This machine's target, as install.sh should detect it (a mismatch fails the download).
case "$(uname -s)/$(uname -m)" in
  Linux/x86_64) target=x86_64-unknown-linux-gnu ;;
  Linux/aarch64 | Linux/arm64) target=aarch64-unknown-linux-gnu ;;
  Darwin/x86_64) target=x86_64-apple-darwin ;;
  Darwin/arm64 | Darwin/aarch64) target=aarch64-apple-darwin ;;
  *) echo "test_install: no release target for $(uname -s)/$(uname -m)" >&2; exit 1 ;;
esac
if [ "$(uname -s)" = Darwin ] && [ "$(sysctl -n sysctl.proc_translated 2>/dev/null || true)" = 1 ]; then
  target=aarch64-apple-darwin
fi

tmpdir=${TMPDIR:-/tmp}
work=$(mktemp -d "${tmpdir%/}/tarn-test-install.XXXXXX")
work=$(cd "$work" && pwd -P) # the path install.sh reports (macOS: /var is /private/var)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
# A signal ends the script through exit, so the EXIT trap stops the server.
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 141' PIPE
trap 'exit 143' TERM

checks=0
fail() {
  echo "test_install: FAILED: $*" >&2
  for f in "$work"/out "$work"/err; do [ -f "$f" ] && sed 's/^/    /' "$f" >&2; done
  exit 1
}
ok() { checks=$((checks + 1)); echo "test_install: ok: $*"; }
# run_install [ENV ARGUMENTS...]: runs install.sh (arguments: $install_args) with `sh` under
# `env ENV ARGUMENTS...`; its stdout and stderr go to $work/out and $work/err, its exit code to rc.
run_install() {
  set +e
  env "$@" sh "$PWD/scripts/install.sh" ${install_args[@]+"${install_args[@]}"} >"$work/out" 2>"$work/err"
  rc=$?
  set -e
}
expect_error() { # expect_error TEXT: install.sh failed and said TEXT
  [ "$rc" -ne 0 ] || fail "install.sh exited 0 where it should have failed with: $1"
  grep -qF -- "$1" "$work/err" || fail "install.sh did not say: $1"
}

# A release directory as the release workflow makes it.
mkdir -p "$work/release" "$work/bad"
sh scripts/package.sh "$target" "$binary" "$work/release" "$version" >/dev/null
archive=tarn-$version-$target.tar.gz
[ -f "$work/release/$archive" ] || fail "package.sh made no $archive"
(cd "$work/release" && grep -q "  $archive\$" SHA256SUMS) || fail "SHA256SUMS has no line for $archive"
[ "$(tar -tzf "$work/release/$archive" | sort | tr '\n' ' ')" = \
  "tarn-$version-$target/ tarn-$version-$target/LICENSE tarn-$version-$target/README.md tarn-$version-$target/tarn " ] ||
  fail "the archive does not hold exactly tarn-$version-$target/{tarn,README.md,LICENSE}"
ok "packaged $archive ($(wc -c <"$work/release/$archive" | tr -d ' ') bytes)"

# The `cargo binstall` metadata of tarn-server names the same archive and the binary in it.
binstall=$(cargo metadata --format-version 1 --no-deps | python3 -c '
import json, sys
version, target = sys.argv[1:]
package = next(p for p in json.load(sys.stdin)["packages"] if p["name"] == "tarn-server")
meta = package["metadata"]["binstall"]
values = {"repo": "https://github.com/acme/tarn", "version": version, "target": target,
          "bin": "tarn", "binary-ext": "", "name": package["name"]}
def render(template):
    for key, value in values.items():
        template = template.replace("{ %s }" % key, value)
    return template
print(meta["pkg-fmt"], render(meta["pkg-url"]), render(meta["bin-dir"]))
' "$version" "$target")
[ "$binstall" = "tgz https://github.com/acme/tarn/releases/download/v$version/$archive tarn-$version-$target/tarn" ] ||
  fail "the cargo binstall metadata does not match the release archive: $binstall"
ok "cargo binstall metadata names $archive and tarn-$version-$target/tarn"

# The same release with one byte of the archive changed.
cp "$work/release/SHA256SUMS" "$work/release/$archive" "$work/bad/"
printf 'X' | dd of="$work/bad/$archive" bs=1 seek=4096 conv=notrunc 2>/dev/null
cmp -s "$work/release/$archive" "$work/bad/$archive" && fail "could not corrupt the archive"

# Serve both on a free loopback port; http.server prints the port once it is listening.
: >"$work/server.log"
python3 -u -m http.server --bind 127.0.0.1 --directory "$work" 0 >>"$work/server.log" 2>&1 &
server_pid=$!
port=""
deadline=$(($(date +%s) + 20))
while [ -z "$port" ]; do
  port=$(sed -n 's/^Serving HTTP on 127\.0\.0\.1 port \([0-9][0-9]*\).*/\1/p' "$work/server.log")
  if [ -z "$port" ]; then
    kill -0 "$server_pid" 2>/dev/null || fail "http.server exited: $(cat "$work/server.log")"
    [ "$(date +%s)" -lt "$deadline" ] || fail "http.server did not start listening within 20 s"
    sleep 0.05
  fi
done
url=http://127.0.0.1:$port

# Install the latest release there (the version comes from SHA256SUMS).
install_args=(--to "$work/bin")
run_install TARN_INSTALL_BASE_URL="$url/release"
[ "$rc" -eq 0 ] || fail "install.sh failed (exit $rc)"
[ "$("$work/bin/tarn" --version)" = "$expected_version" ] || fail "the installed tarn does not print $expected_version"
grep -qF "checksum ok" "$work/out" || fail "install.sh did not report the checksum"
grep -qF "installed $expected_version to $work/bin/tarn" "$work/out" || fail "install.sh did not say where it installed"
grep -qF "$work/bin is not on your PATH" "$work/err" || fail "install.sh did not warn that $work/bin is not on PATH"
ok "installed from $url/release: $work/bin/tarn prints '$expected_version', PATH warning given"

# An explicit version, over an existing install, with the directory on PATH: no warning.
install_args=(--version "v$version" "--to=$work/bin")
run_install TARN_INSTALL_BASE_URL="$url/release/" PATH="$work/bin:$PATH"
[ "$rc" -eq 0 ] || fail "install.sh --version v$version failed (exit $rc)"
[ ! -s "$work/err" ] || fail "install.sh warned with its directory on PATH"
[ "$("$work/bin/tarn" --version)" = "$expected_version" ] || fail "the reinstalled tarn does not run"
ok "--version v$version over an existing install"

# A version the release does not have.
install_args=(--version 99.0.0 --to "$work/bin")
run_install TARN_INSTALL_BASE_URL="$url/release"
expect_error "tarn 99.0.0 has no build for $target"
ok "a missing version is refused"

# A corrupted archive is refused and nothing is installed.
install_args=(--to "$work/bin-bad")
run_install TARN_INSTALL_BASE_URL="$url/bad"
expect_error "checksum mismatch for $archive"
grep -qF "nothing was installed" "$work/err" || fail "install.sh did not say nothing was installed"
[ ! -e "$work/bin-bad/tarn" ] || fail "install.sh installed a corrupted archive"
ok "a corrupted archive is refused with a checksum error"

# With wget and without curl: a PATH holding only what install.sh needs (Linux).
if [ "$(uname -s)" = Linux ] && command -v wget >/dev/null 2>&1; then
  mkdir "$work/tools"
  for tool in sh uname ldd grep awk mktemp rm tar gzip sha256sum cp mv chmod mkdir wget; do
    ln -s "$(command -v "$tool")" "$work/tools/$tool"
  done
  install_args=(--to "$work/bin-wget")
  run_install TARN_INSTALL_BASE_URL="$url/release" PATH="$work/tools"
  [ "$rc" -eq 0 ] || fail "install.sh with only wget failed (exit $rc)"
  [ "$("$work/bin-wget/tarn" --version)" = "$expected_version" ] || fail "the tarn installed with wget does not run"
  ok "installed with wget and no curl"
fi

# Unknown OS and architecture, through a stand-in uname.
mkdir "$work/fake-os" "$work/fake-arch"
# shellcheck disable=SC2016 # the stand-ins' own "$1"
printf '#!/bin/sh\ncase "$1" in -s) echo Plan9 ;; -m) echo x86_64 ;; esac\n' >"$work/fake-os/uname"
# shellcheck disable=SC2016
printf '#!/bin/sh\ncase "$1" in -s) echo Linux ;; -m) echo riscv64 ;; esac\n' >"$work/fake-arch/uname"
chmod +x "$work/fake-os/uname" "$work/fake-arch/uname"
install_args=(--to "$work/bin-x")
run_install TARN_INSTALL_BASE_URL="$url/release" PATH="$work/fake-os:$PATH"
expect_error "no prebuilt tarn for Plan9"
expect_error "cargo build --release --bin tarn"
run_install TARN_INSTALL_BASE_URL="$url/release" PATH="$work/fake-arch:$PATH"
expect_error "no prebuilt tarn for the riscv64 architecture"
ok "unknown OS and architecture are named, with the from-source command"

# The source tree's copy does not know the repository.
install_args=(--to "$work/bin-x")
run_install -u TARN_REPO -u TARN_INSTALL_BASE_URL
expect_error "set TARN_REPO=OWNER/NAME"
expect_error "TARN_INSTALL_BASE_URL"
ok "without TARN_REPO and TARN_INSTALL_BASE_URL it says to set one"

# The release's copy (repository substituted as the release workflow does) asks GitHub for
# the latest release's SHA256SUMS, or for the tag's; a stand-in curl records the URL and fails,
# so nothing leaves this machine.
sed 's|__TARN_REPO__|acme/tarn|g' scripts/install.sh >"$work/install-release.sh"
mkdir "$work/fake-curl"
# shellcheck disable=SC2016 # the stand-in's own "$a"
printf '#!/bin/sh\nfor a; do case "$a" in http*) echo "$a" >>"%s/urls" ;; esac; done\nexit 22\n' "$work" >"$work/fake-curl/curl"
chmod +x "$work/fake-curl/curl"
set +e
env -u TARN_REPO -u TARN_INSTALL_BASE_URL PATH="$work/fake-curl:$PATH" sh "$work/install-release.sh" --to "$work/bin-x" >"$work/out" 2>"$work/err"
env -u TARN_REPO -u TARN_INSTALL_BASE_URL PATH="$work/fake-curl:$PATH" sh "$work/install-release.sh" --version v1.2.3 --to "$work/bin-x" >>"$work/out" 2>>"$work/err"
set -e
[ "$(cat "$work/urls")" = "https://github.com/acme/tarn/releases/latest/download/SHA256SUMS
https://github.com/acme/tarn/releases/download/v1.2.3/SHA256SUMS" ] ||
  fail "install.sh asked for unexpected URLs: $(cat "$work/urls")"
grep -qF "is v1.2.3 a tarn release?" "$work/err" || fail "install.sh did not name the missing release"
ok "the release's copy downloads from github.com/acme/tarn (latest, and --version v1.2.3)"

# --help
sh scripts/install.sh --help >"$work/out" || fail "install.sh --help failed"
grep -qF -- "--version vX.Y.Z" "$work/out" || fail "--help does not list --version"
grep -qF -- "--to DIR" "$work/out" || fail "--help does not list --to"
ok "--help"

echo "test_install: all $checks checks ok in $(($(date +%s) - started)) s"
