"""Operators: run SQL on tarn, trigger a tarn job and wait for it, wait for a run."""

from __future__ import annotations

from typing import Any, Optional, Sequence

try:  # Airflow 3
    from airflow.sdk import BaseOperator
    from airflow.sdk.bases.sensor import BaseSensorOperator
except ImportError:  # Airflow 2
    from airflow.models import BaseOperator
    from airflow.sensors.base import BaseSensorOperator

from airflow.exceptions import AirflowException

from tarn_airflow.client import FINISHED
from tarn_airflow.hooks import TarnHook


class TarnSqlOperator(BaseOperator):
    """Runs SQL (one string with statements separated by ``;`` is sent as is; a list runs one
    by one) on tarn's Postgres wire endpoint, as the connection's user — tarn's policy
    applies. Returns the last statement's rows (pushed to XCom), as lists."""

    template_fields: Sequence[str] = ("sql", "parameters")
    template_ext: Sequence[str] = (".sql",)
    ui_color = "#cfe8f3"

    def __init__(self, *, sql, parameters=None, tarn_conn_id: str = TarnHook.default_conn_name,
                 **kwargs):
        super().__init__(**kwargs)
        self.sql = sql
        self.parameters = parameters
        self.tarn_conn_id = tarn_conn_id

    def execute(self, context) -> list[list[Any]]:
        rows = TarnHook(self.tarn_conn_id).run_sql(self.sql, self.parameters)
        self.log.info("tarn answered %d row(s)", len(rows))
        return [list(r) for r in rows]


def _fail_with_logs(hook: TarnHook, log, job: str, detail: dict):
    """Logs the failed tasks' tarn logs and raises with the run's error and their last lines."""
    run = detail["run"]
    failed = [t["task_id"] for t in detail["tasks"] if t["state"] == "failed"]
    tail = []
    for task in failed:
        lines = hook.get_client().get_logs(job, run["run_id"], task)
        for line in lines:
            log.info("[tarn %s try %s] %s", task, line["try_number"], line["line"])
        tail.extend(f"{task}: {line['line']}" for line in lines[-5:])
    message = (f"tarn run {run['run_id']} of job {job} ended {run['state']}: "
               f"{run.get('error') or ', '.join(failed)}")
    if tail:
        message += "\n" + "\n".join(tail)
    raise AirflowException(message)


class TarnJobOperator(BaseOperator):
    """Triggers the tarn job ``job`` (``POST /jobs/{job}/runs``) for ``logical_date`` (default:
    this Airflow run's logical date) with ``params``, and, with ``wait`` (the default), waits
    for the run's end; fails when it fails, with the failed tasks' logs. Returns the run id
    (pushed to XCom)."""

    template_fields: Sequence[str] = ("job", "logical_date", "params_")
    ui_color = "#a3d0e4"

    def __init__(self, *, job: str, logical_date: Optional[str] = "{{ ds }}",
                 params_: Optional[dict] = None, wait: bool = True,
                 poll_interval: float = 2.0, timeout: Optional[float] = None,
                 tarn_conn_id: str = TarnHook.default_conn_name, **kwargs):
        super().__init__(**kwargs)
        self.job = job
        self.logical_date = logical_date
        self.params_ = params_
        self.wait = wait
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.tarn_conn_id = tarn_conn_id

    def execute(self, context) -> str:
        hook = TarnHook(self.tarn_conn_id)
        run = hook.trigger_job(self.job, self.logical_date or None, self.params_)
        run_id = run["run_id"]
        self.log.info("queued tarn run %s of job %s", run_id, self.job)
        if not self.wait:
            return run_id
        detail = hook.wait_for_run(self.job, run_id, self.poll_interval, self.timeout)
        if detail["run"]["state"] != "success":
            _fail_with_logs(hook, self.log, self.job, detail)
        self.log.info("tarn run %s succeeded", run_id)
        return run_id


class TarnJobRunSensor(BaseSensorOperator):
    """Waits for run ``run_id`` of tarn job ``job`` (e.g. from a ``TarnJobOperator`` with
    ``wait=False``, through XCom) to end; fails when it failed."""

    template_fields: Sequence[str] = ("job", "run_id")

    def __init__(self, *, job: str, run_id: str,
                 tarn_conn_id: str = TarnHook.default_conn_name, **kwargs):
        super().__init__(**kwargs)
        self.job = job
        self.run_id = run_id
        self.tarn_conn_id = tarn_conn_id

    def poke(self, context) -> bool:
        hook = TarnHook(self.tarn_conn_id)
        detail = hook.get_client().get_run(self.job, self.run_id)
        state = detail["run"]["state"]
        if state not in FINISHED:
            return False
        if state != "success":
            _fail_with_logs(hook, self.log, self.job, detail)
        return True
