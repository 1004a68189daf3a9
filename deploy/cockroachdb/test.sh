#!/usr/bin/env bash
# Tests of deploy/cockroachdb's scripts, offline:
#   certs.sh     run with openssl into a temporary directory; the chain verifies, the node
#                certificate names every pod and Service, client CNs are the user names, keys
#                are 0600, a mutual-TLS handshake with hostname verification succeeds (and
#                fails for a wrong name); refusals: existing files, missing openssl, bad input;
#                --apply drives kubectl (a stand-in that records its input)
#   validate.sh  fails on deliberately broken copies of the manifests (misspelled fields,
#                strings for integers, a missing required field, YAML syntax, an unpinned
#                image, soft zone spreading, SQL open to another namespace) and of the SQL
#                (a grant too many), and passes on an unbroken copy
#   apply.sh     runs the files in order, each against the right database (a stand-in
#                cockroach client records the calls)
#   the shell embedded in the StatefulSet and Job parses; the locality script writes the
#   node's zone and refuses a node without one
# Ends with "test: N passed, N failed"; exits non-zero if any failed.
set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
venv=${TARN_VENV:-$repo/.venv}
tmp=$(mktemp -d)
server_pid=
cleanup() {
  [ -z "$server_pid" ] || kill "$server_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

passed=0 failed=0
pass() { passed=$((passed + 1)); printf '  ok   %s\n' "$1"; }
fail() {
  failed=$((failed + 1))
  printf '  FAIL %s\n' "$1"
  [ -z "${2:-}" ] || printf '%s\n' "$2" | head -n 40 | sed 's/^/       | /'
}
section() { printf '\n== %s\n' "$1"; }
same() { # DESCRIPTION ACTUAL EXPECTED
  if [ "$2" = "$3" ]; then
    pass "$1"
  else
    fail "$1" "got:  $2
want: $3"
  fi
}
succeeds() { # DESCRIPTION COMMAND...
  local what=$1 out
  shift
  if out=$("$@" 2>&1); then pass "$what"; else fail "$what" "$out"; fi
}
fails_with() { # DESCRIPTION EXPECTED-TEXT COMMAND...: must exit non-zero, saying EXPECTED-TEXT
  local what=$1 expected=$2 out
  shift 2
  if out=$("$@" 2>&1); then
    fail "$what" "it succeeded:
$out"
  elif grep -qF -- "$expected" <<<"$out"; then
    pass "$what"
  else
    fail "$what (failed without saying '$expected')" "$out"
  fi
}

certs=$tmp/tls
c=$certs/certs

# --- certs.sh --------------------------------------------------------------------------------

section "certs.sh"
command -v openssl >/dev/null || { echo "test.sh: openssl is needed (apt-get install openssl)" >&2; exit 1; }

if out=$("$here/certs.sh" --help 2>&1) && grep -q '^Usage: certs.sh' <<<"$out"; then
  pass "--help prints the usage"
else
  fail "--help prints the usage" "$out"
fi
succeeds "generates CA, node and client certificates with openssl" \
  "$here/certs.sh" --tool openssl "$certs"

expected_files="ca.crt client.root.crt client.root.key client.shop_admin.crt client.shop_admin.key client.shop_app.crt client.shop_app.key client.tarn_cdc.crt client.tarn_cdc.key node.crt node.key"
have_files=$(cd "$c" && echo *)
if [ "$have_files" = "$expected_files" ]; then
  pass "CockroachDB's file names in certs/: $have_files"
else
  fail "CockroachDB's file names in certs/" "have: $have_files
want: $expected_files"
fi
if [ -f "$certs/ca.key" ] && [ ! -e "$c/ca.key" ]; then
  pass "the CA key is beside certs/, not in it"
else
  fail "the CA key is beside certs/, not in it"
fi

modes=$(cd "$certs" && stat -c '%n=%a' ca.key certs/*.key | tr '\n' ' ')
if ! stat -c '%a' "$certs/ca.key" "$c"/*.key | grep -qvx 600; then
  pass "every key file is mode 0600 ($modes)"
else
  fail "every key file is mode 0600" "$modes"
fi
dir_modes=$(stat -c '%a' "$certs" "$c" | tr '\n' ' ')
same "directories are mode 0700" "$dir_modes" "700 700 "

for crt in node client.root client.shop_admin client.shop_app client.tarn_cdc; do
  succeeds "$crt.crt verifies against ca.crt" openssl verify -x509_strict -CAfile "$c/ca.crt" "$c/$crt.crt"
  if [ "$(openssl x509 -in "$c/$crt.crt" -noout -pubkey)" = "$(openssl pkey -in "$c/$crt.key" -pubout)" ]; then
    pass "$crt.key belongs to $crt.crt"
  else
    fail "$crt.key belongs to $crt.crt"
  fi
done

text=$(openssl x509 -in "$c/ca.crt" -noout -text)
if grep -q 'CA:TRUE' <<<"$text" && grep -q 'Certificate Sign' <<<"$text"; then
  pass "ca.crt is a CA that signs certificates"
else
  fail "ca.crt is a CA that signs certificates" "$text"
fi

node_text=$(openssl x509 -in "$c/node.crt" -noout -text)
node_subject=$(openssl x509 -in "$c/node.crt" -noout -subject -nameopt RFC2253)
same "node.crt: CN=node" "$node_subject" "subject=CN=node,O=Cockroach"
if grep -q 'TLS Web Server Authentication, TLS Web Client Authentication' <<<"$node_text" &&
  grep -q 'CA:FALSE' <<<"$node_text"; then
  pass "node.crt: server and client authentication, not a CA"
else
  fail "node.crt: server and client authentication, not a CA" "$node_text"
fi
sans=$(openssl x509 -in "$c/node.crt" -noout -ext subjectAltName | tail -n +2 | tr -d ' ' | tr ',' '\n')
missing=()
for name in DNS:localhost IP:127.0.0.1 \
  DNS:cockroachdb-public DNS:cockroachdb-public.cockroachdb DNS:cockroachdb-public.cockroachdb.svc.cluster.local \
  DNS:cockroachdb.cockroachdb.svc.cluster.local DNS:'*.cockroachdb' DNS:'*.cockroachdb.cockroachdb.svc.cluster.local' \
  DNS:cockroachdb-0.cockroachdb DNS:cockroachdb-1.cockroachdb DNS:cockroachdb-2.cockroachdb \
  DNS:cockroachdb-0.cockroachdb.cockroachdb.svc.cluster.local DNS:cockroachdb-2.cockroachdb.cockroachdb.svc.cluster.local; do
  grep -qxF -- "${name/IP:/IPAddress:}" <<<"$sans" || missing+=("$name")
done
if [ ${#missing[@]} -eq 0 ]; then
  pass "node.crt: SANs for localhost, both Services and every pod ($(wc -l <<<"$sans") names)"
else
  fail "node.crt: SANs" "missing: ${missing[*]}
have: $(tr '\n' ' ' <<<"$sans")"
fi

for user in root shop_admin shop_app tarn_cdc; do
  subject=$(openssl x509 -in "$c/client.$user.crt" -noout -subject -nameopt RFC2253)
  ext=$(openssl x509 -in "$c/client.$user.crt" -noout -ext extendedKeyUsage | tail -n +2 | tr -d ' ')
  if [ "$subject" = "subject=CN=$user,O=Cockroach" ] && [ "$ext" = "TLSWebClientAuthentication" ]; then
    pass "client.$user.crt: CN=$user, client authentication only"
  else
    fail "client.$user.crt: CN=$user, client authentication only" "$subject; $ext"
  fi
done

# A real TLS handshake, as the shop's sslmode=verify-full makes it: the client checks the
# chain and the host name, the server (like CockroachDB) requires a client certificate.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
openssl s_server -quiet -accept "127.0.0.1:$port" -cert "$c/node.crt" -key "$c/node.key" \
  -CAfile "$c/ca.crt" -Verify 1 -verify_return_error </dev/null >"$tmp/s_server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
handshake() { # HOSTNAME
  openssl s_client -brief -connect "127.0.0.1:$port" -CAfile "$c/ca.crt" -verify_return_error \
    -verify_hostname "$1" -cert "$c/client.shop_app.crt" -key "$c/client.shop_app.key" </dev/null
}
succeeds "mutual TLS as shop_app to cockroachdb-public.cockroachdb.svc.cluster.local (verify-full)" \
  handshake cockroachdb-public.cockroachdb.svc.cluster.local
fails_with "hostname verification rejects a name the node certificate lacks" "hostname mismatch" \
  handshake cockroachdb-public.elsewhere.svc.cluster.local
kill "$server_pid" 2>/dev/null || true
wait "$server_pid" 2>/dev/null || true
server_pid=

ca_fingerprint() { openssl x509 -in "$c/ca.crt" -noout -fingerprint -sha256; }
before=$(ca_fingerprint)
fails_with "refuses to overwrite existing files without --force" "use --force to overwrite" \
  "$here/certs.sh" --tool openssl "$certs"
same "... and leaves them untouched" "$(ca_fingerprint)" "$before"
succeeds "--reuse-ca --force re-issues node and client certificates" \
  "$here/certs.sh" --tool openssl --reuse-ca --force "$certs"
same "... with the same CA" "$(ca_fingerprint)" "$before"
succeeds "... which still verify" openssl verify -CAfile "$c/ca.crt" "$c/node.crt" "$c/client.tarn_cdc.crt"
node_before=$(openssl x509 -in "$c/node.crt" -noout -fingerprint -sha256)
succeeds "--reuse-ca adds a user" \
  "$here/certs.sh" --tool openssl --reuse-ca --client shop_app=shop --client reporting=bi "$certs"
succeeds "... whose certificate verifies" openssl verify -CAfile "$c/ca.crt" "$c/client.reporting.crt"
same "... keeping the existing certificates" "$(openssl x509 -in "$c/node.crt" -noout -fingerprint -sha256)" "$node_before"
succeeds "--force makes a new CA" "$here/certs.sh" --tool openssl --force "$certs"
if [ "$(ca_fingerprint)" != "$before" ]; then pass "... (a different CA)"; else fail "... (a different CA)"; fi

# No openssl and no cockroach: a PATH of everything else.
mkdir -p "$tmp/bin-no-openssl"
for f in /usr/local/bin/* /usr/bin/* /bin/*; do
  name=${f##*/}
  case "$name" in openssl | cockroach) continue ;; esac
  [ -e "$tmp/bin-no-openssl/$name" ] || ln -s "$f" "$tmp/bin-no-openssl/$name"
