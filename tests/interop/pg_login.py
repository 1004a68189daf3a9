"""psycopg logs in to tarn's Postgres wire endpoint with a password (or an OIDC token in the
password field, or a client certificate) and runs one query.

Usage: pg_login.py --port P --user U [--password W] [--sslmode M --sslrootcert CA
                   [--sslcert C --sslkey K]]
Prints JSON: {"ok": true, "rows": [...]} or {"ok": false, "sqlstate": ..., "error": ...}.
"""
import argparse
import json

import psycopg


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password")
    p.add_argument("--sslmode", default="prefer")
    p.add_argument("--sslrootcert")
    p.add_argument("--sslcert")
    p.add_argument("--sslkey")
    a = p.parse_args()
    tls = {k: v for k in ("sslrootcert", "sslcert", "sslkey") if (v := getattr(a, k)) is not None}
    try:
        with psycopg.connect(
            host="127.0.0.1",
            port=a.port,
            user=a.user,
            password=a.password,
            dbname="tarn",
            autocommit=True,
            sslmode=a.sslmode,
            **tls,
        ) as conn:
            rows = conn.execute("SELECT 40 + 2").fetchall()
            print(json.dumps({"ok": True, "rows": [list(r) for r in rows]}))
    except psycopg.OperationalError as e:
        print(json.dumps({"ok": False, "sqlstate": getattr(e, "sqlstate", None), "error": str(e)}))


if __name__ == "__main__":
    main()
