#!/usr/bin/env bash
# Generates the TLS material of the secure CockroachDB cluster in k8s/: a CA, one node
# certificate for every pod of the StatefulSet, and one client certificate per SQL user, with
# the file names CockroachDB expects in a --certs-dir (ca.crt, node.crt/node.key,
# client.<user>.crt/client.<user>.key). Then prints (or, with --apply, runs) the kubectl
# commands that load them into the Secrets the manifests and the applications mount.
#
# Uses `cockroach cert` when the cockroach binary is on PATH (the reference implementation),
# otherwise openssl. Both produce the same files and extensions; see --help.
set -euo pipefail

prog=${0##*/}

usage() {
  cat <<EOF
Usage: $prog [options] OUT_DIR

Writes:
  OUT_DIR/ca.key                     the CA's private key: never put it in a Secret; keep it
                                     offline, it signs every future certificate of the cluster
  OUT_DIR/certs/ca.crt               the CA certificate (clients verify the nodes with it)
  OUT_DIR/certs/node.crt, node.key   the node certificate (CN=node), shared by all pods, with
                                     the DNS names of the pods, both Services and localhost
  OUT_DIR/certs/client.USER.crt/.key one client certificate per user (CN=USER)
Keys are mode 0600, directories 0700.

Options:
  --namespace NS        namespace of the CockroachDB StatefulSet (default: cockroachdb)
  --statefulset NAME    StatefulSet and headless Service name (default: cockroachdb)
  --public-service NAME client-facing Service name (default: cockroachdb-public)
  --replicas N          pods to name in the node certificate (default: 3; name a few more
                        than you run if you expect to scale out without re-issuing it)
  --cluster-domain D    the Kubernetes cluster domain (default: cluster.local)
  --client USER[=NS]    a client certificate for SQL user USER, whose Secret goes into
                        namespace NS; repeatable. Default: root=<namespace> shop_admin=shop
                        shop_app=shop tarn_cdc=tarn
  --key-size BITS       RSA key size (default: 2048, as cockroach cert)
  --ca-days N           CA lifetime in days (default: 3650)
  --cert-days N         node/client certificate lifetime in days (default: 365)
  --tool auto|cockroach|openssl
                        which generator to use (default: auto = cockroach if on PATH)
  --reuse-ca            sign with the existing OUT_DIR/ca.key and certs/ca.crt instead of
                        making a new CA; certificates that exist are kept (unless --force)
                        and missing ones made: to add a user, or with --force to rotate
  --force               overwrite existing certificates and keys (and, without --reuse-ca,
                        the CA: every node and client must then get the new files)
  --apply               create/update the Secrets with kubectl instead of printing the commands
  -h, --help            show this help

Examples:
  $prog ./crdb-tls                          # new CA, node and the four default clients
  $prog --reuse-ca --force ./crdb-tls       # rotate node/client certs, same CA
  $prog --reuse-ca --client reporting=bi ./crdb-tls   # add a user (existing files kept)
EOF
}

die() { echo "$prog: error: $*" >&2; exit 1; }

namespace=cockroachdb
statefulset=cockroachdb
public_service=cockroachdb-public
replicas=3
cluster_domain=cluster.local
key_size=2048
ca_days=3650
cert_days=365
tool=auto
reuse_ca=false
force=false
apply=false
clients=()
out_dir=

need_arg() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (see --help)"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --namespace) need_arg "$@"; namespace=$2; shift 2 ;;
    --statefulset) need_arg "$@"; statefulset=$2; shift 2 ;;
    --public-service) need_arg "$@"; public_service=$2; shift 2 ;;
    --replicas) need_arg "$@"; replicas=$2; shift 2 ;;
    --cluster-domain) need_arg "$@"; cluster_domain=$2; shift 2 ;;
    --client) need_arg "$@"; clients+=("$2"); shift 2 ;;
    --key-size) need_arg "$@"; key_size=$2; shift 2 ;;
    --ca-days) need_arg "$@"; ca_days=$2; shift 2 ;;
    --cert-days) need_arg "$@"; cert_days=$2; shift 2 ;;
    --tool) need_arg "$@"; tool=$2; shift 2 ;;
    --reuse-ca) reuse_ca=true; shift ;;
    --force) force=true; shift ;;
    --apply) apply=true; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [ -z "$out_dir" ] || die "one OUT_DIR only (got '$out_dir' and '$1')"; out_dir=$1; shift ;;
  esac
