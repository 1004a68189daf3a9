"""Real Iceberg REST clients against `tarn serve`'s catalog, for tarn's REST catalog tests.

Subcommands (all print one JSON document on stdout):
  pyiceberg  --uri URI
             pyiceberg's RestCatalog end to end: namespaces (nested, properties, pagination),
             create table py.events, append, overwrite, delete rows, schema evolution, a second
             append, a staged create (create_table_transaction), rename and drop. Prints what
             pyiceberg saw at each step.
  read       --uri URI --table NS.T
             the table's rows through pyiceberg's RestCatalog and DuckDB's ATTACH (TYPE
             iceberg): {"pyiceberg": [...], "duckdb": [...], "snapshots": N}.
  append     --uri URI --table NS.T --ids 1,2,3
             appends rows with pyiceberg: the id, "py-<id>" in the first other string column.
  concurrent --uri URI --table NS.T --writers W --appends A
             W threads, each appending A single-row batches with its own ids; every append
             either lands or fails with CommitFailedException (pyiceberg itself refreshes and
             retries an append whose commit got 409 a few times first). Prints the ids that
             landed, the appends that failed, and the ids pyiceberg reads afterwards.
  duckdb     --uri URI
             what DuckDB's REST attach lists: schemas and tables.

Rows are lists of strings (None for NULL), sorted.
"""
import argparse
import datetime
import glob
import json
import os
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
from pyiceberg.catalog.rest import RestCatalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    NamespaceNotEmptyError,
    NoSuchNamespaceError,
    NoSuchTableError,
    TableAlreadyExistsError,
)
from pyiceberg.expressions import EqualTo
from pyiceberg.schema import Schema
from pyiceberg.types import DoubleType, LongType, NestedField, StringType


def catalog(uri):
    return RestCatalog("tarn", uri=uri)


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


def expect_error(kind, fn):
    try:
        fn()
    except kind as e:
        return type(e).__name__
    raise AssertionError(f"expected {kind.__name__}")


EVENTS = Schema(
    NestedField(1, "id", LongType(), required=True),
    NestedField(2, "name", StringType(), required=False),
    NestedField(3, "score", DoubleType(), required=False),
)


def arrow(rows, with_note=False):
    fields = [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("name", pa.string()),
        pa.field("score", pa.float64()),
    ]
    if with_note:
        fields.append(pa.field("note", pa.string()))
    schema = pa.schema(fields)
    cols = list(zip(*rows)) if rows else [[] for _ in fields]
    return pa.Table.from_arrays([pa.array(list(c), type=f.type) for c, f in zip(cols, fields)], schema=schema)


def pyiceberg_scenario(args):
    cat = catalog(args.uri)
    out = {}
    cat.create_namespace("py", {"owner": "pyiceberg"})
    cat.create_namespace(("py", "nested"))
    for name in ("a1", "a2", "a3"):
        cat.create_namespace(name)
    out["duplicate_namespace"] = expect_error(NamespaceAlreadyExistsError, lambda: cat.create_namespace("py"))
    out["namespaces"] = sorted(".".join(n) for n in cat.list_namespaces())
    out["children_of_py"] = sorted(".".join(n) for n in cat.list_namespaces("py"))
    out["py_properties"] = cat.load_namespace_properties("py")
    summary = cat.update_namespace_properties("py", removals={"owner", "nope"}, updates={"team": "data"})
    out["properties_update"] = {
        "updated": sorted(summary.updated),
        "removed": sorted(summary.removed),
        "missing": sorted(summary.missing),
    }
    out["py_properties_after"] = cat.load_namespace_properties("py")
    out["missing_namespace"] = expect_error(NoSuchNamespaceError, lambda: cat.load_namespace_properties("nope"))

    t = cat.create_table("py.events", schema=EVENTS, properties={"format-version": "2"})
    out["duplicate_table"] = expect_error(TableAlreadyExistsError, lambda: cat.create_table("py.events", schema=EVENTS))
    t.append(arrow([(1, "a", 1.5), (2, "b", 2.5), (3, "c", None)]))
    t.overwrite(arrow([(4, "d", 4.0), (5, "e", 5.0)]), overwrite_filter=EqualTo("id", 3))
    t.delete(delete_filter=EqualTo("id", 2))
    with t.update_schema() as update:
        update.add_column("note", StringType())
    t = cat.load_table("py.events")
    t.append(arrow([(6, "f", 6.0, "evolved")], with_note=True))
    t = cat.load_table("py.events")
    out["events"] = rows_of(t.scan().to_arrow())
    out["events_snapshots"] = len(t.metadata.snapshots)
    out["events_schema_id"] = t.metadata.current_schema_id
    out["table_exists"] = [cat.table_exists("py.events"), cat.table_exists("py.nope")]

    # A staged create: the commit creates the table.
    tx = cat.create_table_transaction("py.staged", schema=EVENTS)
    tx.append(arrow([(10, "staged", 1.0)]))
    tx.commit_transaction()
    out["staged"] = rows_of(cat.load_table("py.staged").scan().to_arrow())

    cat.create_table("py.tmp", schema=EVENTS).append(arrow([(7, "g", 7.0)]))
    cat.rename_table("py.tmp", "py.renamed")
    out["renamed"] = rows_of(cat.load_table("py.renamed").scan().to_arrow())
    out["old_name_gone"] = expect_error(NoSuchTableError, lambda: cat.load_table("py.tmp"))
    out["drop_non_empty_namespace"] = expect_error(NamespaceNotEmptyError, lambda: cat.drop_namespace("py"))
    renamed_location = cat.load_table("py.renamed").location()
    cat.purge_table("py.renamed")
    out["purged_files_left"] = sum(len(files) for _, _, files in os.walk(renamed_location.removeprefix("file://")))
    cat.create_table("py.dropped", schema=EVENTS)
    cat.drop_table("py.dropped")
    cat.drop_namespace("a3")
    out["tables"] = sorted(".".join(t) for t in cat.list_tables("py"))
    out["namespaces_after"] = sorted(".".join(n) for n in cat.list_namespaces())
    print(json.dumps(out))


