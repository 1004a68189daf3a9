"""Tables written by other engines, for tarn's tests of reading them (tests/it/foreign.rs).

Every table is written by the engine under test through the catalog tarn itself uses (Spark
through Iceberg's JdbcCatalog, pyiceberg through its SqlCatalog, both on tarn's SQLite catalog
database), and then read back by that same engine: the rows it prints are what tarn must read.

Subcommands (all print one JSON object on stdout: {"<ns.table>": {"columns": [...],
"rows": [[...], ...]}, ...}; values are strings, None for NULL, in the writer's own reading):

  spark-write  --db FILE --warehouse URL --name CATALOG
               one Spark session: creates the `spark` namespace's tables (below), then reads
               each of them with Spark.
  spark-read   --db FILE --warehouse URL --name CATALOG --tables NS.T,NS.T
               one Spark session: reads the tables.
  py-write     --db FILE --warehouse URL --name CATALOG
               creates the `py` namespace's tables with pyiceberg and reads them with it.
  pg-uuid      --port P --user U --password W
               reads py.uuids over the Postgres wire protocol with psycopg: the simple
               protocol, the extended protocol with text and with binary results; prints the
               column type OIDs and values each way.

Spark's tables, each one class of table another engine writes:
  spark.plain        format v2, partitioned by identity and days(); locations as Hadoop writes
                     them (`file:/path`)
  spark.mor          format v2, merge-on-read: DELETE, UPDATE and MERGE write position deletes
  spark.dv           format v3, merge-on-read: the same statements write deletion vectors
                     (Puffin `deletion-vector-v1` blobs), one replacing another for a file
  spark.eq           equality deletes, written as Flink writes them (Iceberg's Java
                     GenericAppenderFactory + a RowDelta commit, through Spark's JVM): by `id`
                     and by `kind`, with a row re-inserted after its delete
  spark.evolved      columns added, renamed, dropped and promoted (int->bigint,
                     float->double, decimal(5,2)->decimal(9,2)); partition spec evolved twice,
                     files under all three specs; merge-on-read deletes across the specs
  spark.uuids        a `uuid` column (created through Iceberg's Java API: Spark SQL has no
                     uuid type), written by Spark from strings

pyiceberg's tables:
  py.evolved         schema evolution (add, rename, drop, int->long, float->double) and
                     partition evolution (identity on one column, then on another; pyiceberg computes bucket and
                     truncate only with the optional pyiceberg-core) with appends in between
  py.deleted         rows deleted by pyiceberg (copy-on-write: files rewritten) and overwritten
  py.uuids           a `uuid` column
"""
import argparse
import datetime
import decimal
import glob
import json
import os
import sys
import uuid


def norm(v):
    if v is None:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, datetime.datetime):
        return v.replace(tzinfo=None).isoformat()
    if isinstance(v, (bytes, bytearray)) and len(v) == 16:
        return str(uuid.UUID(bytes=bytes(v)))
    if isinstance(v, decimal.Decimal):
        return str(v)
    return str(v)


# --- Spark ----------------------------------------------------------------------------------

def site_packages():
    import pyspark
    return os.path.dirname(os.path.dirname(pyspark.__file__))


def spark_session(args):
    from pyspark.sql import SparkSession

    jars = glob.glob(os.path.join(site_packages(), "snowpark_connect_deps_iceberg", "jars",
                                  "iceberg-spark-runtime-3.5_2.12-*.jar"))
    if not jars:
        raise SystemExit("iceberg-spark-runtime-3.5_2.12 not found: pip install snowpark-connect-deps-iceberg")
    sqlite = [p for p in ("/usr/share/java/sqlite-jdbc.jar", "/usr/share/java/xerial-sqlite-jdbc.jar")
              if os.path.exists(p)]
    if not sqlite:
        raise SystemExit("the SQLite JDBC driver is missing: apt-get install libxerial-sqlite-jdbc-java")
    cat = f"spark.sql.catalog.{args.name}"
    return (SparkSession.builder.master("local[1]").appName("tarn-foreign")
            .config("spark.jars", ",".join([jars[0], sqlite[0]]))
            .config("spark.sql.extensions",
                    "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions")
            .config(cat, "org.apache.iceberg.spark.SparkCatalog")
            .config(f"{cat}.catalog-impl", "org.apache.iceberg.jdbc.JdbcCatalog")
            .config(f"{cat}.uri", f"jdbc:sqlite:{args.db}")
            .config(f"{cat}.warehouse", args.warehouse)
            .config(f"{cat}.jdbc.schema-version", "V1")
            .config("spark.sql.defaultCatalog", args.name)
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.sql.shuffle.partitions", "1")
            .config("spark.ui.enabled", "false")
            .config("spark.driver.memory", "768m")
            .getOrCreate())


