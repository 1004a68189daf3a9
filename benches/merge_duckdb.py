#!/usr/bin/env python3
"""Reference run of `tarn bench merge`: the same MERGE in DuckDB, on its own database file.

Usage:
    python benches/merge_duckdb.py --db FILE --rows N --changed C --updates U \
        [--threads T] [--runs R]

Builds the very tables `tarn bench merge` builds (same generator expressions): `target` with
N rows (ids 1..N) and `changes` with C rows, the first U of them updating ids spread evenly over
the target, the rest inserting new ids after N. Times a full-scan aggregate (best of R after a
warm-up), the MERGE (with a CHECKPOINT after it, so the change is in the database file as
tarn's is in its data files) and the aggregate again, and prints one JSON line:

    {"version": "1.5.5", "load_seconds": ..., "scan_before_seconds": ..., "merge_seconds": ...,
     "checkpoint_seconds": ..., "merged": C, "scan_after_seconds": ..., "rows_after": ...,
     "db_bytes_before": ..., "db_bytes_after": ...}
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import duckdb

SCAN = "SELECT count(*), sum(v), count(s), max(k) FROM target"


def best_of(con: duckdb.DuckDBPyConnection, sql: str, runs: int) -> tuple[float, tuple]:
    row = con.execute(sql).fetchone()  # warm-up
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        row = con.execute(sql).fetchone()
        best = min(best, time.perf_counter() - start)
    return best, row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, type=Path, help="database file (replaced)")
    parser.add_argument("--rows", required=True, type=int)
    parser.add_argument("--changed", required=True, type=int)
    parser.add_argument("--updates", required=True, type=int)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    if args.rows <= 0 or args.changed <= 0 or not 0 <= args.updates <= args.changed:
        print("error: need --rows > 0, --changed > 0 and 0 <= --updates <= --changed", file=sys.stderr)
        return 2
    stride = args.rows // max(args.updates, 1)
    for path in (args.db, Path(str(args.db) + ".wal")):
        if path.exists():
            path.unlink()
    con = duckdb.connect(str(args.db))
    con.execute(f"SET threads = {args.threads}")

    start = time.perf_counter()
    con.execute(
        "CREATE TABLE target AS SELECT value AS id, value % 1000 AS k, value * 0.5 AS v, "
        f"'row ' || value AS s FROM range(1, {args.rows} + 1) r(value)"
    )
    con.execute(
        f"CREATE TABLE changes AS SELECT CASE WHEN value <= {args.updates} THEN value * {stride} "
        f"ELSE {args.rows} + value - {args.updates} END AS id, value % 7 AS k, value * 2.0 AS v, "
        f"'changed ' || value AS s FROM range(1, {args.changed} + 1) r(value)"
    )
    con.execute("CHECKPOINT")
    load_seconds = time.perf_counter() - start
    db_bytes_before = args.db.stat().st_size

    scan_before, _ = best_of(con, SCAN, args.runs)

    start = time.perf_counter()
    merged = con.execute(
        "MERGE INTO target t USING changes c ON t.id = c.id "
        "WHEN MATCHED THEN UPDATE SET k = c.k, v = c.v, s = c.s "
        "WHEN NOT MATCHED THEN INSERT VALUES (c.id, c.k, c.v, c.s)"
    ).fetchone()
    merge_seconds = time.perf_counter() - start
    start = time.perf_counter()
    con.execute("CHECKPOINT")
    checkpoint_seconds = time.perf_counter() - start

    scan_after, row = best_of(con, SCAN, args.runs)
    result = {
        "version": duckdb.__version__,
        "load_seconds": load_seconds,
        "scan_before_seconds": scan_before,
        "merge_seconds": merge_seconds,
        "checkpoint_seconds": checkpoint_seconds,
        "merged": merged[0] if merged else None,
        "scan_after_seconds": scan_after,
        "rows_after": row[0],
        "db_bytes_before": db_bytes_before,
        "db_bytes_after": args.db.stat().st_size,
    }
    con.close()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