done
if [ $# -gt 0 ]; then
  [ -z "$out_dir" ] && [ $# -eq 1 ] || die "one OUT_DIR only"
  out_dir=$1
fi
[ -n "$out_dir" ] || { usage >&2; die "OUT_DIR is missing"; }

is_uint() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }
is_dns_label() { [[ $1 =~ ^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$ ]]; }
is_uint "$replicas" || die "--replicas must be a positive integer, got '$replicas'"
is_uint "$key_size" && [ "$key_size" -ge 2048 ] || die "--key-size must be an integer >= 2048, got '$key_size'"
is_uint "$ca_days" || die "--ca-days must be a positive integer, got '$ca_days'"
is_uint "$cert_days" || die "--cert-days must be a positive integer, got '$cert_days'"
for name in "$namespace" "$statefulset" "$public_service"; do
  is_dns_label "$name" || die "'$name' is not a valid Kubernetes name (lower-case DNS label)"
done
[[ $cluster_domain =~ ^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$ ]] || die "bad --cluster-domain '$cluster_domain'"

[ ${#clients[@]} -gt 0 ] || clients=("root=$namespace" "shop_admin=shop" "shop_app=shop" "tarn_cdc=tarn")
users=()
user_namespaces=()
for spec in "${clients[@]}"; do
  user=${spec%%=*}
  ns=$namespace
  [[ $spec == *=* ]] && ns=${spec#*=}
  # The certificate's CN is the SQL user name: keep to names CockroachDB and PostgreSQL accept
  # unquoted, so the CN, the user and the Secret name (with '-' for '_') correspond plainly.
  [[ $user =~ ^[a-z_][a-z0-9_]{0,62}$ ]] || die "--client '$spec': '$user' is not a lower-case SQL user name"
  is_dns_label "$ns" || die "--client '$spec': '$ns' is not a valid namespace"
  for seen in "${users[@]}"; do
    [ "$seen" != "$user" ] || die "--client $user given twice"
  done
  users+=("$user")
  user_namespaces+=("$ns")
done

case "$tool" in
  auto) if command -v cockroach >/dev/null 2>&1; then tool=cockroach; else tool=openssl; fi ;;
  cockroach) command -v cockroach >/dev/null 2>&1 || die "--tool cockroach: no cockroach binary on PATH" ;;
  openssl) ;;
  *) die "--tool must be auto, cockroach or openssl, got '$tool'" ;;
esac
if [ "$tool" = openssl ] && ! command -v openssl >/dev/null 2>&1; then
  die "openssl not found on PATH and no cockroach binary either: install openssl (Debian: apt-get install openssl) or put cockroach on PATH"
fi
if $apply && ! command -v kubectl >/dev/null 2>&1; then
  die "--apply needs kubectl on PATH (or leave out --apply to print the commands)"
fi

certs_dir=$out_dir/certs
ca_key=$out_dir/ca.key

# Every name a client or a peer may use to reach a node: each pod through the headless Service
# (peers join and advertise with `hostname -f`), the public Service (clients), and localhost
# (cockroach commands run inside a pod). Short forms resolve through the pod's DNS search path.
node_hosts=(localhost 127.0.0.1 ::1)
for svc in "$public_service" "$statefulset"; do
  node_hosts+=("$svc" "$svc.$namespace" "$svc.$namespace.svc" "$svc.$namespace.svc.$cluster_domain")
done
for suffix in "" ".$namespace" ".$namespace.svc" ".$namespace.svc.$cluster_domain"; do
  node_hosts+=("*.$statefulset$suffix")
  for ((i = 0; i < replicas; i++)); do
    node_hosts+=("$statefulset-$i.$statefulset$suffix")
  done
done

