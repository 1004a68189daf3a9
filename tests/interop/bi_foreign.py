"""Foreign tables as Superset sees them: SQLAlchemy 1.4 with psycopg2 (the stack Superset 6 pins),
run with the venv `scripts/setup.sh` makes for it (`.venv-superset`). Usage:
`bi_foreign.py --port PORT --schema SCHEMA --table TABLE`.

Lists the schemas and each one's tables, reflects `SCHEMA.TABLE` (columns with types and
nullability), reads its rows through the reflected `Table` (SQLAlchemy quotes the schema name,
as Superset's dataset queries do) and reads `public.TABLE` the same way. Prints one JSON document.
"""
import argparse
import json

import sqlalchemy as sa


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", required=True)
    parser.add_argument("--schema", required=True)
    parser.add_argument("--table", required=True)
    args = parser.parse_args()
    engine = sa.create_engine(f"postgresql+psycopg2://superset@127.0.0.1:{args.port}/tarn")
    inspector = sa.inspect(engine)
    schemas = inspector.get_schema_names()
    out = {
        "schemas": schemas,
        "tables": {s: inspector.get_table_names(schema=s) for s in schemas if s != "information_schema"},
        "columns": [
            {"name": c["name"], "type": repr(c["type"]), "nullable": c["nullable"]}
            for c in inspector.get_columns(args.table, schema=args.schema)
        ],
        "rows": {},
    }
    with engine.connect() as connection:
        for schema in [args.schema, "public"]:
            table = sa.Table(args.table, sa.MetaData(), autoload_with=engine, schema=schema)
            first = list(table.columns)[0]
            query = sa.select(table).order_by(first)
            out["rows"][schema] = [list(row) for row in connection.execute(query)]
        out["sql"] = str(sa.select(sa.Table(args.table, sa.MetaData(), autoload_with=engine, schema=args.schema)))
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
