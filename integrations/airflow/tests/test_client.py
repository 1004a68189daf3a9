"""The client and the hook against a running tarn server.

Needs ``TARN_TEST_DSN`` (the Postgres wire endpoint) and ``TARN_TEST_HTTP`` (the HTTP
listener) of a tarn serving the job ``nightly`` (tarn's integration test
``jobs::airflow_drives_tarn...`` starts one and runs this); skipped without them. The hook's
test also needs Airflow and ``AIRFLOW_CONN_TARN_DEFAULT``.
"""

import os
import time
import unittest

from tarn_airflow.client import TarnClient, TarnError

DSN = os.environ.get("TARN_TEST_DSN")
HTTP = os.environ.get("TARN_TEST_HTTP")


@unittest.skipUnless(DSN and HTTP, "TARN_TEST_DSN and TARN_TEST_HTTP name a tarn server")
class ClientTest(unittest.TestCase):
    def setUp(self):
        self.client = TarnClient(dsn=DSN, http_url=HTTP, timeout=10)

    def test_sql_returns_the_last_statements_rows(self):
        rows = self.client.run_sql(["SELECT 1 AS one", "SELECT 2 AS two, 'x' AS s"])
        self.assertEqual(rows, [(2, "x")])

    def test_row_level_statements_take_parameters(self):
        # psycopg binds parameters on the server ($1 in the extended protocol).
        table = "airflow.params_demo"
        self.client.run_sql(f"CREATE TABLE {table} (id INT, v VARCHAR)")
        self.client.run_sql(f"INSERT INTO {table} VALUES (1, 'a'), (2, 'b'), (3, 'c')")
        self.client.run_sql(f"UPDATE {table} SET v = %s WHERE id = %s", ("o'k", 1))
        self.client.run_sql(f"DELETE FROM {table} WHERE id = %(id)s", {"id": 2})
        self.client.run_sql(
            f"MERGE INTO {table} t USING (SELECT 3 AS id UNION ALL SELECT 4) s ON t.id = s.id "
            "WHEN MATCHED THEN UPDATE SET v = %s WHEN NOT MATCHED THEN INSERT VALUES (s.id, %s)",
            ("merged", "inserted"),
        )
        expected = [(1, "o'k"), (3, "merged"), (4, "inserted")]
        self.assertEqual(self.client.run_sql(f"SELECT id, v FROM {table} ORDER BY id"), expected)
        # A value that does not fit its parameter's type: an error, the table unchanged.
        with self.assertRaises(Exception) as caught:
            self.client.run_sql(f"UPDATE {table} SET id = %s WHERE id = 1", ("not a number",))
        self.assertIn('invalid input syntax for type integer: "not a number" (parameter $1)', str(caught.exception))
        self.assertEqual(self.client.run_sql(f"SELECT id, v FROM {table} ORDER BY id"), expected)

    def test_a_sql_error_names_the_table(self):
        with self.assertRaises(Exception) as caught:
            self.client.run_sql("SELECT * FROM nowhere.nothing")
        self.assertIn("nothing", str(caught.exception))

    def test_jobs_are_listed_triggered_and_waited_for(self):
        names = [j["name"] for j in self.client.list_jobs()]
        self.assertIn("nightly", names)
        run = self.client.trigger_job("nightly", "2026-11-01", {"source": "client"})
        self.assertEqual(run["state"], "queued")
        detail = self.client.wait_for_run("nightly", run["run_id"], poll_interval=0.2, timeout=120)
        self.assertEqual(detail["run"]["state"], "success", detail)
        logs = self.client.get_logs("nightly", run["run_id"], "mark")
        self.assertTrue(any("statement 1: INSERT" in l["line"] for l in logs), logs)
        rows = self.client.run_sql("SELECT source FROM airflow.events WHERE day = '2026-11-01'")
        self.assertEqual(rows, [("client",)])

    def test_an_unknown_job_is_a_clear_error(self):
        with self.assertRaises(TarnError) as caught:
            self.client.trigger_job("no_such_job")
        self.assertEqual(caught.exception.status, 404)
        self.assertIn('no job "no_such_job"', str(caught.exception))


@unittest.skipUnless(os.environ.get("AIRFLOW_CONN_TARN_DEFAULT"), "needs Airflow and its tarn connection")
class HookTest(unittest.TestCase):
    def test_the_hook_reads_the_airflow_connection(self):
        from tarn_airflow.hooks import TarnHook

        hook = TarnHook()
        ok, message = hook.test_connection()
        self.assertTrue(ok, message)
        self.assertEqual(hook.run_sql("SELECT 40 + 2"), [(42,)])


@unittest.skipUnless(os.environ.get("AIRFLOW_CONN_TARN_DEFAULT"), "needs Airflow and its tarn connection")
class OperatorTest(unittest.TestCase):
    def test_a_failed_tarn_run_fails_the_operator_with_its_error(self):
        from airflow.exceptions import AirflowException

        from tarn_airflow.operators import TarnJobOperator

        operator = TarnJobOperator(task_id="doomed", job="doomed", logical_date="2026-11-02",
                                   poll_interval=0.2, timeout=120)
        with self.assertRaises(AirflowException) as caught:
            operator.execute({})
        message = str(caught.exception)
        self.assertIn("ended failed", message)
        self.assertIn("boom", message)

    def test_without_waiting_the_run_id_is_returned_and_the_sensor_waits(self):
        from tarn_airflow.operators import TarnJobOperator, TarnJobRunSensor

        run_id = TarnJobOperator(task_id="go", job="nightly", logical_date="2026-11-03",
                                 params_={"source": "sensor"}, wait=False).execute({})
        self.assertIn("nightly__manual__", run_id)
        sensor = TarnJobRunSensor(task_id="wait", job="nightly", run_id=run_id)
        deadline = time.monotonic() + 120
        while not sensor.poke({}):
            self.assertLess(time.monotonic(), deadline, "the run did not end")
            time.sleep(0.2)


if __name__ == "__main__":
    unittest.main()