done
fails_with "without openssl or cockroach: a clear error" "openssl not found" \
  env PATH="$tmp/bin-no-openssl" bash "$here/certs.sh" "$tmp/never"
fails_with "--tool cockroach without cockroach: a clear error" "no cockroach binary" \
  env PATH="$tmp/bin-no-openssl" bash "$here/certs.sh" --tool cockroach "$tmp/never"
fails_with "a non-integer --replicas is refused" "--replicas must be a positive integer" \
  "$here/certs.sh" --replicas three "$tmp/never"
fails_with "a user name that is no SQL name is refused" "not a lower-case SQL user name" \
  "$here/certs.sh" --client Shop-App "$tmp/never"
fails_with "OUT_DIR is required" "OUT_DIR is missing" "$here/certs.sh"
if [ ! -e "$tmp/never" ]; then pass "refusals write nothing"; else fail "refusals write nothing"; fi

printed=$("$here/certs.sh" --tool openssl "$tmp/printed" 2>/dev/null)
want_secrets="cockroachdb/cockroachdb-node cockroachdb/cockroachdb-client-root shop/cockroachdb-client-shop-admin shop/cockroachdb-client-shop-app tarn/cockroachdb-client-tarn-cdc"
got_secrets=$(sed -n 's/^kubectl --namespace \([^ ]*\) create secret generic \([^ ]*\) .*/\1\/\2/p' <<<"$printed" | tr '\n' ' ')
same "prints one Secret per consumer: $want_secrets" "$got_secrets" "$want_secrets "
if grep -q 'ca\.key' <<<"$printed"; then fail "no Secret carries the CA key" "$printed"; else pass "no Secret carries the CA key"; fi
node_line=$(grep ' cockroachdb-node ' <<<"$printed")
if grep -q 'client\.' <<<"$node_line"; then
  fail "the node Secret holds ca.crt, node.crt, node.key only" "$node_line"
