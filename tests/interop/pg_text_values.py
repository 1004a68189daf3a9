"""Prints, as JSON, the text of every value psycopg receives for each SQL statement given,
through the extended query protocol (psycopg 3's `execute`) with text-format results.

Usage: pg_text_values.py CONNINFO SQL [SQL ...]
Floating-point and time values are loaded as the server's text, unparsed, so the caller can
compare the exact spelling two servers send.
"""

import json
import sys

import psycopg
from psycopg.types.string import TextLoader


def main() -> None:
    conninfo, statements = sys.argv[1], sys.argv[2:]
    out = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for name in ("float4", "float8", "timestamp", "timestamptz", "time"):
            conn.adapters.register_loader(name, TextLoader)
        for sql in statements:
            cur = conn.execute(sql)  # extended protocol, text results
            out.append([list(row) for row in cur.fetchall()])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
