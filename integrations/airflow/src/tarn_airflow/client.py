"""A client of one tarn server, without Airflow: SQL over the Postgres wire endpoint and the
jobs' HTTP API (docs/jobs.md of tarn)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Optional, Sequence

FINISHED = ("success", "failed")


class TarnError(Exception):
    """An error answered by tarn (the HTTP API's message, or a SQL error)."""

    def __init__(self, message: str, status: Optional[int] = None):
        super().__init__(message)
        self.status = status


class TarnClient:
    """SQL and jobs of one tarn server.

    ``dsn`` is a libpq connection string or URL of the Postgres wire endpoint
    (``postgresql://user:password@host:5433/tarn``); ``http_url`` the HTTP listener
    (``http://host:8433``); ``token`` an OIDC bearer token for the HTTP API (where tarn has
    ``[auth.oidc]``).
    """

    def __init__(self, dsn: Optional[str] = None, http_url: Optional[str] = None,
                 token: Optional[str] = None, timeout: float = 30.0):
        self.dsn = dsn
        self.http_url = http_url.rstrip("/") if http_url else None
        self.token = token
        self.timeout = timeout

    # ---- SQL

    def connect(self):
        """A psycopg connection to the Postgres wire endpoint (autocommit)."""
        import psycopg

        if not self.dsn:
            raise TarnError("no Postgres wire endpoint configured (dsn)")
        return psycopg.connect(self.dsn, autocommit=True)

    def run_sql(self, sql: str | Sequence[str], parameters: Any = None) -> list[tuple]:
        """Runs each statement (a string, or a list of them); returns the last one's rows."""
        statements = [sql] if isinstance(sql, str) else list(sql)
        rows: list[tuple] = []
        with self.connect() as conn, conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement, parameters)
                rows = cur.fetchall() if cur.description is not None else []
        return rows

    # ---- the jobs API

    def _request(self, method: str, path: str, body: Optional[dict] = None) -> Any:
        if not self.http_url:
            raise TarnError("no HTTP endpoint configured (http_url)")
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.http_url + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            try:
                message = json.loads(text)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = text or e.reason
            raise TarnError(f"{method} {path}: {e.code}: {message}", e.code) from None
        except urllib.error.URLError as e:
            raise TarnError(f"{method} {path}: cannot reach tarn at {self.http_url}: {e.reason}") from None
        return json.loads(payload) if payload else None

    @staticmethod
    def _quote(part: str) -> str:
        return urllib.parse.quote(part, safe="")

    def list_jobs(self) -> list[dict]:
        """The jobs the server knows (``GET /jobs``)."""
        return self._request("GET", "/jobs")["jobs"]

    def trigger_job(self, job: str, logical_date: Optional[str] = None,
                    params: Optional[dict] = None) -> dict:
        """Queues a run of ``job``; returns the run (``run_id``, ``state``, ...)."""
        body: dict = {}
        if logical_date:
            body["logical_date"] = logical_date
        if params:
            body["params"] = {k: str(v) for k, v in params.items()}
        return self._request("POST", f"/jobs/{self._quote(job)}/runs", body)

    def get_run(self, job: str, run_id: str) -> dict:
        """The run with its tasks and tries: ``{"run", "tasks", "tries"}``."""
        return self._request("GET", f"/jobs/{self._quote(job)}/runs/{self._quote(run_id)}")

    def get_logs(self, job: str, run_id: str, task: Optional[str] = None) -> list[dict]:
        """The run's task log lines."""
        query = f"?task={self._quote(task)}" if task else ""
        path = f"/jobs/{self._quote(job)}/runs/{self._quote(run_id)}/logs{query}"
        return self._request("GET", path)["logs"]

    def wait_for_run(self, job: str, run_id: str, poll_interval: float = 2.0,
                     timeout: Optional[float] = None) -> dict:
        """Waits until the run ends; returns it (``{"run", "tasks", "tries"}``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            detail = self.get_run(job, run_id)
            if detail["run"]["state"] in FINISHED:
                return detail
            if deadline is not None and time.monotonic() >= deadline:
                raise TarnError(
                    f"run {run_id} of job {job} did not end within {timeout}s "
                    f"(state {detail['run']['state']})")
            time.sleep(poll_interval)