def spark_rows(spark, table):
    from pyspark.sql.types import TimestampType

    df = spark.table(table)
    # Spark gives timestamps with time zone as naive datetimes in the session zone (UTC).
    zoned = [isinstance(f.dataType, TimestampType) for f in df.schema.fields]
    return {
        "columns": df.columns,
        "rows": [[norm(v) + "Z" if z and v is not None else norm(v) for v, z in zip(row, zoned)]
                 for row in df.collect()],
    }


MOR = ("'write.delete.mode'='merge-on-read', 'write.update.mode'='merge-on-read', "
       "'write.merge.mode'='merge-on-read'")


def spark_plain(spark):
    spark.sql("""CREATE TABLE spark.plain (id BIGINT, region STRING, amount DECIMAL(10,2),
                 placed TIMESTAMP_NTZ, paid TIMESTAMP, ok BOOLEAN, score DOUBLE, day DATE)
                 USING iceberg PARTITIONED BY (region, days(placed))
                 TBLPROPERTIES ('format-version'='2')""")
    spark.sql("""INSERT INTO spark.plain VALUES
        (1, 'eu', 10.50, TIMESTAMP_NTZ '2026-01-03 10:00:00', TIMESTAMP '2026-01-03 10:00:01', true, 1.5, DATE '2026-01-03'),
        (2, 'us', 20.25, TIMESTAMP_NTZ '2026-01-04 11:30:00', NULL, false, -2.25, DATE '2026-01-04'),
        (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL)""")


def spark_deletes(spark, table, version):
    spark.sql(f"""CREATE TABLE {table} (id BIGINT, kind STRING, qty INT)
                  USING iceberg PARTITIONED BY (kind)
                  TBLPROPERTIES ('format-version'='{version}', {MOR})""")
    spark.sql(f"INSERT INTO {table} SELECT id, IF(id % 3 = 0, 'c', IF(id % 2 = 0, 'b', 'a')), "
              f"CAST(id * 10 AS INT) FROM range(1, 41)")
    spark.sql(f"INSERT INTO {table} VALUES (100, 'a', 1), (101, 'b', 2)")
    spark.sql(f"DELETE FROM {table} WHERE id % 5 = 0")
    spark.sql(f"UPDATE {table} SET qty = -qty WHERE id % 7 = 0")
    spark.sql(f"""MERGE INTO {table} t USING (SELECT * FROM VALUES (1, 'z', 9), (2, 'b', 99), (500, 'a', 5)
                  AS s(id, kind, qty)) s ON t.id = s.id
                  WHEN MATCHED AND s.kind = 'z' THEN DELETE
                  WHEN MATCHED THEN UPDATE SET qty = s.qty
                  WHEN NOT MATCHED THEN INSERT *""")
    # A second delete on files that already carry deletes: the v3 table's DV is replaced by a
    # merged one, the v2 table gets a second delete file.
    spark.sql(f"DELETE FROM {table} WHERE id IN (3, 4, 101)")


