"""pyiceberg beside tarn on an Iceberg REST catalog, for tarn's `catalog.kind = "rest"` tests.

Subcommands (all print one JSON document on stdout):
  append  --uri URI --token TOKEN --table NS.T --ids 1,2,3
          appends one single-row batch per id (id, "py-<id>"), each its own commit. A commit
          that gets 409 (CommitFailedException) is retried on the refreshed table, up to 50
          times. Prints {"landed": [...], "retries": N}.
  read    --uri URI --token TOKEN --table NS.T
          the table's rows as sorted lists of strings, and its snapshots' operations.
"""
import argparse
import json
import time

import pyarrow as pa
from pyiceberg.catalog.rest import RestCatalog
from pyiceberg.exceptions import CommitFailedException


def catalog(args):
    return RestCatalog("tarn", uri=args.uri, token=args.token)


def append(args):
    table = catalog(args).load_table(args.table)
    id_field = table.schema().find_field("id")
    landed, retries = [], 0
    for i in [int(x) for x in args.ids.split(",")]:
        batch = pa.Table.from_pylist(
            [{"id": i, "name": f"py-{i}"}],
            schema=pa.schema(
                [
                    pa.field("id", pa.int64(), nullable=not id_field.required),
                    pa.field("name", pa.string()),
                ]
            ),
        )
        for _ in range(50):
            try:
                table.append(batch)
                landed.append(i)
                break
            except CommitFailedException:
                retries += 1
                time.sleep(0.02)
                table = catalog(args).load_table(args.table)
        else:
            raise SystemExit(f"append of {i} kept conflicting")
    print(json.dumps({"landed": landed, "retries": retries}))


def read(args):
    table = catalog(args).load_table(args.table)
    rows = sorted(
        [[None if v is None else str(v) for v in r.values()] for r in table.scan().to_arrow().to_pylist()],
        key=lambda r: [(v is None, v or "") for v in r],
    )
    operations = [s.summary.operation.value for s in table.snapshots()]
    print(json.dumps({"rows": rows, "operations": operations}))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["append", "read"])
    parser.add_argument("--uri", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--ids")
    args = parser.parse_args()
    {"append": append, "read": read}[args.command](args)


if __name__ == "__main__":
    main()
