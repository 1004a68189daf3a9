"""Superset's view of tarn: SQLAlchemy 1.4 with psycopg2 (the stack Superset 6 pins), run with the
venv `scripts/setup.sh` makes for it (`.venv-superset`). Usage: `bi_sqlalchemy.py --port PORT`.

Connects as Superset does (`postgresql+psycopg2://`), reflects with `sqlalchemy.inspect` what
Superset's dataset editor reads (schemas, tables, views, columns with types and comments, primary
key, foreign keys, indexes, unique and check constraints, table comment), reflects a `Table`, and
reads `shop.every_type` to show each column's type OID and Python value, and connects scoped to a
schema (`options=-csearch_path=shop`, as Superset's SQL Lab does). Prints one JSON document.
"""
import argparse
import json

import sqlalchemy as sa


def value(v):
    """A value as JSON can hold it: bytes as hex, the rest as its repr."""
    if isinstance(v, memoryview):
        return "\\x" + bytes(v).hex()
    return repr(v)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", required=True)
    args = parser.parse_args()
    engine = sa.create_engine(f"postgresql+psycopg2://superset@127.0.0.1:{args.port}/tarn")
    inspector = sa.inspect(engine)
    out = {
        "sqlalchemy": sa.__version__,
        "server_version": list(engine.dialect.server_version_info),
        "default_schema": engine.dialect.default_schema_name,
        "schemas": inspector.get_schema_names(),
        "tables": {s: inspector.get_table_names(schema=s) for s in ["public", "shop"]},
        "views": inspector.get_view_names(schema="shop"),
        "columns": [
            {"name": c["name"], "type": repr(c["type"]), "nullable": c["nullable"], "comment": c["comment"]}
            for c in inspector.get_columns("orders", schema="shop")
        ],
        "pk": inspector.get_pk_constraint("orders", schema="shop"),
        "foreign_keys": inspector.get_foreign_keys("orders", schema="shop"),
        "indexes": inspector.get_indexes("orders", schema="shop"),
        "unique": inspector.get_unique_constraints("orders", schema="shop"),
        "checks": inspector.get_check_constraints("orders", schema="shop"),
        "comment": inspector.get_table_comment("orders", schema="shop"),
    }
    table = sa.Table("orders", sa.MetaData(), autoload_with=engine, schema="shop")
    out["reflected"] = [[c.name, str(c.type), c.primary_key] for c in table.columns]
    out["every_type_columns"] = [
        {"name": c["name"], "type": repr(c["type"])} for c in inspector.get_columns("every_type", schema="shop")
    ]
    with engine.connect() as connection:
        result = connection.execute(sa.text("SELECT * FROM shop.every_type ORDER BY c_int NULLS LAST"))
        description = result.cursor.description
        rows = result.fetchall()
        out["type_oids"] = {d.name: d.type_code for d in description}
        out["values"] = [[None if v is None else value(v) for v in row] for row in rows]
        # Superset's SQL Lab: a query with a bound parameter, through the same stack.
        count = connection.execute(
            sa.text("SELECT count(*) FROM shop.orders WHERE customer = :who"), {"who": "ada"}
        ).scalar()
        out["count"] = count
    # A schema chosen in SQL Lab: Superset connects with `options=-csearch_path=<schema>`.
    scoped = sa.create_engine(
        f"postgresql+psycopg2://superset@127.0.0.1:{args.port}/tarn",
        connect_args={"options": "-csearch_path=shop"},
    )
    with scoped.connect() as connection:
        out["scoped"] = {
            "default_schema": scoped.dialect.default_schema_name,
            "tables": sa.inspect(scoped).get_table_names(),
            "count": connection.execute(sa.text("SELECT count(*) FROM orders")).scalar(),
        }
        connection.exec_driver_sql("SET search_path TO public")
        out["scoped"]["after_set"] = connection.execute(sa.text("SELECT current_schema()")).scalar()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