def spark_equality_deletes(spark, name):
    spark.sql("CREATE TABLE spark.eq (id INT, kind STRING, note STRING) USING iceberg "
              "TBLPROPERTIES ('format-version'='2')")
    spark.sql("INSERT INTO spark.eq VALUES (1, 'keep', 'a'), (2, 'keep', 'b'), (3, 'junk', 'c'), "
              "(4, 'keep', 'd'), (5, 'junk', 'e'), (6, 'keep', 'f')")
    jvm = spark.sparkContext._jvm
    gateway = spark.sparkContext._gateway
    table = jvm.org.apache.iceberg.spark.Spark3Util.loadIcebergTable(spark._jsparkSession, f"{name}.spark.eq")

    def eq_delete(columns, rows, file_name):
        schema = table.schema()
        field_ids = gateway.new_array(jvm.int, len(columns))
        for i, c in enumerate(columns):
            field_ids[i] = schema.findField(c).fieldId()
        java_columns = gateway.new_array(jvm.java.lang.String, len(columns))
        for i, c in enumerate(columns):
            java_columns[i] = c
        delete_schema = schema.select(java_columns)
        factory = jvm.org.apache.iceberg.data.GenericAppenderFactory(
            schema, table.spec(), field_ids, delete_schema, None)
        path = table.locationProvider().newDataLocation(file_name)
        out = jvm.org.apache.iceberg.encryption.EncryptedFiles.plainAsEncryptedOutput(
            table.io().newOutputFile(path))
        writer = factory.newEqDeleteWriter(out, jvm.org.apache.iceberg.FileFormat.PARQUET, None)
        for row in rows:
            record = jvm.org.apache.iceberg.data.GenericRecord.create(delete_schema)
            for c, v in zip(columns, row):
                # py4j passes small Python ints as java.lang.Integer: `id` is an INT column.
                record.setField(c, v)
            writer.write(record)
        writer.close()
        table.newRowDelta().addDeletes(writer.toDeleteFile()).commit()
        table.refresh()

    eq_delete(["id"], [[2], [4]], "eq-del-id.parquet")
    eq_delete(["kind"], [["junk"]], "eq-del-kind.parquet")
    # Written after the deletes, so they do not apply to it (its sequence number is higher).
    spark.sql("REFRESH TABLE spark.eq")
    spark.sql("INSERT INTO spark.eq VALUES (4, 'keep', 'again'), (7, 'junk', 'new')")


def spark_evolved(spark):
    spark.sql("""CREATE TABLE spark.evolved (id BIGINT, small INT, name STRING, ratio FLOAT,
                 price DECIMAL(5,2), gone STRING, ts TIMESTAMP_NTZ)
                 USING iceberg PARTITIONED BY (days(ts))
                 TBLPROPERTIES ('format-version'='2', 'write.delete.mode'='merge-on-read')""")
    spark.sql("""INSERT INTO spark.evolved VALUES
        (1, 10, 'one', 1.5, 1.25, 'x', TIMESTAMP_NTZ '2026-01-01 01:00:00'),
        (2, 20, 'two', 2.5, 2.50, 'y', TIMESTAMP_NTZ '2026-01-01 02:00:00'),
        (3, 30, 'three', 3.5, 3.75, 'z', TIMESTAMP_NTZ '2026-02-03 03:00:00')""")
    spark.sql("ALTER TABLE spark.evolved ADD COLUMN extra STRING")
    spark.sql("ALTER TABLE spark.evolved RENAME COLUMN name TO label")
    spark.sql("ALTER TABLE spark.evolved DROP COLUMN gone")
    spark.sql("ALTER TABLE spark.evolved ALTER COLUMN small TYPE BIGINT")
    spark.sql("ALTER TABLE spark.evolved ALTER COLUMN ratio TYPE DOUBLE")
    spark.sql("ALTER TABLE spark.evolved ALTER COLUMN price TYPE DECIMAL(9,2)")
    spark.sql("ALTER TABLE spark.evolved ADD PARTITION FIELD bucket(4, id)")
    spark.sql("""INSERT INTO spark.evolved VALUES
        (4, 4000000000, 'four', 4.25, 1234567.89, TIMESTAMP_NTZ '2026-03-04 04:00:00', 'e4'),
        (5, 50, 'five', NULL, NULL, TIMESTAMP_NTZ '2026-03-05 05:00:00', NULL)""")
    spark.sql("ALTER TABLE spark.evolved REPLACE PARTITION FIELD days(ts) WITH months(ts)")
    spark.sql("ALTER TABLE spark.evolved DROP PARTITION FIELD bucket(4, id)")
    spark.sql("ALTER TABLE spark.evolved ADD COLUMN later INT")
    spark.sql("""INSERT INTO spark.evolved VALUES
        (6, 60, 'six', 6.5, 6.00, TIMESTAMP_NTZ '2026-04-06 06:00:00', 'e6', 66)""")
    # Deletes of rows in files of the first spec (a position delete: row 1 shares the file)
    # and of the second.
    spark.sql("DELETE FROM spark.evolved WHERE id IN (2, 5)")


