#!/usr/bin/env bash
# Checks deploy/cockroachdb without a Kubernetes cluster, a CockroachDB or any network beyond
# the package registries:
#
#   manifests  yamllint (syntax, style); kubernetes-validate --strict (every object against
#              Kubernetes' own schemas, bundled in the package, for the oldest and newest
#              Kubernetes releases we support; unknown fields and wrong types fail);
#              check_manifests.py (the promises of this directory: pinned images, one pod per
#              zone, HTTPS probes, TLS Secrets, PDB, NetworkPolicy, read-only RBAC, ...);
#              and, where kubectl is installed, the same on `kubectl kustomize` output, which
#              also proves the init-SQL ConfigMap carries every file of sql/.
#   sql        the portable SQL (sql/*.sql without .crdb) and the shop's migrations, run as
#              the shop's admin user, against a throwaway PostgreSQL started from the system's
#              binaries on a free 127.0.0.1 port; then what each user can and cannot do.
#
# The validators come from requirements.txt, pinned, in the repository's .venv (which
# scripts/setup.sh creates); missing or other versions are installed there first.
# Exits non-zero if any check fails.
set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
venv=${TARN_VENV:-$repo/.venv}
# The oldest Kubernetes release these manifests support, and the newest the validator knows.
k8s_versions=(1.31.0 1.37.0)

usage() {
  cat <<EOF
Usage: validate.sh [--only manifests|sql] [--k8s-dir DIR] [--sql-dir DIR]

  --only manifests|sql  run one half of the checks
  --k8s-dir DIR         check the manifests in DIR instead of $here/k8s
                        (the kustomize build is then skipped: it renders this directory)
  --sql-dir DIR         check the SQL files in DIR instead of $here/sql
  -h, --help            show this help
EOF
}

