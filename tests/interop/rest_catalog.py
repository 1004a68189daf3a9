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
  retrying   --uri URI [--uri URI2 ...] --table NS.T --writers W --appends A
             W threads (thread w uses catalog w mod the number of URIs: several tarn replicas),
             each appending A single-row batches; an append whose commit gets 409 reloads the
             table and tries again (up to 50 times). Prints the ids that landed, the 409s met,
             appends given up, and the ids pyiceberg reads afterwards.
  cdc-side   --uri URI --table NS.T --side NS.S --rounds N
             beside a CDC pipeline committing to NS.T: one thread adds an optional column
             `ext_note` to NS.T, then sets property ext.round.<i> on it N times; another appends
             N rows to NS.S. Each commit that gets 409 is reloaded and retried. Prints the
             properties and rows that landed and the 409s met.
  governed   --uri URI --table NS.T --token TOKEN
             as the caller of TOKEN (a bearer token), each change pyiceberg can make to NS.T:
             append, overwrite, delete rows, add a column, set a property. Prints, per change,
             "ok" or the exception pyiceberg raised ("ForbiddenError: ...").
  s3         --uri URI
             with nothing but the catalog URL (no S3 settings of its own): creates s3ns.t,
             appends, overwrites, reads back. Prints the rows, where the files are and which
             storage settings the catalog handed pyiceberg's file IO.

