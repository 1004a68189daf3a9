#!/usr/bin/env bash
# Prints `version=X.Y.Z`, the version of the tarn binary (crates/tarn-server), for a release
# build's $GITHUB_OUTPUT. On a tag (GITHUB_REF_TYPE=tag) the tag must be vX.Y.Z: the archive
# names, the install script and the `cargo binstall` metadata all assume it.
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(cargo metadata --format-version 1 --no-deps | python3 -c '
import json, sys
print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "tarn-server"))')
if [ "${GITHUB_REF_TYPE:-}" = tag ] && [ "${GITHUB_REF_NAME:-}" != "v$version" ]; then
  echo "::error::tag ${GITHUB_REF_NAME:-} does not match tarn's version $version: tag v$version, or set the version in Cargo.toml" >&2
  exit 1
fi
echo "version=$version"