else
  pass "the node Secret holds ca.crt, node.crt, node.key only"
fi

mkdir -p "$tmp/fake-kubectl"
cat >"$tmp/fake-kubectl/kubectl" <<'EOF'
#!/usr/bin/env bash
# Stand-in for kubectl: records the command line and, for apply, the manifest it is given.
echo "kubectl $*" >>"$KUBECTL_LOG"
case " $* " in
  *" apply "*) cat >>"$KUBECTL_LOG" ;;
  *" create secret generic "*) echo "kind: Secret  # $*" ;;
esac
EOF
chmod +x "$tmp/fake-kubectl/kubectl"
export KUBECTL_LOG=$tmp/kubectl.log
succeeds "--apply creates the Secrets with kubectl" \
  env PATH="$tmp/fake-kubectl:$PATH" "$here/certs.sh" --tool openssl --apply "$tmp/applied"
applies=$(grep -c '^kubectl apply --filename=-$' "$KUBECTL_LOG" || true)
same "... five kubectl apply calls" "$applies" 5

# --- validate.sh on broken manifests and SQL --------------------------------------------------

section "validate.sh rejects broken manifests and SQL"
broken() { # NAME FILE SED-EXPRESSION: a copy of k8s/ with one file edited
  rm -rf "$tmp/k8s-$1"
  cp -r "$here/k8s" "$tmp/k8s-$1"
  sed -i "$3" "$tmp/k8s-$1/$2"
  if cmp -s "$here/k8s/$2" "$tmp/k8s-$1/$2"; then
    echo "test.sh: the edit '$3' changed nothing in $2" >&2
    exit 1
  fi
  echo "$tmp/k8s-$1"
}
validate_manifests() { bash "$here/validate.sh" --only manifests --k8s-dir "$1"; }