# What to make: the node certificate and one client certificate per user ("items", each a
# .crt/.key pair). Refuse to overwrite anything unless asked: a new CA silently replacing the
# one the cluster trusts would lock every node and client out at their next restart. With
# --reuse-ca and without --force, pairs that exist are kept and only missing ones are made
# (adding a user); --force re-issues them all.
items=(node "${users[@]/#/client.}")
make=()
existing=()
if $reuse_ca; then
  [ -f "$ca_key" ] || die "--reuse-ca: $ca_key does not exist"
  [ -f "$certs_dir/ca.crt" ] || die "--reuse-ca: $certs_dir/ca.crt does not exist"
elif ! $force; then
  for f in "$ca_key" "$certs_dir/ca.crt"; do
    [ ! -e "$f" ] || existing+=("$f")
  done
fi
for item in "${items[@]}"; do
  crt=$certs_dir/$item.crt key=$certs_dir/$item.key
  if $force || { [ ! -e "$crt" ] && [ ! -e "$key" ]; }; then
    make+=("$item")
  elif $reuse_ca && [ -e "$crt" ] && [ -e "$key" ]; then
    echo "$prog: keeping $crt (use --force to re-issue it)" >&2
  else
    for f in "$crt" "$key"; do
      [ ! -e "$f" ] || existing+=("$f")
    done
  fi
