#!/usr/bin/env bash
# tarn without a database: installs what it needs, builds tarn, generates a sample data set,
# loads it into an Iceberg table, runs queries (incl. time travel), then serves the lake over
# the Postgres wire protocol and queries it with psql. (The main demo, with a live PostgreSQL
# and change data capture, is scripts/demo.sh.)
#
# Everything lands in ./tarn-demo-load (catalog.db + warehouse/); it is replaced on every run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --demo
echo "== building tarn (profile quick: about 4 minutes the first time on 2 cores, seconds after)"
cargo build --profile quick --bin tarn
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
tarn="$target_dir/quick/tarn"
export TARN_DATA_DIR="$PWD/tarn-demo-load"
rm -rf "$TARN_DATA_DIR"
mkdir -p "$TARN_DATA_DIR/source"

step() { echo; echo "== $*"; }

step "generating a sample data set: 1,000,000 taxi-style trips as Parquet"
"$tarn" sql "COPY (
  SELECT value AS trip_id,
         to_timestamp(1767225600 + value * 2) AS pickup_at,
         CASE value % 5 WHEN 0 THEN 'airport' WHEN 1 THEN 'downtown' WHEN 2 THEN 'harbor' WHEN 3 THEN 'campus' ELSE 'suburbs' END AS zone,
         (value % 7) + 1 AS passengers,
         round(((value * 7919) % 5000) / 100.0, 2) AS fare
  FROM generate_series(1, 1000000)
) TO '$TARN_DATA_DIR/source/trips.parquet' STORED AS PARQUET" >/dev/null

step "tarn load: Parquet -> Iceberg table demo.trips, partitioned by day(pickup_at)"
"$tarn" load "$TARN_DATA_DIR/source/trips.parquet" --table demo.trips --partition-by 'day(pickup_at)'

step "tarn table describe demo.trips"
"$tarn" table describe demo.trips

step "queries"
"$tarn" sql "SELECT zone, count(*) AS trips, round(avg(fare), 2) AS avg_fare FROM demo.trips GROUP BY zone ORDER BY trips DESC"
"$tarn" sql "SELECT date_trunc('day', pickup_at) AS day, count(*) AS trips FROM demo.trips WHERE pickup_at >= TIMESTAMP '2026-01-20' GROUP BY 1 ORDER BY 1 LIMIT 5"

step "a second commit, then time travel to the first snapshot"
first=$("$tarn" sql --format csv "SELECT snapshot_id FROM demo.\"trips\$snapshots\" ORDER BY committed_at LIMIT 1" | tail -n 1)
"$tarn" sql "INSERT INTO demo.trips VALUES (0, TIMESTAMP '2026-03-01 08:00:00', 'airport', 2, 42.00)"
"$tarn" sql "SELECT count(*) AS now FROM demo.trips; SELECT count(*) AS at_first_snapshot FROM demo.trips FOR VERSION AS OF $first"
"$tarn" table history demo.trips

step "tarn serve: the same lake over the Postgres wire protocol"
pg_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
http_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$tarn" --set auth.trust_loopback=true --set server.pg_listen=127.0.0.1:$pg_port --set server.http_listen=127.0.0.1:$http_port serve > "$TARN_DATA_DIR/serve.log" 2>&1 &
serve_pid=$!
trap 'kill $serve_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  if psql "postgres://demo@127.0.0.1:$pg_port/tarn" -Atc "SELECT 1" >/dev/null 2>&1; then break; fi
  sleep 0.2
done
echo "\$ psql postgres://demo@127.0.0.1:$pg_port/tarn"
psql "postgres://demo@127.0.0.1:$pg_port/tarn" -X -c '\dt demo.*' -c "SELECT zone, max(fare) FROM demo.trips GROUP BY zone ORDER BY zone"
echo "\$ curl http://127.0.0.1:$http_port/metrics (excerpt)"
python3 -c "import urllib.request; print('\n'.join(l for l in urllib.request.urlopen('http://127.0.0.1:$http_port/metrics').read().decode().splitlines() if l.startswith('tarn_'))[:600])"
kill -TERM $serve_pid
wait $serve_pid || true
trap - EXIT

step "done"
echo "The lake is in $TARN_DATA_DIR. Try:"
echo "  $tarn --data-dir $TARN_DATA_DIR sql            # interactive SQL"
echo "  $tarn --data-dir $TARN_DATA_DIR --set auth.trust_loopback=true serve   # then: psql postgres://you@127.0.0.1:5433/tarn"