def duckdb_connection(uri):
    import duckdb
    import duckdb_extension_avro
    import duckdb_extension_httpfs
    import duckdb_extension_iceberg

    con = duckdb.connect()
    con.execute("SET autoinstall_known_extensions=false")
    con.execute("SET autoload_known_extensions=false")
    for mod, name in (
        (duckdb_extension_httpfs, "httpfs"),
        (duckdb_extension_avro, "avro"),
        (duckdb_extension_iceberg, "iceberg"),
    ):
        path = glob.glob(os.path.join(os.path.dirname(mod.__file__), "extensions", "*", f"{name}.duckdb_extension"))[0]
        con.execute(f"LOAD '{path}'")
    con.execute(f"ATTACH '' AS lake (TYPE iceberg, ENDPOINT '{uri}', AUTHORIZATION_TYPE 'none')")
    return con


def read(args):
    table = catalog(args.uri).load_table(args.table)
    ns, name = args.table.rsplit(".", 1)
    con = duckdb_connection(args.uri)
    duck = con.execute(f'SELECT * FROM lake."{ns}"."{name}"').to_arrow_table()
    print(json.dumps({
        "pyiceberg": rows_of(table.scan().to_arrow()),
        "duckdb": rows_of(duck),
        "snapshots": len(table.metadata.snapshots),
    }))


def duckdb_list(args):
    con = duckdb_connection(args.uri)
    tables = con.execute(
        "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = 'lake' ORDER BY 1, 2"
    ).fetchall()
    print(json.dumps({"tables": [f"{s}.{t}" for s, t in tables]}))


def duckdb_insert(args):
    """DuckDB inserts rows (id, 'duck') into a table through the REST catalog."""
    ns, name = args.table.rsplit(".", 1)
    con = duckdb_connection(args.uri)
    for i in args.ids.split(","):
        con.execute(f'INSERT INTO lake."{ns}"."{name}" (id, region) VALUES ({int(i)}, \'duck\')')
    rows = con.execute(f'SELECT id, region FROM lake."{ns}"."{name}" ORDER BY id').fetchall()
    print(json.dumps({"rows": [[r[0], r[1]] for r in rows]}))


def append(args):
    table = catalog(args.uri).load_table(args.table)
    ids = [int(i) for i in args.ids.split(",")]
    schema = table.schema().as_arrow()
    data = {f.name: [None] * len(ids) for f in schema}
    data["id"] = ids
    # The first string column after the id says who wrote the row.
    text = next(
        f.name for f in schema
        if f.name != "id" and (pa.types.is_string(f.type) or pa.types.is_large_string(f.type))
    )
    data[text] = [f"py-{i}" for i in ids]
    table.append(pa.Table.from_pydict(data, schema=schema))
    print(json.dumps({"appended": ids}))


def concurrent(args):
    cat = catalog(args.uri)

    def writer(w):
        landed, conflicts = [], 0
        for a in range(args.appends):
            row_id = w * 1000 + a
            table = cat.load_table(args.table)
            schema = table.schema().as_arrow()
            data = {f.name: [None] for f in schema}
            data["id"] = [row_id]
            data["name"] = [f"w{w}"]
            try:
                table.append(pa.Table.from_pydict(data, schema=schema))
                landed.append(row_id)
            except CommitFailedException:
                conflicts += 1
        return landed, conflicts

    with ThreadPoolExecutor(max_workers=args.writers) as pool:
        results = list(pool.map(writer, range(args.writers)))
    table = cat.load_table(args.table)
    ids = sorted(int(r[0]) for r in rows_of(table.scan().to_arrow()))
    print(json.dumps({
        "landed": sorted(i for landed, _ in results for i in landed),
        "conflicts": sum(c for _, c in results),
        "ids": ids,
    }))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["pyiceberg", "read", "append", "concurrent", "duckdb", "duckdb-insert"])
    parser.add_argument("--uri", required=True)
    parser.add_argument("--table")
    parser.add_argument("--ids")
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--appends", type=int, default=5)
    args = parser.parse_args()
    {
        "pyiceberg": pyiceberg_scenario,
        "read": read,
        "append": append,
        "concurrent": concurrent,
        "duckdb": duckdb_list,
        "duckdb-insert": duckdb_insert,
    }[args.command](args)


if __name__ == "__main__":
    main()
