#!/usr/bin/env bash
# Runs all of tarn's tests: unit tests, the integration test binaries (real PostgreSQL, an S3
# server, pyiceberg, DuckDB, psql, psycopg, pgjdbc), the sqllogictest files and the checks of
# the CockroachDB and Kubernetes deployments, the bucket policies and the alert rules.
# Installs what the tests need first (scripts/setup.sh). Extra arguments go to nextest,
# e.g. `bash scripts/test.sh pgwire` runs only tests whose name contains "pgwire".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The quick profile (Cargo.toml): the tests exercise behaviour, not speed, and build in a
# fraction of the release profile's time. Benchmarks build with --release.
# --all-features: the tests cover the Kafka parts too (feature `kafka`, which the demo's build
# leaves out).
cargo build --profile quick --workspace --all-targets --all-features
cargo nextest run --cargo-profile quick --workspace --all-features --no-fail-fast "$@"
if [ $# -eq 0 ]; then
  # The CockroachDB deployment: manifests against the Kubernetes schemas, the portable SQL and
  # its privileges against a real PostgreSQL, the certificate script.
  bash deploy/cockroachdb/validate.sh
  bash deploy/cockroachdb/test.sh
  # tarn's Kubernetes manifests: kustomize output of each overlay against the Kubernetes
  # schemas and the KEDA/Prometheus Operator CRD schemas, and the Kafka consumer's files.
  bash deploy/kubernetes/validate.sh
  # The bucket's IAM/bucket policies and lifecycle rules, statically and against moto's IAM.
  "${TARN_VENV:-.venv}/bin/python" deploy/bucket/check.py
  # The alert rules (also run by the observability integration test).
  (cd deploy/prometheus && promtool check rules rules/tarn.rules.yml && promtool test rules tests/tarn.rules.test.yml)
  bash scripts/test_install.sh   # the prebuilt path: package, serve on 127.0.0.1, install.sh
fi
