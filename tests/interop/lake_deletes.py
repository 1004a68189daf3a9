"""Reads a tarn table with pyiceberg and DuckDB, for tarn-lake's tests of delete files,
rewrites and schema evolution.

Usage: lake_deletes.py --uri URI --warehouse WH --name CATALOG --table NS.T

Prints JSON: {"columns": [...], "pyiceberg": [[...], ...], "duckdb": [[...], ...],
"operation": "<operation of the current snapshot>"}. Values are strings (None for NULL),
rows sorted; both readers must apply the table's position delete files.
"""
import argparse
import glob
import json
import os
import sys

from pyiceberg.catalog.sql import SqlCatalog


def norm(v):
    if v is None:
        return None
    if isinstance(v, float):
        return repr(round(v, 6))
    return str(v)


def rows_of(table):
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
        pattern = os.path.join(os.path.dirname(mod.__file__), "extensions", "*", f"{name}.duckdb_extension")
        con.execute(f"LOAD '{glob.glob(pattern)[0]}'")
    loc = metadata_location.removeprefix("file://")
    return rows_of(con.execute(f"SELECT * FROM iceberg_scan('{loc}')").fetch_arrow_table())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--uri", required=True)
    parser.add_argument("--warehouse", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--table", required=True)
    args = parser.parse_args()
    table = SqlCatalog(args.name, uri=args.uri, warehouse=args.warehouse).load_table(args.table)
    arrow = table.scan().to_arrow()
    snapshot = table.current_snapshot()
    print(json.dumps({
        "columns": arrow.column_names,
        "pyiceberg": rows_of(arrow),
        "duckdb": duckdb_rows(table.metadata_location),
        "operation": snapshot.summary.operation.value if snapshot else None,
    }))


if __name__ == "__main__":
    sys.exit(main())
