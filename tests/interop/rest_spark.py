"""Spark 3.5 with Iceberg's REST catalog client against `tarn serve`, for tarn's REST catalog tests.

Spark opens the catalog by URL only (`type=rest`); the Iceberg runtime jar comes from the PyPI
package snowpark-connect-deps-iceberg, pyspark from PyPI, Java from the system.

Subcommands (each prints one JSON document as its last line on stdout):
  write  --uri URI --tarn-table NS.T
         On NS.T (a table tarn's SQL created, merge-on-read properties set by Spark): INSERT,
         MERGE INTO (update, delete and insert in one statement), DELETE FROM. Then the same on
         a table Spark creates itself, sp.accounts (partitioned), with a branch `audit` written
         beside main. Prints what Spark reads from both, and the kinds of files Spark's commits
         added (position deletes among them).
  read   --uri URI --table NS.T
         What Spark reads from a table now.

Rows are lists of strings (None for NULL), sorted.
"""
import argparse
import glob
import json
import os


def spark_session(uri):
    import pyspark
    import snowpark_connect_deps_iceberg
    from pyspark.sql import SparkSession

    jars = glob.glob(
        os.path.join(os.path.dirname(snowpark_connect_deps_iceberg.__file__), "jars", "iceberg-spark-runtime-3.5_2.12-*.jar")
    )
    if not jars:
        raise SystemExit("iceberg-spark-runtime-3.5_2.12 is missing: run scripts/setup.sh")
    os.environ.setdefault("SPARK_HOME", os.path.dirname(pyspark.__file__))
    return (
        SparkSession.builder.master("local[2]")
        .appName("tarn-rest-catalog")
        .config("spark.jars", jars[0])
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.extensions", "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions")
        .config("spark.sql.catalog.tarn", "org.apache.iceberg.spark.SparkCatalog")
        .config("spark.sql.catalog.tarn.type", "rest")
        .config("spark.sql.catalog.tarn.uri", uri)
        # Tables load with only the snapshots a branch or tag points at (`snapshots=refs`);
        # history (the `snapshots` metadata table) is fetched with `snapshots=all` on demand.
        .config("spark.sql.catalog.tarn.snapshot-loading-mode", "refs")
        .config("spark.sql.defaultCatalog", "tarn")
        .getOrCreate()
    )


def norm(v):
    if v is None:
        return None
    return str(v)


def rows(spark, sql):
    out = [[norm(v) for v in r] for r in spark.sql(sql).collect()]
    return sorted(out, key=lambda r: [(x is None, x or "") for x in r])


def file_kinds(spark, table):
    """content of every live file of the table: 0 data, 1 position deletes, 2 equality deletes."""
    return sorted({r[0] for r in spark.sql(f"SELECT content FROM tarn.{table}.all_files").collect()})


MERGE_ON_READ = (
    "'write.delete.mode'='merge-on-read', 'write.update.mode'='merge-on-read', "
    "'write.merge.mode'='merge-on-read'"
)


def write(args):
    spark = spark_session(args.uri)
    out = {}
    t = f"tarn.{args.tarn_table}"
    # A table tarn created: Spark switches it to merge-on-read (position deletes), then writes.
    spark.sql(f"ALTER TABLE {t} SET TBLPROPERTIES ({MERGE_ON_READ})")
    spark.sql(f"INSERT INTO {t} VALUES (3, 'carol', 30.00), (4, 'dave', 40.00), (5, 'erin', 50.00)")
    spark.sql(
        f"""MERGE INTO {t} AS t
            USING (SELECT * FROM VALUES (2, 'bob', 25.50), (3, 'carol', -1.00), (6, 'frank', 60.00)
                   AS s(id, owner, balance)) AS s
            ON t.id = s.id
            WHEN MATCHED AND s.balance < 0 THEN DELETE
            WHEN MATCHED THEN UPDATE SET t.balance = s.balance
            WHEN NOT MATCHED THEN INSERT *"""
    )
    spark.sql(f"DELETE FROM {t} WHERE id = 4")
    spark.sql(f"UPDATE {t} SET owner = upper(owner) WHERE id = 1")
    out["tarn_table"] = rows(spark, f"SELECT id, owner, balance FROM {t}")
    out["tarn_table_files"] = file_kinds(spark, args.tarn_table)
    out["tarn_table_snapshots"] = spark.sql(f"SELECT count(*) FROM {t}.snapshots").collect()[0][0]

    # A table Spark creates itself, in a namespace it creates.
    spark.sql("CREATE NAMESPACE IF NOT EXISTS tarn.sp")
    spark.sql(
        f"""CREATE TABLE tarn.sp.accounts (id BIGINT NOT NULL, owner STRING, balance DECIMAL(10,2), opened DATE)
            USING iceberg PARTITIONED BY (bucket(4, id))
            TBLPROPERTIES ('format-version'='2', {MERGE_ON_READ})"""
    )
    spark.sql(
        "INSERT INTO tarn.sp.accounts VALUES "
        "(1, 'ann', 10.00, DATE'2026-01-01'), (2, 'ben', 20.00, DATE'2026-01-02'), "
        "(3, 'cy', 30.00, DATE'2026-01-03'), (4, 'di', 40.00, NULL)"
    )
    spark.sql(
        """MERGE INTO tarn.sp.accounts AS t
           USING (SELECT * FROM VALUES (1, 11.00), (3, 0.00), (7, 70.00) AS s(id, balance)) AS s
           ON t.id = s.id
           WHEN MATCHED AND s.balance = 0 THEN DELETE
           WHEN MATCHED THEN UPDATE SET t.balance = s.balance
           WHEN NOT MATCHED THEN INSERT (id, owner, balance, opened) VALUES (s.id, 'new', s.balance, DATE'2026-02-01')"""
    )
    spark.sql("DELETE FROM tarn.sp.accounts WHERE owner = 'ben'")
    # A branch: its commits assert the branch's snapshot, and main does not move.
    spark.sql("ALTER TABLE tarn.sp.accounts CREATE BRANCH audit")
    spark.sql("INSERT INTO tarn.sp.accounts.branch_audit VALUES (9, 'audit', 9.00, NULL)")
    spark.sql("DELETE FROM tarn.sp.accounts.branch_audit WHERE id = 1")
    out["audit_branch"] = rows(spark, "SELECT id FROM tarn.sp.accounts VERSION AS OF 'audit'")
    out["accounts"] = rows(spark, "SELECT id, owner, balance, opened FROM tarn.sp.accounts")
    out["accounts_snapshots"] = spark.sql("SELECT count(*) FROM tarn.sp.accounts.snapshots").collect()[0][0]
    out["accounts_files"] = file_kinds(spark, "sp.accounts")
    out["namespaces"] = sorted(r[0] for r in spark.sql("SHOW NAMESPACES IN tarn").collect())
    print(json.dumps(out))


def read(args):
    spark = spark_session(args.uri)
    print(json.dumps({"rows": rows(spark, f"SELECT * FROM tarn.{args.table}")}))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["write", "read"])
    parser.add_argument("--uri", required=True)
    parser.add_argument("--tarn-table")
    parser.add_argument("--table")
    args = parser.parse_args()
    {"write": write, "read": read}[args.command](args)


if __name__ == "__main__":
    main()
