"""The Airflow hook: a :class:`TarnClient` from an Airflow connection.

The connection (type ``tarn``, or ``postgres``): host, port (the Postgres wire endpoint, default
5433), login, password, schema (the database: tarn's catalog name, default ``tarn``), and in
``extra``: ``http_url`` (the HTTP listener, default ``http://HOST:8433``), ``token`` (an OIDC
bearer token for the HTTP API) and ``sslmode``. For example::

    AIRFLOW_CONN_TARN_DEFAULT='{"conn_type": "tarn", "host": "tarn", "port": 5433,
        "login": "etl", "password": "...", "schema": "tarn",
        "extra": {"http_url": "https://tarn:8433", "token": "..."}}'
"""

from __future__ import annotations

from urllib.parse import quote

try:  # Airflow 3
    from airflow.sdk import BaseHook
except ImportError:  # Airflow 2
    from airflow.hooks.base import BaseHook

from tarn_airflow.client import TarnClient


class TarnHook(BaseHook):
    """SQL and jobs of the tarn server of connection ``tarn_conn_id``."""

    conn_name_attr = "tarn_conn_id"
    default_conn_name = "tarn_default"
    conn_type = "tarn"
    hook_name = "tarn"

    def __init__(self, tarn_conn_id: str = default_conn_name, **kwargs):
        super().__init__(**kwargs)
        self.tarn_conn_id = tarn_conn_id
        self._client = None

    def get_client(self) -> TarnClient:
        """The client, built once from the connection."""
        if self._client is None:
            conn = self.get_connection(self.tarn_conn_id)
            extra = conn.extra_dejson or {}
            host = conn.host or "127.0.0.1"
            port = conn.port or 5433
            user = quote(conn.login or "tarn", safe="")
            password = f":{quote(conn.password, safe='')}" if conn.password else ""
            database = conn.schema or "tarn"
            dsn = f"postgresql://{user}{password}@{host}:{port}/{quote(database, safe='')}"
            if extra.get("sslmode"):
                dsn += f"?sslmode={extra['sslmode']}"
            self._client = TarnClient(
                dsn=dsn,
                http_url=extra.get("http_url") or f"http://{host}:8433",
                token=extra.get("token"),
                timeout=float(extra.get("timeout", 30)),
            )
        return self._client

    def get_conn(self):
        """A psycopg connection to the Postgres wire endpoint."""
        return self.get_client().connect()

    def run_sql(self, sql, parameters=None):
        """Runs the statements; returns the last one's rows."""
        return self.get_client().run_sql(sql, parameters)

    def trigger_job(self, job, logical_date=None, params=None):
        """Queues a run of the tarn job ``job``."""
        return self.get_client().trigger_job(job, logical_date, params)

    def wait_for_run(self, job, run_id, poll_interval=2.0, timeout=None):
        """Waits for a run's end."""
        return self.get_client().wait_for_run(job, run_id, poll_interval, timeout)

    def test_connection(self):
        """Checks both endpoints (Airflow's "Test" button)."""
        try:
            self.run_sql("SELECT 1")
            self.get_client().list_jobs()
        except Exception as e:  # noqa: BLE001 - reported to the user as is
            return False, str(e)
        return True, "the Postgres wire endpoint and the jobs API answer"
