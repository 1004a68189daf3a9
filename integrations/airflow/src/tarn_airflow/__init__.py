"""Drive tarn from Apache Airflow.

- :class:`tarn_airflow.client.TarnClient`: SQL over tarn's Postgres wire endpoint (psycopg) and
  tarn's jobs over its HTTP API (``/jobs``); no Airflow needed.
- :class:`tarn_airflow.hooks.TarnHook`: the client built from an Airflow connection.
- :class:`tarn_airflow.operators.TarnSqlOperator`: run SQL; the last statement's rows go to XCom.
- :class:`tarn_airflow.operators.TarnJobOperator`: trigger a tarn job and (by default) wait for
  its run to end; fails when the run fails, with the failed tasks' logs in the task log.
- :class:`tarn_airflow.operators.TarnJobRunSensor`: wait for a run triggered elsewhere.
"""

__version__ = "0.1.0"


def get_provider_info():
    """What Airflow's provider manager shows about this package."""
    return {
        "package-name": "tarn-airflow",
        "name": "tarn",
        "description": "SQL and jobs of a tarn datalake.",
        "connection-types": [
            {"connection-type": "tarn", "hook-class-name": "tarn_airflow.hooks.TarnHook"}
        ],
        "versions": [__version__],
    }