only=
k8s_dir=$here/k8s
sql_dir=$here/sql
custom_dir=false
while [ $# -gt 0 ]; do
  case "$1" in
    --only)
      [ $# -ge 2 ] && [[ $2 =~ ^(manifests|sql)$ ]] || { usage >&2; exit 2; }
      only=$2; shift 2 ;;
    --k8s-dir)
      [ $# -ge 2 ] && [ -d "$2" ] || { echo "validate.sh: --k8s-dir needs a directory" >&2; exit 2; }
      k8s_dir=$(cd "$2" && pwd); custom_dir=true; shift 2 ;;
    --sql-dir)
      [ $# -ge 2 ] && [ -d "$2" ] || { echo "validate.sh: --sql-dir needs a directory" >&2; exit 2; }
      sql_dir=$(cd "$2" && pwd); shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done

passed=0 failed=0 skipped=0
pass() { passed=$((passed + 1)); printf '  ok   %s\n' "$1"; }
fail() {
  failed=$((failed + 1))
  printf '  FAIL %s\n' "$1"
  [ -z "${2:-}" ] || printf '%s\n' "$2" | sed 's/^/       | /'
}
skip() { skipped=$((skipped + 1)); printf '  skip %s\n' "$1"; }
check() { # DESCRIPTION COMMAND...: passes if the command succeeds; shows its output if not
  local what=$1 out
  shift
  if out=$("$@" 2>&1); then pass "$what"; else fail "$what" "$out"; fi
}
section() { printf '\n== %s\n' "$1"; }

# --- tools -----------------------------------------------------------------------------------

ensure_tools() {
  local spec name want have missing=()
  while read -r spec; do
    spec=${spec%%#*}
    spec=${spec//[[:space:]]/}
    [ -n "$spec" ] || continue
    name=${spec%%==*} want=${spec#*==}
    have=$("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || true)
    [ "$have" = "$want" ] || missing+=("$spec")
  done <"$here/requirements.txt"
  [ ${#missing[@]} -gt 0 ] || return 0
  echo "validate.sh: installing ${missing[*]} into $venv"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
}

# --- manifests -------------------------------------------------------------------------------

validate_manifests() {
  local files=() f v rendered out line
  shopt -s nullglob
  files=("$k8s_dir"/*.yaml "$k8s_dir"/*.yml)
  shopt -u nullglob
  section "manifests in $k8s_dir (${#files[@]} files)"
  if [ ${#files[@]} -eq 0 ]; then
    fail "no manifests found"
    return
  fi

  local lint=("${files[@]}")
  $custom_dir || lint+=("$here/kustomization.yaml")
  check "yamllint --strict: ${#lint[@]} files" \
    "$venv/bin/yamllint" --strict --config-file "$here/.yamllint.yaml" "${lint[@]}"

  local names=("${files[@]##*/}")
  for v in "${k8s_versions[@]}"; do
    check "Kubernetes $v schemas (strict): ${names[*]}" \
      "$venv/bin/kubernetes-validate" --strict --quiet --kubernetes-version "$v" "${files[@]}"
  done

  policy "${files[@]}"

  if $custom_dir; then
    skip "kustomize build (checks $here only)"
  elif ! command -v kubectl >/dev/null 2>&1; then
    skip "kustomize build: no kubectl on PATH"
  else
    rendered=$(mktemp)
    if out=$(kubectl kustomize "$here" 2>&1 >"$rendered"); then
      pass "kubectl kustomize $here"
      for v in "${k8s_versions[@]}"; do
        check "Kubernetes $v schema (strict): kustomize output" \
          "$venv/bin/kubernetes-validate" --strict --quiet --kubernetes-version "$v" "$rendered"
      done
      check "kustomize output: the init-SQL ConfigMap holds every file of sql/" \
        "$venv/bin/python" - "$rendered" "$here/sql" <<'EOF'
import os, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
maps = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("cockroachdb-init-sql")]
assert len(maps) == 1, f"expected one cockroachdb-init-sql ConfigMap, found {len(maps)}"
have = set(maps[0].get("data", {}))
want = set(os.listdir(sys.argv[2]))
assert have == want, f"ConfigMap lacks {sorted(want - have)}, has extra {sorted(have - want)}"
for name in want:
    assert maps[0]["data"][name] == open(os.path.join(sys.argv[2], name)).read(), f"{name} differs"
jobs = [d for d in docs if d["kind"] == "Job"]
refs = {v["configMap"]["name"] for j in jobs for v in j["spec"]["template"]["spec"]["volumes"] if "configMap" in v}
assert maps[0]["metadata"]["name"] in refs, f"no Job mounts {maps[0]['metadata']['name']} (mounted: {refs})"
EOF
    else
      fail "kubectl kustomize $here" "$out"
    fi
    rm -f "$rendered"
  fi
}

policy() { # FILES...: check_manifests.py prints one "ok"/"FAIL" line per check
  local out rc=0 line
  out=$("$venv/bin/python" "$here/check_manifests.py" "$@" 2>&1) || rc=$?
  while IFS= read -r line; do
    case "$line" in
      "  ok   "*) passed=$((passed + 1)); printf '%s\n' "$line" ;;
      "  FAIL "*) failed=$((failed + 1)); printf '%s\n' "$line" ;;
      *) printf '       | %s\n' "$line" ;;
    esac
  done <<<"$out"
  if [ "$rc" -ne 0 ] && ! grep -q '^  FAIL ' <<<"$out"; then
    fail "check_manifests.py exited $rc"
  fi
}

# --- SQL against PostgreSQL ------------------------------------------------------------------

pg_tmp=
pg_bin=
pg_port=
as_postgres=()

stop_postgres() {
  if [ -n "$pg_tmp" ] && [ -d "$pg_tmp" ]; then
    if [ -f "$pg_tmp/data/postmaster.pid" ]; then
      "${as_postgres[@]}" "$pg_bin/pg_ctl" -D "$pg_tmp/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$pg_tmp"
  fi
}

start_postgres() {
  pg_bin=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/initdb" ]; then
    fail "PostgreSQL server binaries (/usr/lib/postgresql/*/bin): not installed; run scripts/setup.sh"
    return 1
  fi
  # initdb refuses to run as root: run the server as the postgres user.
  if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || { fail "no postgres user to run PostgreSQL as"; return 1; }
    as_postgres=(runuser -u postgres --)
  else
    as_postgres=()
  fi
  pg_tmp=$(mktemp -d)
  trap stop_postgres EXIT
  mkdir -p "$pg_tmp/sock"
  [ ${#as_postgres[@]} -eq 0 ] || chown -R postgres: "$pg_tmp"
  pg_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  check "initdb ($pg_bin)" "${as_postgres[@]}" "$pg_bin/initdb" --pgdata="$pg_tmp/data" --username=postgres \
    --auth=trust --encoding=UTF8 --no-locale --no-sync || return 1
  check "PostgreSQL on 127.0.0.1:$pg_port" "${as_postgres[@]}" "$pg_bin/pg_ctl" -D "$pg_tmp/data" -w -t 60 \
    -l "$pg_tmp/server.log" \
    -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $pg_tmp/sock -c fsync=off -c full_page_writes=off" start ||
    return 1
}

# psql as USER in DATABASE, statements from stdin; stops at the first error; errors carry
# their SQLSTATE (VERBOSITY verbose) so that checks can tell a refusal from a mistake.
sql_as() { # USER DATABASE [psql args...] <SQL
  local user=$1 db=$2
  shift 2
  "$pg_bin/psql" --no-psqlrc --quiet --set=ON_ERROR_STOP=1 --set=VERBOSITY=verbose \
    --host=127.0.0.1 --port="$pg_port" --username="$user" --dbname="$db" "$@"
}

run_file() { # USER FILE [extra psql args]
  sql_as "$1" shop --file="$2" "${@:3}"
}

allowed() { # DESCRIPTION USER SQL
  local out
  if out=$(sql_as "$2" shop <<<"$3" 2>&1); then pass "$1"; else fail "$1" "$out"; fi
}

denied() { # DESCRIPTION USER SQL: must fail with insufficient_privilege (42501)
  local out
  if out=$(sql_as "$2" shop <<<"$3" 2>&1); then
    fail "$1" "it succeeded"
  elif grep -q '42501' <<<"$out"; then
    pass "$1"
  else
    fail "$1 (failed, but not for want of a privilege)" "$out"
  fi
}

query() { # USER SQL: one value
  sql_as "$1" shop --tuples-only --no-align <<<"$2"
}

validate_sql() {
  local users=() db f out
  section "SQL in $sql_dir and the shop's migrations, against PostgreSQL"
  start_postgres || return 0

  # The CockroachDB-only files create the users and the database with IF NOT EXISTS, which
  # PostgreSQL lacks; derive PostgreSQL's statements from them, so both make the same names.
  mapfile -t users < <(sed -n 's/^CREATE USER IF NOT EXISTS \([a-z_][a-z0-9_]*\);$/\1/p' "$sql_dir/00_users.crdb.sql")
  db=$(sed -n 's/^CREATE DATABASE IF NOT EXISTS \([a-z_][a-z0-9_]*\);$/\1/p' "$sql_dir/01_database.crdb.sql")
  if [ "${users[*]}" != "shop_admin shop_app tarn_cdc" ] || [ "$db" != shop ]; then
    fail "users and database in the .crdb.sql files" "users: ${users[*]}; database: $db (the checks below expect shop_admin shop_app tarn_cdc; shop)"
    return 0
  fi
  pass "users (${users[*]}) and database ($db) read from 00_users.crdb.sql, 01_database.crdb.sql"
  {
    for f in "${users[@]}"; do echo "CREATE ROLE $f LOGIN;"; done
    echo "CREATE ROLE outsider LOGIN;"
    echo "CREATE DATABASE $db;"
  } >"$pg_tmp/bootstrap.sql"
  check "PostgreSQL equivalent of the .crdb.sql users and database" \
    "$pg_bin/psql" --no-psqlrc --quiet --set=ON_ERROR_STOP=1 --host=127.0.0.1 --port="$pg_port" \
    --username=postgres --dbname=postgres --file="$pg_tmp/bootstrap.sql" || return 0

  local init_files=()
  for f in "$sql_dir"/0[0-3]_*.sql; do
    [[ $f == *.crdb.sql ]] || init_files+=("$f")
  done
  # Twice: the init Job may run again on a live cluster.
  for round in first second; do
    for f in "${init_files[@]}"; do
      check "${f##*/} as the superuser ($round run)" run_file postgres "$f"
    done
  done

  # The shop's migrator runs each migration in a transaction, as shop_admin.
  for f in "$repo"/examples/shop/migrations/*.sql; do
    check "migration ${f##*/} as shop_admin" run_file shop_admin "$f" --single-transaction
  done
  # Stand-ins for the migrator's bookkeeping tables (examples/shop/src/migrate.rs creates them
  # on its first run, as shop_admin): only their names and owner matter to the grants here.
  check "bookkeeping tables as shop_admin (stand-ins for shop migrate's)" sql_as shop_admin shop <<'EOF'
CREATE TABLE shop_schema_migrations (version BIGINT NOT NULL PRIMARY KEY);
CREATE TABLE shop_migration_lock (id BIGINT NOT NULL PRIMARY KEY);
EOF
  # A re-run of the init files after the migrations, then 04, as apply.sh init does.
  for f in "${init_files[@]}" "$sql_dir"/04_*.sql; do
    check "${f##*/} as the superuser (after the migrations)" run_file postgres "$f"
  done

  section "SQL: who can do what"
  out=$(query postgres "SELECT string_agg(format('%s.%s owned by %s', schemaname, tablename, tableowner), ', '
    ORDER BY tablename) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')" 2>&1)
  local expect="shop.customers owned by shop_admin, shop.order_items owned by shop_admin, shop.orders owned by shop_admin, shop.payments owned by shop_admin, shop.products owned by shop_admin, shop.shop_migration_lock owned by shop_admin, shop.shop_schema_migrations owned by shop_admin"
  if [ "$out" = "$expect" ]; then
    pass "migrations created the shop's tables in schema shop, owned by shop_admin (search_path)"
  else
    fail "migrations created the shop's tables in schema shop, owned by shop_admin" "got: $out"
  fi

  # Every privilege on every shop table, against what each user should hold.
  out=$(query postgres "
    WITH expected(usr, priv) AS (VALUES
        ('shop_app', 'SELECT'), ('shop_app', 'INSERT'), ('shop_app', 'UPDATE'), ('shop_app', 'DELETE'),
        ('tarn_cdc', 'SELECT')),
      shop_tables AS (
        SELECT tablename FROM pg_tables
        WHERE schemaname = 'shop' AND tablename NOT IN ('shop_schema_migrations', 'shop_migration_lock'))
    SELECT string_agg(format('%s %s %s on %s', u, CASE WHEN has THEN 'has' ELSE 'lacks' END, p, t), '; ')
    FROM (
      SELECT u, p, t, has_table_privilege(u, 'shop.' || t, p) AS has,
             EXISTS (SELECT 1 FROM expected e WHERE e.usr = u AND e.priv = p) AS want
      FROM unnest(ARRAY['shop_app', 'tarn_cdc', 'outsider']) u,
           unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']) p,
           shop_tables t(t)) m
    WHERE has <> want" 2>&1)
  if [ -z "$out" ]; then
    pass "privilege matrix on the 5 shop tables: shop_app SELECT/INSERT/UPDATE/DELETE, tarn_cdc SELECT, nothing else"
  else
    fail "privilege matrix on the shop tables" "$out"
  fi

  allowed "shop_app reads, inserts, updates and deletes rows of every shop table" shop_app "
    BEGIN;
    INSERT INTO customers (id, email, name) VALUES ('00000000-0000-4000-8000-000000000001', 'a@example.com', 'A');
    INSERT INTO products (id, sku, name, price, stock) VALUES ('00000000-0000-4000-8000-000000000002', 'SKU-1', 'P', 9.99, 5);
    INSERT INTO orders (id, customer_id, total) VALUES ('00000000-0000-4000-8000-000000000003', '00000000-0000-4000-8000-000000000001', 9.99);
    INSERT INTO order_items (id, order_id, product_id, quantity, unit_price)
      VALUES ('00000000-0000-4000-8000-000000000004', '00000000-0000-4000-8000-000000000003', '00000000-0000-4000-8000-000000000002', 1, 9.99);
    INSERT INTO payments (id, order_id, amount, method)
      VALUES ('00000000-0000-4000-8000-000000000005', '00000000-0000-4000-8000-000000000003', 9.99, 'card');
    UPDATE customers SET name = 'B'; UPDATE products SET stock = stock - 1; UPDATE orders SET status = 'paid';
    UPDATE order_items SET quantity = 2; UPDATE payments SET status = 'refunded';
    SELECT count(*) FROM customers JOIN orders ON orders.customer_id = customers.id
      JOIN order_items ON order_items.order_id = orders.id JOIN products ON products.id = order_items.product_id
      JOIN payments ON payments.order_id = orders.id;
    DELETE FROM payments; DELETE FROM order_items; DELETE FROM orders; DELETE FROM products; DELETE FROM customers;
    COMMIT;"
  allowed "shop_app reads the migration history (shop load reports pending migrations)" shop_app \
    "SELECT count(*) FROM shop_schema_migrations"
  denied "shop_app cannot CREATE TABLE in schema shop" shop_app "CREATE TABLE shop.intruder (id BIGINT)"
  denied "shop_app cannot CREATE TABLE in schema public" shop_app "CREATE TABLE public.intruder (id BIGINT)"
  denied "shop_app cannot CREATE SCHEMA" shop_app "CREATE SCHEMA intruder"
  denied "shop_app cannot DROP TABLE" shop_app "DROP TABLE payments"
  denied "shop_app cannot ALTER TABLE" shop_app "ALTER TABLE customers ADD COLUMN note TEXT"
  denied "shop_app cannot CREATE INDEX" shop_app "CREATE INDEX customers_name_idx ON customers (name)"
  denied "shop_app cannot TRUNCATE" shop_app "TRUNCATE order_items"
  denied "shop_app cannot write the migration lock" shop_app \
    "INSERT INTO shop_migration_lock (id) VALUES (1)"
  denied "shop_app cannot delete migration history" shop_app "DELETE FROM shop_schema_migrations"

  allowed "tarn_cdc reads every shop table" tarn_cdc "
    SELECT (SELECT count(*) FROM customers) + (SELECT count(*) FROM products) + (SELECT count(*) FROM orders)
         + (SELECT count(*) FROM order_items) + (SELECT count(*) FROM payments)"
  denied "tarn_cdc cannot INSERT" tarn_cdc \
    "INSERT INTO customers (id, email, name) VALUES ('00000000-0000-4000-8000-000000000009', 'c@example.com', 'C')"
  denied "tarn_cdc cannot UPDATE" tarn_cdc "UPDATE products SET stock = 0"
  denied "tarn_cdc cannot DELETE" tarn_cdc "DELETE FROM orders"
  denied "tarn_cdc cannot CREATE TABLE" tarn_cdc "CREATE TABLE shop.intruder (id BIGINT)"
  denied "tarn_cdc cannot read the migrator's tables" tarn_cdc "SELECT count(*) FROM shop_schema_migrations"

  if out=$(sql_as outsider shop <<<"SELECT 1" 2>&1); then
    fail "a user without grants cannot connect to database shop" "it connected"
  elif grep -q 'permission denied for database' <<<"$out"; then
    pass "a user without grants cannot connect to database shop"
  else
    fail "a user without grants cannot connect to database shop (failed otherwise)" "$out"
  fi

  stop_postgres
  trap - EXIT
}

# --- main ------------------------------------------------------------------------------------

echo "validate.sh: deploy/cockroachdb"
ensure_tools
[ "$only" = sql ] || validate_manifests
[ "$only" = manifests ] || validate_sql
printf '\nvalidate: %d passed, %d failed, %d skipped\n' "$passed" "$failed" "$skipped"
[ "$failed" -eq 0 ]
