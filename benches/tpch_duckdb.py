#!/usr/bin/env python3
"""Reference TPC-H run with DuckDB over the Parquet files tarn wrote.

Usage:
    python benches/tpch_duckdb.py --tables TABLES_JSON --queries DIR \
        [--runs N] [--threads T] --out RESULT_JSON

TABLES_JSON maps table names to lists of local Parquet data-file paths
(optionally ``file://`` prefixed), e.g.
    {"lineitem": ["/data/a.parquet", ...], "orders": [...], ...}

Each ``qNN.sql`` in DIR (sorted) is run once to warm up, then N timed runs;
the best (minimum) wall time and the row count are recorded.

With ``--serve`` the script instead reads query names (``q05``) from standard
input, one per line, runs each once and answers with one JSON line
(``{"query": "q05", "seconds": 0.12, "rows": 5}`` or ``{"query": ..., "error": ...}``):
``tarn bench tpch`` alternates its own runs with these, so both engines meet the
same load on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import NoReturn

import duckdb

IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def fail(msg: str) -> NoReturn:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def strip_file_prefix(path: str) -> str:
    if path.startswith("file://"):
        return path[len("file://"):]
    return path


def sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def load_tables(path: Path) -> dict[str, list[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"cannot read tables file {path}: {exc}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"tables file {path} is not valid JSON: {exc}")
    if not isinstance(data, dict) or not data:
        fail(f"tables file {path} must be a non-empty JSON object of table -> [paths]")
    tables: dict[str, list[str]] = {}
    for name, files in data.items():
        if not isinstance(name, str) or not IDENT_RE.match(name):
            fail(f"tables file {path}: invalid table name {name!r}")
        if (
            not isinstance(files, list)
            or not files
            or not all(isinstance(f, str) and f for f in files)
        ):
            fail(f"tables file {path}: table {name!r} must map to a non-empty list of path strings")
        tables[name] = [strip_file_prefix(f) for f in files]
    return tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", required=True, type=Path, help="JSON file: table -> list of Parquet files")
    parser.add_argument("--queries", required=True, type=Path, help="directory holding qNN.sql files")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per query (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="DuckDB threads (default 2)")
    parser.add_argument("--out", type=Path, help="result JSON file to write (required without --serve)")
    parser.add_argument("--serve", action="store_true", help="answer query names read from stdin, one run each")
    args = parser.parse_args(argv)

    if args.runs < 1:
        parser.error("--runs must be >= 1")
    if args.threads < 1:
        parser.error("--threads must be >= 1")

    tables = load_tables(args.tables)

    if not args.queries.is_dir():
        fail(f"queries directory {args.queries} does not exist")
    query_files = sorted(p for p in args.queries.glob("q*.sql") if re.fullmatch(r"q\d+\.sql", p.name))
    if not query_files:
        fail(f"no qNN.sql files found in {args.queries}")

    con = duckdb.connect(":memory:")
    con.execute(f"SET threads={int(args.threads)}")
    for name, files in tables.items():
        file_list = ", ".join(sql_string(f) for f in files)
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet([{file_list}])")

    if args.serve:
        return serve(con, {p.stem: p for p in query_files})
    if args.out is None:
        parser.error("--out is required without --serve")

    results: dict[str, dict[str, object]] = {}
    for qfile in query_files:
        qname = qfile.stem
        try:
            sql = qfile.read_text(encoding="utf-8").strip()
            con.execute(sql).fetchall()  # warm-up
            best = float("inf")
            rows = 0
            for _ in range(args.runs):
                start = time.perf_counter()
                out = con.execute(sql).fetchall()
                elapsed = time.perf_counter() - start
                best = min(best, elapsed)
                rows = len(out)
            results[qname] = {"seconds": round(best, 6), "rows": rows}
            print(f"{qname} {best:.3f}s {rows} rows", flush=True)
        except Exception as exc:  # noqa: BLE001 - record and continue
            msg = str(exc).strip() or type(exc).__name__
            results[qname] = {"error": msg}
            print(f"{qname} ERROR {msg.splitlines()[0] if msg else ''}", flush=True)

    report = {
        "engine": "duckdb",
        "duckdb_version": duckdb.__version__,
        "threads": args.threads,
        "queries": results,
    }
    if args.out.parent and not args.out.parent.exists():
        args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


def serve(con: duckdb.DuckDBPyConnection, queries: dict[str, Path]) -> int:
    """Runs each query named on stdin once and answers with a JSON line."""
    for line in sys.stdin:
        name = line.strip()
        if not name:
            continue
        answer: dict[str, object] = {"query": name}
        try:
            if name not in queries:
                raise ValueError(f"no query {name!r}")
            sql = queries[name].read_text(encoding="utf-8").strip()
            start = time.perf_counter()
            out = con.execute(sql).fetchall()
            answer["seconds"] = round(time.perf_counter() - start, 6)
            answer["rows"] = len(out)
        except Exception as exc:  # noqa: BLE001 - answer and continue
            answer["error"] = str(exc).strip() or type(exc).__name__
        print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
