#!/usr/bin/env bash
# Runs all of tarn's tests: unit tests, the integration test binary (real PostgreSQL, an S3
# server, pyiceberg, DuckDB, psql, psycopg, pgjdbc) and the sqllogictest files.
# Installs what the tests need first (scripts/setup.sh). Extra arguments go to nextest,
# e.g. `bash scripts/test.sh pgwire` runs only tests whose name contains "pgwire".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --workspace --all-targets
cargo nextest run --release --workspace --no-fail-fast "$@"