def spark_uuids(spark, name):
    jvm = spark.sparkContext._jvm
    types = jvm.org.apache.iceberg.types.Types
    fields = jvm.java.util.ArrayList()
    fields.add(types.NestedField.required(1, "id", types.LongType.get()))
    fields.add(types.NestedField.optional(2, "u", types.UUIDType.get()))
    fields.add(types.NestedField.optional(3, "label", types.StringType.get()))
    schema = jvm.org.apache.iceberg.Schema(fields)
    catalog = (spark._jsparkSession.sessionState().catalogManager().catalog(name)
               .icebergCatalog())
    ident = jvm.org.apache.iceberg.catalog.TableIdentifier.parse("spark.uuids")
    props = jvm.java.util.HashMap()
    props.put("format-version", "2")
    catalog.createTable(ident, schema, jvm.org.apache.iceberg.PartitionSpec.unpartitioned(), props)
    spark.sql("""INSERT INTO spark.uuids VALUES
        (1, 'f81d4fae-7dec-11d0-a765-00a0c91e6bf6', 'a'),
        (2, '00000000-0000-0000-0000-000000000000', 'zero'),
        (3, NULL, 'none')""")


SPARK_TABLES = ["spark.plain", "spark.mor", "spark.dv", "spark.eq", "spark.evolved", "spark.uuids"]


def spark_write(args):
    spark = spark_session(args)
    spark.sql("CREATE NAMESPACE IF NOT EXISTS spark")
    spark_plain(spark)
    spark_deletes(spark, "spark.mor", 2)
    spark_deletes(spark, "spark.dv", 3)
    spark_equality_deletes(spark, args.name)
    spark_evolved(spark)
    spark_uuids(spark, args.name)
    out = {t: spark_rows(spark, t) for t in SPARK_TABLES}
    for t in SPARK_TABLES:
        files = spark.sql(f"SELECT content, file_format FROM {t}.all_delete_files").collect()
        out[t]["delete_files"] = sorted({f"{r[0]}:{r[1]}" for r in files})
        out[t]["location"] = spark.sql(f"SELECT file_path FROM {t}.files LIMIT 1").collect()[0][0] \
            if spark.sql(f"SELECT count(*) FROM {t}.files").collect()[0][0] else None
    spark.stop()
    print(json.dumps(out))


def spark_read(args):
    spark = spark_session(args)
    out = {}
    for t in args.tables.split(","):
        spark.sql(f"REFRESH TABLE {t}")
        out[t] = spark_rows(spark, t)
    spark.stop()
    print(json.dumps(out))


# --- pyiceberg ------------------------------------------------------------------------------

def py_rows(table):
    arrow = table.scan().to_arrow()
    cols = [arrow.column(i).to_pylist() for i in range(arrow.num_columns)]
    return {
        "columns": arrow.column_names,
        "rows": [[norm(c[r]) for c in cols] for r in range(arrow.num_rows)],
    }


