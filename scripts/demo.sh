#!/usr/bin/env bash
# tarn's demo, the README's first command: the whole data flow on this machine, from nothing.
# Installs what it needs (a C toolchain for the build, PostgreSQL's server binaries), builds
# tarn, then runs `tarn demo`: a private PostgreSQL with the example shop's schema, the shop's
# service and workload generator, change data capture into the Iceberg lake, and SQL over the
# lake on the Postgres wire endpoint, with a live line until Ctrl-C. See docs/demo.md.
#
# Arguments go to `tarn demo`, e.g. `bash scripts/demo.sh --duration 60s` or `--rate 50`.
# The lake lands in ./tarn-demo and stays readable afterwards:
#   tarn --data-dir tarn-demo sql "SELECT status, count(*) FROM shop.orders GROUP BY status"
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --demo
echo "== building tarn (profile quick: about 4 minutes the first time on 2 cores, seconds after)"
cargo build --profile quick --bin tarn
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
export TARN_DATA_DIR="$PWD/tarn-demo"
exec "$target_dir/quick/tarn" demo "$@"
