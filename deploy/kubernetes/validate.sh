#!/usr/bin/env bash
# Checks deploy/kubernetes without a cluster:
#
#   yamllint --strict   every YAML file here (syntax, style)
#   kubectl kustomize   renders each overlay (dev, prod); what it renders is what is checked:
#     kubernetes-validate --strict   the built-in kinds against Kubernetes' own schemas, for
#                                    the oldest and newest releases supported
#     check_manifests.py             the KEDA ScaledObjects and the ServiceMonitor against
#                                    their projects' CRD schemas (schemas/), strictly, and the
#                                    promises of these manifests (non-root, probes, PDBs, ...)
#   a control: a ScaledObject with a field KEDA does not know must fail the schema check.
#   kafka-consumer/check.py   the Kafka workers' files agree with each other
#
# The validators come pinned from ../cockroachdb/requirements.txt in the repository's .venv
# (scripts/setup.sh). Exits non-zero if any check fails.
set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
venv=${TARN_VENV:-$repo/.venv}
k8s_versions=(1.31.0 1.37.0)

case "${1:-}" in
  -h | --help)
    echo "Usage: validate.sh   (checks deploy/kubernetes; see the comment at the top)"
    exit 0 ;;
  "") ;;
  *) echo "validate.sh takes no arguments" >&2; exit 2 ;;
esac

passed=0 failed=0
pass() { passed=$((passed + 1)); printf '  ok   %s\n' "$1"; }
fail() {
  failed=$((failed + 1))
  printf '  FAIL %s\n' "$1"
  [ -z "${2:-}" ] || printf '%s\n' "$2" | sed 's/^/       | /'
}
check() {
  local what=$1 out
  shift
  if out=$("$@" 2>&1); then pass "$what"; else fail "$what" "$out"; fi
}
policy() { # FILE
  local out rc=0 line
  out=$("$venv/bin/python" "$here/check_manifests.py" "$1" "$here/schemas" 2>&1) || rc=$?
  while IFS= read -r line; do
    case "$line" in
      "  ok   "*) passed=$((passed + 1)); printf '%s\n' "$line" ;;
      "  FAIL "*) failed=$((failed + 1)); printf '%s\n' "$line" ;;
      *) printf '       | %s\n' "$line" ;;
    esac
  done <<<"$out"
  if [ "$rc" -ne 0 ] && ! grep -q '^  FAIL ' <<<"$out"; then fail "check_manifests.py exited $rc"; fi
}

command -v kubectl >/dev/null 2>&1 || { echo "validate.sh: kubectl is needed (kubectl kustomize)" >&2; exit 1; }
[ -x "$venv/bin/kubernetes-validate" ] && [ -x "$venv/bin/yamllint" ] ||
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$repo/deploy/cockroachdb/requirements.txt"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

printf '\n== deploy/kubernetes: YAML\n'
mapfile -t yaml_files < <(find "$here" -name '*.yaml' -not -path '*/schemas/*' | sort)
check "yamllint --strict: ${#yaml_files[@]} files" \
  "$venv/bin/yamllint" --strict --config-file "$here/.yamllint.yaml" "${yaml_files[@]}"

for overlay in dev prod; do
  printf '\n== deploy/kubernetes: overlay %s\n' "$overlay"
  rendered=$tmp/$overlay.yaml
  if ! out=$(kubectl kustomize "$here/overlays/$overlay" 2>&1 >"$rendered"); then
    fail "kubectl kustomize overlays/$overlay" "$out"
    continue
  fi
  pass "kubectl kustomize overlays/$overlay ($(grep -c '^kind:' "$rendered") objects)"
  for v in "${k8s_versions[@]}"; do
    # Custom resources have no schema in kubernetes-validate (a warning, hidden); the CRD
    # schemas check them below.
    check "Kubernetes $v schemas (strict): overlays/$overlay output" \
      "$venv/bin/kubernetes-validate" --strict --quiet --no-warn --kubernetes-version "$v" "$rendered"
  done
  policy "$rendered"
done

printf '\n== deploy/kubernetes: the CRD schema check can fail\n'
"$venv/bin/python" - "$tmp/prod.yaml" "$tmp/broken.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
for d in docs:
    if d["kind"] == "ScaledObject":
        d["spec"]["maxReplicas"] = 10          # KEDA's field is maxReplicaCount
    if d["kind"] == "ServiceMonitor":
        d["spec"]["endpoints"][0]["interval"] = 15   # a string in the CRD
yaml.safe_dump_all(docs, open(sys.argv[2], "w"))
PY
out=$("$venv/bin/python" "$here/check_manifests.py" "$tmp/broken.yaml" "$here/schemas" 2>&1 || true)
if grep -q "FAIL ScaledObject/.*maxReplicas" <<<"$out" && grep -q "FAIL ServiceMonitor/.*interval" <<<"$out"; then
  pass "an unknown ScaledObject field and a mistyped ServiceMonitor field are refused"
else
  fail "an unknown ScaledObject field and a mistyped ServiceMonitor field are refused" "$out"
fi

printf '\n== Containerfile (not built here: see docs/deploy.md)\n'
check "multi-stage, non-root user 10001 as the manifests' runAsUser, the ports they declare" \
  "$venv/bin/python" - "$repo/Containerfile" "$tmp/prod.yaml" <<'PY'
import re, sys, yaml
text = open(sys.argv[1]).read()
froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
assert len(froms) >= 2, f"one stage only: {froms}"
users = re.findall(r"^USER\s+(\S+)", text, re.M)
assert users and users[-1].split(":")[0] not in ("0", "root"), f"the runtime stage runs as {users}"
uid = int(users[-1].split(":")[0])
exposed = {int(p) for line in re.findall(r"^EXPOSE\s+(.+)$", text, re.M) for p in line.split()}
for d in yaml.safe_load_all(open(sys.argv[2])):
    if d and d["kind"] == "Deployment":
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsUser"] == uid, f"{d['metadata']['name']}: runAsUser != {uid}"
        for c in pod["containers"]:
            for port in c.get("ports", []):
                assert port["containerPort"] in exposed, f"{d['metadata']['name']}: port {port['containerPort']} not EXPOSEd"
PY

printf '\n== deploy/kubernetes/kafka-consumer\n'
check "kafka-consumer/check.py" "$venv/bin/python" "$here/kafka-consumer/check.py"

printf '\ndeploy/kubernetes: %d passed, %d failed\n' "$passed" "$failed"
[ "$failed" -eq 0 ]
