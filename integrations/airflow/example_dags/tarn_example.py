"""An Airflow DAG driving tarn: SQL on tarn, then tarn's own job `nightly` (triggered over
tarn's HTTP API and waited for), then a check of what both wrote."""

from datetime import datetime

from airflow import DAG

from tarn_airflow.operators import TarnJobOperator, TarnSqlOperator

with DAG(
    dag_id="tarn_example",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["tarn"],
) as dag:
    prepare = TarnSqlOperator(
        task_id="prepare",
        sql="INSERT INTO airflow.events VALUES ('{{ ds }}', 'airflow')",
    )
    nightly = TarnJobOperator(
        task_id="nightly",
        job="nightly",
        params_={"source": "tarn-job"},
        poll_interval=0.5,
        timeout=300,
    )
    check = TarnSqlOperator(
        task_id="check",
        sql="SELECT source FROM airflow.events WHERE day = '{{ ds }}' ORDER BY source",
    )
    prepare >> nightly >> check
