#!/usr/bin/env bash
# Applies this directory's SQL to a CockroachDB cluster with the `cockroach sql` client, in
# file-name order. The cluster-init Job runs it (from a ConfigMap); operators run it from a
# workstation the same way. Every file is safe to re-run.
#
#   apply.sh init            00_* .. 03_*: users, database, schema, grants, cluster settings;
#                            then 04_* too if the shop's migrations have run (re-running the
#                            grants of 02 would otherwise undo what 04 took away)
#   apply.sh after-migrate   04_*: run after each `shop migrate up`
#
# Where and as whom it connects is the cockroach client's own environment, e.g.
#   COCKROACH_HOST=cockroachdb-public.cockroachdb:26257 COCKROACH_CERTS_DIR=certs apply.sh init
# (the user is root unless COCKROACH_USER says otherwise; it must be an admin).
#
# Files named *.crdb.sql hold CockroachDB-only statements and run against defaultdb (the shop
# database does not exist before 01_database.crdb.sql; they switch to it where they need to).
# The other files are portable, run against database shop, and are also checked against
# PostgreSQL by ../validate.sh. For the same number, *.crdb.sql sorts, and runs, first.
set -euo pipefail
export LC_ALL=C

usage() { sed -n '2,19s/^# \{0,1\}//p' "$0"; }

case "${1:-}" in
  init) pattern='0[0-3]_*.sql' ;;
  after-migrate) pattern='04_*.sql' ;;
  -h | --help) usage; exit 0 ;;
  *) usage >&2; echo "apply.sh: say init or after-migrate" >&2; exit 2 ;;
esac

here=$(cd "$(dirname "$0")" && pwd)
cockroach=${COCKROACH_BIN:-cockroach}
command -v "$cockroach" >/dev/null 2>&1 ||
  { echo "apply.sh: no '$cockroach' client on PATH (set COCKROACH_BIN)" >&2; exit 1; }

apply() { # PATTERN
  local files file name database
  shopt -s nullglob
  # shellcheck disable=SC2206 # $1 is a glob, expanded on purpose
  files=("$here"/$1)
  shopt -u nullglob
  [ ${#files[@]} -gt 0 ] || { echo "apply.sh: no $1 files in $here" >&2; exit 1; }
  for file in "${files[@]}"; do
    name=${file##*/}
    case "$name" in
      *.crdb.sql) database=defaultdb ;;
      *) database=shop ;;
    esac
    echo "apply.sh: $name (database $database)"
    # Non-interactive `cockroach sql` stops at the first failing statement and exits non-zero.
    "$cockroach" sql --database="$database" --file="$file"
  done
}

apply "$pattern"

if [ "$1" = init ]; then
  # The migrator's two bookkeeping tables exist once `shop migrate up` has run.
  present=$("$cockroach" sql --database=shop --format=csv --execute="SELECT count(*) FROM information_schema.tables
    WHERE table_schema = 'shop' AND table_name IN ('shop_schema_migrations', 'shop_migration_lock')" | tail -n 1)
  if [ "$present" = 2 ]; then
    apply '04_*.sql'
  else
    echo "apply.sh: the shop's migrations have not run yet; run 'apply.sh after-migrate' after them"
  fi
fi