done
if [ ${#existing[@]} -gt 0 ]; then
  die "these files exist already (use --force to overwrite them, --reuse-ca to keep the CA):
$(printf '  %s\n' "${existing[@]}")"
fi
making() { local i; for i in "${make[@]}"; do [ "$i" != "$1" ] || return 0; done; return 1; }

umask 077
mkdir -p "$certs_dir"
chmod 0700 "$out_dir" "$certs_dir"
$reuse_ca || rm -f "$ca_key" "$certs_dir/ca.crt"
for item in "${make[@]}"; do
  rm -f "$certs_dir/$item.crt" "$certs_dir/$item.key"
done

if [ "$tool" = cockroach ]; then
  lifetime_ca="$((ca_days * 24))h"
  lifetime_cert="$((cert_days * 24))h"
  common=(--certs-dir="$certs_dir" --ca-key="$ca_key" --key-size="$key_size" --overwrite)
  if ! $reuse_ca; then
    cockroach cert create-ca "${common[@]}" --lifetime="$lifetime_ca"
  fi
  if making node; then
    cockroach cert create-node "${node_hosts[@]}" "${common[@]}" --lifetime="$lifetime_cert"
  fi
  for user in "${users[@]}"; do
    making "client.$user" || continue
    cockroach cert create-client "$user" "${common[@]}" --lifetime="$lifetime_cert"
  done
else
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT

  # The same kinds of certificate `cockroach cert` makes: a CA that signs certificates; node
  # certificates for both ends of a TLS connection (nodes dial each other, and serve
  # clients); client certificates for the client end only, named by their CN.
  {
    echo "[req]"
    echo "distinguished_name = dn"
    echo "prompt = no"
    echo "[dn]"
    echo "O = Cockroach"
    echo "CN = Cockroach CA"
    echo "[ca_ext]"
    echo "basicConstraints = critical, CA:TRUE"
    echo "keyUsage = critical, keyCertSign, cRLSign"
    echo "subjectKeyIdentifier = hash"
    echo "[node_ext]"
    echo "basicConstraints = critical, CA:FALSE"
    echo "keyUsage = critical, digitalSignature, keyEncipherment"
    echo "extendedKeyUsage = serverAuth, clientAuth"
    echo "subjectKeyIdentifier = hash"
    echo "authorityKeyIdentifier = keyid"
    echo "subjectAltName = @node_alt"
    echo "[client_ext]"
    echo "basicConstraints = critical, CA:FALSE"
    echo "keyUsage = critical, digitalSignature, keyEncipherment"
    echo "extendedKeyUsage = clientAuth"
    echo "subjectKeyIdentifier = hash"
    echo "authorityKeyIdentifier = keyid"
    echo "[node_alt]"
    dns=0 ip=0
    for h in "${node_hosts[@]}"; do
      if [[ $h =~ ^[0-9.]+$ || $h == *:* ]]; then
        ip=$((ip + 1)); echo "IP.$ip = $h"
      else
        dns=$((dns + 1)); echo "DNS.$dns = $h"
      fi
    done
  } >"$work/openssl.cnf"

  ossl() {
    local out
    if ! out=$(openssl "$@" 2>&1); then
      die "openssl $1 failed:
$out"
    fi
  }
  new_key() { ossl genpkey -algorithm RSA -pkeyopt "rsa_keygen_bits:$key_size" -out "$1"; }
  # Random positive 128-bit serials, as RFC 5280 advises; no serial file to keep next to the CA.
  serial() { echo "0x$(openssl rand -hex 16)"; }
  sign() { # CSR_SUBJECT KEY CERT EXTENSIONS
    ossl req -new -key "$2" -subj "$1" -out "$work/req.csr" -config "$work/openssl.cnf"
    ossl x509 -req -in "$work/req.csr" -CA "$certs_dir/ca.crt" -CAkey "$ca_key" \
      -set_serial "$(serial)" -days "$cert_days" -sha256 \
      -extfile "$work/openssl.cnf" -extensions "$4" -out "$3"
  }

  if ! $reuse_ca; then
    new_key "$ca_key"
    ossl req -new -x509 -key "$ca_key" -config "$work/openssl.cnf" -extensions ca_ext \
      -set_serial "$(serial)" -days "$ca_days" -sha256 -out "$certs_dir/ca.crt"
  fi
  if making node; then
    new_key "$certs_dir/node.key"
    sign "/O=Cockroach/CN=node" "$certs_dir/node.key" "$certs_dir/node.crt" node_ext
  fi
  for user in "${users[@]}"; do
    making "client.$user" || continue
    new_key "$certs_dir/client.$user.key"
    sign "/O=Cockroach/CN=$user" "$certs_dir/client.$user.key" "$certs_dir/client.$user.crt" client_ext
  done
fi

# CockroachDB refuses key files readable by group or others; certificates are public.
chmod 0600 "$ca_key" "$certs_dir"/*.key
chmod 0644 "$certs_dir"/*.crt

if command -v openssl >/dev/null 2>&1; then
  for crt in "${items[@]}"; do
    crt=$certs_dir/$crt.crt
    openssl verify -CAfile "$certs_dir/ca.crt" "$crt" >/dev/null 2>&1 ||
      die "$crt does not verify against $certs_dir/ca.crt"
  done
fi

if [ ${#make[@]} -gt 0 ]; then
  echo "$prog: made $($reuse_ca || echo "a new CA, ")${make[*]} in $certs_dir (with $tool)" >&2
else
  echo "$prog: nothing to make: every certificate exists (use --force to re-issue them)" >&2
fi
echo "$prog: the CA key is $ca_key: keep it offline; it is in no Secret" >&2

# One Secret per consumer, each holding only what that consumer needs: the nodes get the node
# key, each application only its own client key. `create --dry-run | apply` creates or updates.
secret_cmd() { # NAMESPACE NAME FILE...
  local ns=$1 name=$2
  shift 2
  local cmd="kubectl --namespace $ns create secret generic $name"
  for f in "$@"; do
    cmd+=" --from-file=${f##*/}=$(printf '%q' "$f")"
  done
  cmd+=" --dry-run=client --output=yaml | kubectl apply --filename=-"
  printf '%s\n' "$cmd"
}
commands=()
commands+=("$(secret_cmd "$namespace" "$statefulset-node" "$certs_dir/ca.crt" "$certs_dir/node.crt" "$certs_dir/node.key")")
for i in "${!users[@]}"; do
  user=${users[$i]}
  commands+=("$(secret_cmd "${user_namespaces[$i]}" "$statefulset-client-${user//_/-}" \
    "$certs_dir/ca.crt" "$certs_dir/client.$user.crt" "$certs_dir/client.$user.key")")
done

if $apply; then
  for cmd in "${commands[@]}"; do
    echo "+ $cmd" >&2
    bash -o pipefail -c "$cmd"
  done
else
  echo "# Create or update the Secrets (namespaces must exist):"
  printf '%s\n' "${commands[@]}"
fi