cp -r "$here/k8s" "$tmp/k8s-unbroken"
succeeds "an unbroken copy passes" validate_manifests "$tmp/k8s-unbroken"
fails_with "a misspelled field (replica:) fails the schema check" "'replica' was unexpected" \
  validate_manifests "$(broken misspelled 30-statefulset.yaml 's/^  replicas: 3$/  replica: 3/')"
fails_with "a string where an integer belongs (replicas: \"three\") fails" "'three' is not of type 'integer'" \
  validate_manifests "$(broken string-for-int 30-statefulset.yaml 's/^  replicas: 3$/  replicas: "three"/')"
fails_with "a misspelled nested field (probe schem:) fails" "'schem' was unexpected" \
  validate_manifests "$(broken nested 30-statefulset.yaml '0,/scheme: HTTPS/s//schem: HTTPS/')"
fails_with "a wrong type in a nested field (containerPort: \"x\") fails" "is not of type 'integer'" \
  validate_manifests "$(broken port 30-statefulset.yaml 's/containerPort: 26257/containerPort: "x"/')"
fails_with "a missing required field (a container without name) fails" "'name' is a required property" \
  validate_manifests "$(broken required 60-cluster-init-job.yaml 's/^        - name: cluster-init$/        - stdin: false/')"
fails_with "broken YAML fails yamllint" "syntax error" \
  validate_manifests "$(broken yaml 40-pdb.yaml 's/^  maxUnavailable: 1$/  maxUnavailable: 1\n wrong: indent/')"
fails_with "an unpinned image (:latest) fails the policy check" "is pinned" \
  validate_manifests "$(broken latest 60-cluster-init-job.yaml 's/cockroachdb\/cockroach:v[0-9.]*/cockroachdb\/cockroach:latest/')"
fails_with "soft zone spreading (ScheduleAnyway) fails the policy check" "one pod per zone" \
  validate_manifests "$(broken spread 30-statefulset.yaml 's/whenUnsatisfiable: DoNotSchedule/whenUnsatisfiable: ScheduleAnyway/')"
fails_with "SQL open to another namespace fails the policy check" "SQL from other namespaces only from" \
  validate_manifests "$(broken netpol 50-networkpolicy.yaml 's/kubernetes.io\/metadata.name: tarn/kubernetes.io\/metadata.name: default/')"

rm -rf "$tmp/sql-wide"
cp -r "$here/sql" "$tmp/sql-wide"
sed -i 's/GRANT SELECT ON TABLES TO tarn_cdc/GRANT SELECT, INSERT ON TABLES TO tarn_cdc/' "$tmp/sql-wide/02_roles.sql"
fails_with "a grant too many (INSERT for tarn_cdc) fails the privilege checks" "tarn_cdc cannot INSERT" \
  bash "$here/validate.sh" --only sql --sql-dir "$tmp/sql-wide"

# --- apply.sh ---------------------------------------------------------------------------------

section "sql/apply.sh"
cat >"$tmp/fake-cockroach" <<'EOF'
#!/usr/bin/env bash
# Stand-in for the cockroach client: records which file ran against which database.
db= file=
for arg in "$@"; do
  case "$arg" in
    --database=*) db=${arg#*=} ;;
    --file=*) file=${arg##*/} ;;
    --execute=*) printf 'count\n%s\n' "$MIGRATED_TABLES"; exit 0 ;;
  esac