def py_write(args):
    import pyarrow as pa
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.expressions import EqualTo, In
    from pyiceberg.schema import Schema
    from pyiceberg.transforms import IdentityTransform
    from pyiceberg.types import (DoubleType, FloatType, IntegerType, LongType, NestedField,
                                 StringType, UUIDType)

    cat = SqlCatalog(args.name, uri=f"sqlite:///{args.db}", warehouse=args.warehouse)
    cat.create_namespace("py")

    def rows(table, data):
        return pa.Table.from_pydict(data, schema=table.schema().as_arrow())

    # Schema and partition evolution.
    schema = Schema(
        NestedField(1, "id", LongType(), required=True),
        NestedField(2, "small", IntegerType()),
        NestedField(3, "name", StringType()),
        NestedField(4, "ratio", FloatType()),
        NestedField(5, "gone", StringType()),
    )
    t = cat.create_table("py.evolved", schema=schema)
    t.append(rows(t, {"id": [1, 2], "small": [10, 20], "name": ["one", "two"], "ratio": [1.5, 2.5],
                      "gone": ["x", "y"]}))
    with t.update_schema() as u:
        u.add_column("extra", StringType())
        u.rename_column("name", "label")
        u.delete_column("gone")
        u.update_column("small", LongType())
        u.update_column("ratio", DoubleType())
    with t.update_spec() as s:
        s.add_field("label", IdentityTransform(), "label")
    t.append(rows(t, {"id": [3], "small": [3000000000], "label": ["three"], "ratio": [3.25],
                      "extra": ["e3"]}))
    with t.update_spec() as s:
        s.remove_field("label")
        s.add_field("extra", IdentityTransform(), "extra")
    t.append(rows(t, {"id": [4, 5], "small": [None, 5], "label": [None, "five"], "ratio": [None, 0.5],
                      "extra": ["e4", None]}))

    # Deletes (copy-on-write) and an overwrite.
    d = cat.create_table("py.deleted", schema=Schema(
        NestedField(1, "id", LongType(), required=True), NestedField(2, "kind", StringType())))
    d.append(rows(d, {"id": list(range(1, 11)), "kind": ["a", "b"] * 5}))
    d.append(rows(d, {"id": [11, 12], "kind": ["c", "c"]}))
    d.delete(In("id", [2, 3, 11]))
    d.overwrite(rows(d, {"id": [20, 21], "kind": ["b", "b"]}), overwrite_filter=EqualTo("kind", "b"))

    # A uuid column.
    u = cat.create_table("py.uuids", schema=Schema(
        NestedField(1, "id", LongType(), required=True), NestedField(2, "u", UUIDType())))
    values = [uuid.UUID("f81d4fae-7dec-11d0-a765-00a0c91e6bf6"), None,
              uuid.UUID("123e4567-e89b-12d3-a456-426614174000")]
    u.append(rows(u, {"id": [1, 2, 3], "u": [v.bytes if v else None for v in values]}))

    out = {f"py.{n}": py_rows(cat.load_table(f"py.{n}")) for n in ("evolved", "deleted", "uuids")}
    print(json.dumps(out))


# --- psycopg over tarn's Postgres wire endpoint ---------------------------------------------

def pg_uuid(args):
    import psycopg

    conninfo = f"host=127.0.0.1 port={args.port} user={args.user} password={args.password} dbname=tarn"
    query = "SELECT id, u FROM py.uuids ORDER BY id"
    out = {}
    with psycopg.connect(conninfo, autocommit=True) as conn:
        res = conn.pgconn.exec_(query.encode())
        out["simple"] = {
            "oids": [res.ftype(i) for i in range(res.nfields)],
            "rows": [[None if res.get_value(r, c) is None else res.get_value(r, c).decode()
                      for c in range(res.nfields)] for r in range(res.ntuples)],
        }
        for name, binary in (("extended_text", False), ("extended_binary", True)):
            with conn.cursor(binary=binary) as cur:
                cur.execute("SELECT id, u FROM py.uuids WHERE id >= %s ORDER BY id", (1,))
                out[name] = {
                    "oids": [d.type_code for d in cur.description],
                    "rows": [[norm(v) if not isinstance(v, uuid.UUID) else str(v) for v in row]
                             for row in cur.fetchall()],
                    "python_types": sorted({type(row[1]).__name__ for row in cur.execute(
                        "SELECT id, u FROM py.uuids WHERE u IS NOT NULL AND id >= %s", (1,)).fetchall()}),
                }
        with conn.cursor() as cur:
            cur.execute("SELECT id FROM py.uuids WHERE u = %s", ("123e4567-e89b-12d3-a456-426614174000",))
            out["by_text_parameter"] = [r[0] for r in cur.fetchall()]
    print(json.dumps(out))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["spark-write", "spark-read", "py-write", "pg-uuid"])
    parser.add_argument("--db")
    parser.add_argument("--warehouse")
    parser.add_argument("--name")
    parser.add_argument("--tables", default="")
    parser.add_argument("--port", type=int)
    parser.add_argument("--user")
    parser.add_argument("--password")
    args = parser.parse_args()
    {"spark-write": spark_write, "spark-read": spark_read, "py-write": py_write,
     "pg-uuid": pg_uuid}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
