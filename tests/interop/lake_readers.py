"""Independent readers of a tarn lake, for tarn's interoperability tests.

Subcommands (all print JSON on stdout):
  read     --uri URI --warehouse WH --name CATALOG --table NS.T
           rows of the table as read by pyiceberg's SqlCatalog and by DuckDB's iceberg_scan
           on the metadata file the catalog points at: {"pyiceberg": [...], "duckdb": [...],
           "snapshots": N}. Rows are lists of strings (None for NULL), sorted.
  write    --uri URI --warehouse WH --name CATALOG --table NS.T
           creates NS.T with pyiceberg (id long, name string, score double, day date)
           and appends 3 rows.
  append   --uri URI --warehouse WH --name CATALOG --table NS.T
           appends 2 more rows with pyiceberg.
"""
import argparse
import datetime
import glob
import json
import os
import sys

import pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog


def catalog(args):
    return SqlCatalog(args.name, uri=args.uri, warehouse=args.warehouse)


def norm(v):
    if v is None:
        return None
    if isinstance(v, float):
        return repr(round(v, 6))
    if isinstance(v, datetime.datetime):
        return v.replace(tzinfo=None).isoformat()
    return str(v)


def rows_of(table: pa.Table):
    cols = [table.column(i).to_pylist() for i in range(table.num_columns)]
    rows = [[norm(c[r]) for c in cols] for r in range(table.num_rows)]
    return sorted(rows, key=lambda r: [(x is None, x or "") for x in r])


def duckdb_rows(metadata_location):
    import duckdb
    import duckdb_extension_avro
    import duckdb_extension_iceberg

    con = duckdb.connect()
    con.execute("SET autoinstall_known_extensions=false")
    con.execute("SET autoload_known_extensions=false")
    for mod, name in ((duckdb_extension_avro, "avro"), (duckdb_extension_iceberg, "iceberg")):
        path = glob.glob(os.path.join(os.path.dirname(mod.__file__), "extensions", "*", f"{name}.duckdb_extension"))[0]
        con.execute(f"LOAD '{path}'")
    loc = metadata_location.removeprefix("file://")
    return rows_of(con.execute(f"SELECT * FROM iceberg_scan('{loc}')").fetch_arrow_table())


def read(args):
    table = catalog(args).load_table(args.table)
    out = {
        "pyiceberg": rows_of(table.scan().to_arrow()),
        "duckdb": duckdb_rows(table.metadata_location),
        "snapshots": len(table.metadata.snapshots),
        "format_version": table.metadata.format_version,
    }
    print(json.dumps(out))


SCHEMA = pa.schema([
    pa.field("id", pa.int64(), nullable=False),
    pa.field("name", pa.string()),
    pa.field("score", pa.float64()),
    pa.field("day", pa.date32()),
])


def write(args):
    cat = catalog(args)
    ns = args.table.split(".")[0]
    if (ns,) not in cat.list_namespaces():
        cat.create_namespace(ns)
    table = cat.create_table(args.table, schema=SCHEMA)
    table.append(pa.table({
        "id": [1, 2, 3],
        "name": ["alpha", "beta", None],
        "score": [1.5, None, 3.25],
        "day": [datetime.date(2026, 1, 1), datetime.date(2026, 2, 1), None],
    }, schema=SCHEMA))
    print(json.dumps({"created": args.table}))


def append(args):
    table = catalog(args).load_table(args.table)
    table.append(pa.table({
        "id": [10, 11],
        "name": ["py1", "py2"],
        "score": [10.0, 11.0],
        "day": [datetime.date(2026, 3, 1), datetime.date(2026, 3, 2)],
    }, schema=SCHEMA))
    print(json.dumps({"appended": 2}))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["read", "write", "append"])
    parser.add_argument("--uri", required=True)
    parser.add_argument("--warehouse", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--table", required=True)
    args = parser.parse_args()
    {"read": read, "write": write, "append": append}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