done
echo "$file@$db" >>"$COCKROACH_LOG"
EOF
chmod +x "$tmp/fake-cockroach"
export COCKROACH_LOG=$tmp/cockroach.log
run_apply() { # STAGE TABLES-PRESENT
  : >"$COCKROACH_LOG"
  COCKROACH_BIN=$tmp/fake-cockroach MIGRATED_TABLES=$2 bash "$here/sql/apply.sh" "$1" >/dev/null
  tr '\n' ' ' <"$COCKROACH_LOG"
}
init_order="00_users.crdb.sql@defaultdb 01_database.crdb.sql@defaultdb 01_database.sql@shop 02_roles.crdb.sql@defaultdb 02_roles.sql@shop 03_cluster_settings.crdb.sql@defaultdb "
got=$(run_apply init 0)
same "init on a new cluster: files and databases in order" "$got" "$init_order"
got=$(run_apply init 2)
same "init after the migrations also runs 04" "$got" "${init_order}04_after_migrate.sql@shop "
got=$(run_apply after-migrate 2)
same "after-migrate runs 04 only" "$got" "04_after_migrate.sql@shop "
fails_with "apply.sh without a stage explains itself" "say init or after-migrate" bash "$here/sql/apply.sh"

# --- shell embedded in the manifests ------------------------------------------------------------

section "shell in the manifests"
"$venv/bin/python" - "$here/k8s" "$tmp/scripts" <<'EOF'
import os, sys, yaml
out = sys.argv[2]
os.makedirs(out, exist_ok=True)
for name in sorted(os.listdir(sys.argv[1])):
    for doc in yaml.safe_load_all(open(os.path.join(sys.argv[1], name))):
        if not doc or doc["kind"] not in ("StatefulSet", "Job"):
            continue
        spec = doc["spec"]["template"]["spec"]
        for c in spec.get("initContainers", []) + spec["containers"]:
            cmd = c.get("command", [])
            if cmd[:1] == ["/bin/bash"]:
                with open(os.path.join(out, f"{doc['metadata']['name']}.{c['name']}.sh"), "w") as f:
                    f.write(cmd[-1])
EOF
for script in "$tmp/scripts"/*.sh; do
  succeeds "bash -n: ${script##*/}" bash -n "$script"
done

# The locality init container against a stand-in API server answer.
mkdir -p "$tmp/loc/sa" "$tmp/loc/out" "$tmp/loc/bin"
echo token >"$tmp/loc/sa/token"
touch "$tmp/loc/sa/ca.crt"
sed -e "s|/var/run/secrets/kubernetes.io/serviceaccount|$tmp/loc/sa|g" -e "s|/cockroach/locality|$tmp/loc/out|g" \
  "$tmp/scripts/cockroachdb.locality.sh" >"$tmp/loc/locality.sh"
node_json() { # LABEL-LINES...
  printf '{\n  "kind": "Node",\n  "metadata": {\n    "name": "node-a",\n    "labels": {\n'
  printf '      %s\n' "$@"
  printf '    },\n    "annotations": {\n      "node.alpha.kubernetes.io/ttl": "0"\n    }\n  }\n}\n'
}
fake_curl() { # what the stand-in curl prints
  printf '#!/usr/bin/env bash\ncat <<"JSON"\n%s\nJSON\n' "$1" >"$tmp/loc/bin/curl"
  chmod +x "$tmp/loc/bin/curl"
}
fake_curl "$(node_json '"kubernetes.io/hostname": "node-a",' '"topology.kubernetes.io/region": "europe-west1",' \
  '"topology.kubernetes.io/zone": "europe-west1-b"')"
succeeds "locality: runs against a node with zone and region labels" \
  env PATH="$tmp/loc/bin:$PATH" NODE_NAME=node-a bash -e "$tmp/loc/locality.sh"
got=$(cat "$tmp/loc/out/locality" 2>/dev/null || true)
same "locality: writes region=europe-west1,zone=europe-west1-b" "$got" "region=europe-west1,zone=europe-west1-b"
fake_curl "$(node_json '"kubernetes.io/hostname": "node-a"')"
fails_with "locality: refuses a node without a zone label" "has no topology.kubernetes.io/zone label" \
  env PATH="$tmp/loc/bin:$PATH" NODE_NAME=node-a bash -e "$tmp/loc/locality.sh"

printf '\ntest: %d passed, %d failed\n' "$passed" "$failed"
[ "$failed" -eq 0 ]