Rows are lists of strings (None for NULL), sorted.
"""
import argparse
import datetime
import glob
import json
import os
import random
import time
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


def governed(args):
    table = RestCatalog("tarn", uri=args.uri, token=args.token).load_table(args.table)
    schema = table.schema().as_arrow()

    def rows(ids):
        data = {f.name: [None] * len(ids) for f in schema}
        data["id"] = ids
        return pa.Table.from_pydict(data, schema=schema)

    def add_column():
        with table.update_schema() as update:
            update.add_column("governed_note", StringType())

    def set_property():
        with table.transaction() as tx:
            tx.set_properties({"governed.by": "pyiceberg"})

    changes = {
        "append": lambda: table.append(rows([1001])),
        "overwrite": lambda: table.overwrite(rows([1002])),
        "delete": lambda: table.delete(EqualTo("id", 1)),
        "add-column": add_column,
        "set-property": set_property,
    }
    out = {}
    for name, change in changes.items():
        try:
            change()
            out[name] = "ok"
        except Exception as e:  # noqa: BLE001 - the test asserts on the exception's name
            out[name] = f"{type(e).__name__}: {e}"
        table = table.refresh()
    print(json.dumps(out))


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


def with_retries(fn, attempts=50):
    """Runs fn() until it does not raise CommitFailedException; returns (ok, 409s met)."""
    conflicts = 0
    for _ in range(attempts):
        try:
            fn()
            return True, conflicts
        except CommitFailedException:
            conflicts += 1
            time.sleep(random.uniform(0.005, 0.05))
    return False, conflicts


def retrying(args):
    catalogs = [catalog(u) for u in args.uri]

    def writer(w):
        cat = catalogs[w % len(catalogs)]
        landed, conflicts, gave_up = [], 0, 0

        for a in range(args.appends):
            row_id = w * 1000 + a

            def attempt():
                table = cat.load_table(args.table)
                schema = table.schema().as_arrow()
                data = {f.name: [None] for f in schema}
                data["id"] = [row_id]
                data["name"] = [f"w{w}"]
                table.append(pa.Table.from_pydict(data, schema=schema))

            ok, c = with_retries(attempt)
            conflicts += c
            if ok:
                landed.append(row_id)
            else:
                gave_up += 1
        return landed, conflicts, gave_up

    with ThreadPoolExecutor(max_workers=args.writers) as pool:
        results = list(pool.map(writer, range(args.writers)))
    table = catalogs[0].load_table(args.table)
    ids = sorted(int(r[0]) for r in rows_of(table.scan(selected_fields=("id",)).to_arrow()))
    print(json.dumps({
        "landed": sorted(i for landed, _, _ in results for i in landed),
        "conflicts": sum(c for _, c, _ in results),
        "gave_up": sum(g for _, _, g in results),
        "ids": ids,
    }))


def cdc_side(args):
    cat = catalog(args.uri)
    out = {"conflicts": 0, "gave_up": 0}

    def cdc_table():
        def evolve():
            with cat.load_table(args.table).update_schema() as update:
                update.add_column("ext_note", StringType(), doc="added by pyiceberg beside CDC")

        ok, c = with_retries(evolve)
        landed = ["ext_note"] if ok else []
        conflicts, gave_up = c, 0 if ok else 1
        for i in range(args.rounds):
            def set_round(i=i):
                cat.load_table(args.table).transaction().set_properties({f"ext.round.{i}": str(i)}).commit_transaction()

            ok, c = with_retries(set_round)
            conflicts += c
            if ok:
                landed.append(f"ext.round.{i}")
            else:
                gave_up += 1
        return landed, conflicts, gave_up

    def side_table():
        landed, conflicts, gave_up = [], 0, 0
        for i in range(args.rounds):
            def add(i=i):
                t = cat.load_table(args.side)
                t.append(pa.Table.from_pydict({"id": [i], "name": [f"side-{i}"]}, schema=t.schema().as_arrow()))

            ok, c = with_retries(add)
            conflicts += c
            if ok:
                landed.append(i)
            else:
                gave_up += 1
        return landed, conflicts, gave_up

    with ThreadPoolExecutor(max_workers=2) as pool:
        cdc_future = pool.submit(cdc_table)
        side_future = pool.submit(side_table)
        changes, c1, g1 = cdc_future.result()
        appended, c2, g2 = side_future.result()
    out["cdc_table_changes"] = changes
    out["side_appended"] = appended
    out["conflicts"] = c1 + c2
    out["gave_up"] = g1 + g2
    table = cat.load_table(args.table)
    out["cdc_properties"] = sorted(k for k in table.properties if k.startswith("ext."))
    out["cdc_columns"] = [f.name for f in table.schema().fields]
    print(json.dumps(out))


def s3(args):
    cat = catalog(args.uri)
    out = {"config": {k: v for k, v in cat.properties.items() if k.startswith(("s3.", "client."))}}
    cat.create_namespace("s3ns")
    t = cat.create_table("s3ns.t", schema=EVENTS)
    t.append(arrow([(1, "a", 1.0), (2, "b", 2.0), (3, "c", 3.0)]))
    t.overwrite(arrow([(4, "d", 4.0)]), overwrite_filter=EqualTo("id", 2))
    t = cat.load_table("s3ns.t")
    out["rows"] = rows_of(t.scan().to_arrow())
    out["location"] = t.location()
    out["data_files"] = sorted(task.file.file_path for task in t.scan().plan_files())
    # What the table's file IO was configured with: catalog defaults, the table's config and
    # its storage credentials. Secrets are reported as present or not.
    props = t.io.properties
    out["table_io"] = {
        k: ("<set>" if "secret" in k else v) for k, v in props.items() if k.startswith(("s3.", "client."))
    }
    print(json.dumps(out))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "command",
        choices=["pyiceberg", "read", "append", "concurrent", "duckdb", "duckdb-insert", "retrying", "cdc-side", "s3", "governed"],
    )
    parser.add_argument("--uri", required=True, action="append")
    parser.add_argument("--table")
    parser.add_argument("--side")
    parser.add_argument("--ids")
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--appends", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--token")
    args = parser.parse_args()
    if args.command != "retrying":
        args.uri = args.uri[0]
    {
        "pyiceberg": pyiceberg_scenario,
        "read": read,
        "append": append,
        "concurrent": concurrent,
        "duckdb": duckdb_list,
        "duckdb-insert": duckdb_insert,
        "retrying": retrying,
        "cdc-side": cdc_side,
        "s3": s3,
        "governed": governed,
    }[args.command](args)


if __name__ == "__main__":
    main()
