"""Independent readers of tarn's Kafka archive table, for tarn's archive tests.

  kafka_archive.py --uri URI --warehouse WH --name CATALOG --table NS.T

prints JSON on stdout:
  "pyiceberg":  the table's rows as pyiceberg's SqlCatalog scans them;
  "duckdb":     the rows of every Parquet file under the table's data directory, read by DuckDB
                straight from the files (no Iceberg metadata), each with the file's path
                relative to the data directory;
  "registered": the data files of the current snapshot (pyiceberg), relative paths, sorted;
  "on_disk":    every file under the data directory, relative paths, sorted.

A row is [topic, partition, offset, timestamp in ms since the epoch or null, timestamp type,
key as hex or null, value as hex or null, [[header key, header value as hex or null], ...]],
rows sorted by topic, partition, offset. DuckDB rows end with the file path.
"""
import argparse
import datetime
import glob
import json
import os
import sys

from pyiceberg.catalog.sql import SqlCatalog


def hexed(b):
    return None if b is None else bytes(b).hex()


def millis(ts):
    if ts is None:
        return None
    if isinstance(ts, datetime.datetime):
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=datetime.timezone.utc)
        delta = ts - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
        return (delta.days * 86_400_000_000 + delta.seconds * 1_000_000 + delta.microseconds) // 1000
    raise TypeError(f"unexpected timestamp {ts!r}")


def row(r):
    return [
        r["topic"],
        r["kafka_partition"],
        r["kafka_offset"],
        millis(r["kafka_timestamp"]),
        r["timestamp_type"],
        hexed(r["key"]),
        hexed(r["value"]),
        [[h["key"], hexed(h["value"])] for h in r["headers"]],
    ]


def local(location):
    return location.removeprefix("file://")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--uri", required=True)
    parser.add_argument("--warehouse", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--table", required=True)
    args = parser.parse_args()

    table = SqlCatalog(args.name, uri=args.uri, warehouse=args.warehouse).load_table(args.table)
    data_dir = local(table.metadata.location).rstrip("/") + "/data"
    key = lambda r: (r[0], r[1], r[2])
    pyiceberg_rows = sorted((row(r) for r in table.scan().to_arrow().to_pylist()), key=key)
    registered = sorted(
        os.path.relpath(local(task.file.file_path), data_dir) for task in table.scan().plan_files()
    )
    on_disk = sorted(
        os.path.relpath(p, data_dir)
        for p in glob.glob(os.path.join(data_dir, "**", "*"), recursive=True)
        if os.path.isfile(p)
    )

    import duckdb

    con = duckdb.connect()
    duckdb_rows = []
    files = [os.path.join(data_dir, f) for f in on_disk if f.endswith(".parquet")]
    if files:
        listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
        result = con.execute(
            f"SELECT *, filename FROM read_parquet([{listing}], filename = true, hive_partitioning = false)"
        ).fetch_arrow_table()
        for r in result.to_pylist():
            duckdb_rows.append(row(r) + [os.path.relpath(r["filename"], data_dir)])
    duckdb_rows.sort(key=key)

    print(json.dumps({
        "pyiceberg": pyiceberg_rows,
        "duckdb": duckdb_rows,
        "registered": registered,
        "on_disk": on_disk,
    }))


if __name__ == "__main__":
    sys.exit(main())
