"""psycopg against tarn's Postgres wire endpoint, for tarn's client tests.

Usage: pg_clients.py --port P [--user U --password W]
Runs DDL, a parameterized INSERT and SELECT (extended protocol, server-side binding),
an aggregate's column names, a prepared statement executed twice, a statement with twelve
parameters of two types (the tenth and later bound by their own types), COPY ... TO STDOUT (CSV
and binary), and an error; prints JSON
with what it saw.
"""
import argparse
import json

import psycopg


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", default="tarn")
    p.add_argument("--password", default=None)
    a = p.parse_args()
    conninfo = f"host=127.0.0.1 port={a.port} user={a.user} dbname=tarn"
    if a.password:
        conninfo += f" password={a.password}"
    out = {}
    with psycopg.connect(conninfo, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE psy (id BIGINT, name VARCHAR, score DOUBLE)")
            cur.execute("INSERT INTO psy VALUES (%s, %s, %s)", (1, "one", 1.5))
            cur.execute("INSERT INTO psy VALUES (%s, %s, %s)", (2, "two", None))
            cur.execute("SELECT id, name, score FROM psy WHERE id >= %s ORDER BY id", (1,))
            out["rows"] = [list(r) for r in cur.fetchall()]
            out["types"] = [d.type_code for d in cur.description]
            # Result column names, as psycopg's description and dict rows show them.
            cur.execute("SELECT count(*), sum(score), max(name), count(*) FROM psy WHERE id >= %s", (1,))
            out["names"] = [d.name for d in cur.description]
            for i in (1, 2):
                cur.execute("SELECT name FROM psy WHERE id = %s", (i,), prepare=True)
                out.setdefault("prepared", []).append(cur.fetchone()[0])
            # Twelve parameters, integers and (untyped) strings alternating.
            conds = " OR ".join(["(id = %s AND name = %s)"] * 6)
            params = [v for i in range(6) for v in (2 if i == 5 else 9, "two")]
            cur.execute(f"SELECT count(*) FROM psy WHERE {conds}", params)
            out["many_params"] = cur.fetchone()[0]
            # COPY ... TO STDOUT, as text and as binary rows decoded by psycopg.
            with cur.copy("COPY (SELECT id, name FROM psy ORDER BY id) TO STDOUT (FORMAT csv, HEADER)") as copy:
                out["copy_csv"] = b"".join(bytes(chunk) for chunk in copy).decode()
            with cur.copy("COPY (SELECT id, name FROM psy ORDER BY id) TO STDOUT (FORMAT binary)") as copy:
                copy.set_types(["int8", "text"])
                out["copy_binary"] = [list(row) for row in copy.rows()]
            try:
                cur.execute("SELECT * FROM no_such_table")
                out["error"] = None
            except psycopg.Error as e:
                out["error"] = e.sqlstate
    print(json.dumps(out))


if __name__ == "__main__":
    main()
