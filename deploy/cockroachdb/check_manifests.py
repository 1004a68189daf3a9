"""Policy checks on the CockroachDB manifests, beyond what the Kubernetes schemas can say.

The schemas (kubernetes-validate) prove each object is well-formed; these checks prove the set
of objects is the cluster this directory promises: pinned images, sized and locked-down
containers, three nodes spread one per zone and one per machine, probes over HTTPS, TLS from
the expected Secrets, a disruption budget of one, SQL reachable only from the shop and tarn,
and API permissions limited to reading nodes. validate.sh runs it; usage:

    python3 check_manifests.py FILE.yaml...

Prints one line per check and exits 1 if any failed.
"""

import re
import sys

import yaml

NAMESPACE = "cockroachdb"
NODE_SECRET = "cockroachdb-node"
ROOT_SECRET = "cockroachdb-client-root"
# Namespaces whose pods may open SQL connections, besides the cluster's own pods.
SQL_CLIENT_NAMESPACES = {"shop", "tarn"}
SQL_PORT = 26257
# A tag, a digest, or both; never no tag (which means latest) and never "latest".
IMAGE = re.compile(r"^(?P<repo>[^:@\s]+)(?::(?P<tag>[\w][\w.-]*))?(?:@sha256:[0-9a-f]{64})?$")

results = []


def check(ok, what):
    results.append((bool(ok), what))


def load(paths):
    docs = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for doc in yaml.safe_load_all(f):
                if doc:
                    docs.append((path, doc))
    return docs


def pod_spec(obj):
    kind = obj.get("kind")
    if kind in ("StatefulSet", "Deployment", "DaemonSet", "ReplicaSet", "Job"):
        return obj["spec"]["template"]["spec"], obj["spec"]["template"]["metadata"].get("labels", {})
    if kind == "CronJob":
        t = obj["spec"]["jobTemplate"]["spec"]["template"]
        return t["spec"], t["metadata"].get("labels", {})
    if kind == "Pod":
        return obj["spec"], obj["metadata"].get("labels", {})
    return None, None


def selects(selector, labels):
    """Whether a label selector (matchLabels only, as used here) selects these labels."""
    match = (selector or {}).get("matchLabels") or {}
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def check_workload(name, spec):
    containers = spec.get("initContainers", []) + spec.get("containers", [])
    pod_sc = spec.get("securityContext", {})
    check(pod_sc.get("runAsNonRoot") is True, f"{name}: pod runs as non-root")
    check(spec.get("automountServiceAccountToken") is False, f"{name}: no automatic API token")
    tags = set()
    for c in containers:
        cname = f"{name}/{c['name']}"
        m = IMAGE.match(c.get("image", ""))
        pinned = bool(m) and (m.group("tag") or "@sha256:" in c["image"]) and m.group("tag") != "latest"
        check(pinned, f"{cname}: image {c.get('image')!r} is pinned (a version tag or digest, not latest)")
        if m and m.group("repo").endswith("cockroachdb/cockroach"):
            tags.add(m.group("tag"))
        res = c.get("resources", {})
        sized = all(res.get(k, {}).get(r) for k in ("requests", "limits") for r in ("cpu", "memory"))
        check(sized, f"{cname}: cpu and memory requests and limits set")
        sc = c.get("securityContext", {})
        locked = (
            sc.get("allowPrivilegeEscalation") is False
            and not sc.get("privileged")
            and "ALL" in (sc.get("capabilities", {}).get("drop") or [])
        )
        check(locked, f"{cname}: no privilege escalation, all capabilities dropped")
        command = " ".join(c.get("command", []) + c.get("args", []))
        check("--insecure" not in command, f"{cname}: no --insecure")
    return tags


def main(paths):
    docs = load(paths)
    by_kind = {}
    for path, obj in docs:
        by_kind.setdefault(obj.get("kind"), []).append(obj)

    image_tags = set()
    for _, obj in docs:
        spec, _labels = pod_spec(obj)
        if spec is not None:
            image_tags |= check_workload(f"{obj['kind']}/{obj['metadata']['name']}", spec)
    check(len(image_tags) == 1, f"one CockroachDB release across all pods (found {sorted(t or '' for t in image_tags)})")

    for _, obj in docs:
        if obj.get("kind") not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            ns = obj["metadata"].get("namespace")
            check(ns == NAMESPACE, f"{obj['kind']}/{obj['metadata']['name']}: in namespace {NAMESPACE}")

    sts = [s for s in by_kind.get("StatefulSet", []) if s["metadata"]["name"] == "cockroachdb"]
    check(len(sts) == 1, "StatefulSet cockroachdb exists")
    if not sts:
        return report()
    sts = sts[0]
    spec, labels = sts["spec"], sts["spec"]["template"]["metadata"]["labels"]
    pod = spec["template"]["spec"]
    check(spec.get("replicas") == 3, "StatefulSet: 3 replicas")
    check(selects(spec["selector"], labels), "StatefulSet: selector matches its pod labels")
    check(spec.get("podManagementPolicy") == "Parallel", "StatefulSet: pods start in parallel (init needs all)")
    check(spec.get("volumeClaimTemplates"), "StatefulSet: persistent volume claims per pod")
    spread = [
        t
        for t in pod.get("topologySpreadConstraints", [])
        if t.get("topologyKey") == "topology.kubernetes.io/zone"
        and t.get("whenUnsatisfiable") == "DoNotSchedule"
        and t.get("maxSkew") == 1
        and selects(t.get("labelSelector"), labels)
    ]
    check(spread, "StatefulSet: one pod per zone (topologySpreadConstraints, DoNotSchedule, maxSkew 1)")
    anti = pod.get("affinity", {}).get("podAntiAffinity", {})
    hard = [
        t
        for t in anti.get("requiredDuringSchedulingIgnoredDuringExecution", [])
        if t.get("topologyKey") == "kubernetes.io/hostname" and selects(t.get("labelSelector"), labels)
    ]
    check(hard, "StatefulSet: at most one pod per machine (required pod anti-affinity on hostname)")
    db = [c for c in pod["containers"] if c["name"] == "cockroachdb"]
    check(len(db) == 1, "StatefulSet: container cockroachdb")
    if db:
        db = db[0]
        ready = db.get("readinessProbe", {}).get("httpGet", {})
        check(
            ready.get("path") == "/health?ready=1" and ready.get("scheme") == "HTTPS",
            "StatefulSet: readiness probe GET /health?ready=1 over HTTPS",
        )
        live = db.get("livenessProbe", {}).get("httpGet", {})
        check(
            live.get("path", "").startswith("/health") and live.get("scheme") == "HTTPS",
            "StatefulSet: liveness probe on /health over HTTPS",
        )
        command = " ".join(db.get("command", []) + db.get("args", []))
        for flag in ("--certs-dir", "--locality=", "--join", "--advertise-addr"):
            check(flag in command, f"StatefulSet: cockroach start {flag}")
    secrets = {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
    check(NODE_SECRET in secrets, f"StatefulSet: node certificates from Secret {NODE_SECRET}")

    services = by_kind.get("Service", [])
    headless = [s for s in services if s["spec"].get("clusterIP") == "None"]
    public = [s for s in services if s["spec"].get("clusterIP") != "None"]
    check(
        any(s["metadata"]["name"] == spec["serviceName"] and s["spec"].get("publishNotReadyAddresses") for s in headless),
        "headless Service named by the StatefulSet, publishing not-ready pods",
    )
    check(public, "a public (ClusterIP) Service")
    for s in services:
        check(
            all(labels.get(k) == v for k, v in s["spec"].get("selector", {}).items()) and s["spec"].get("selector"),
            f"Service/{s['metadata']['name']}: selects the CockroachDB pods",
        )

    pdbs = [p for p in by_kind.get("PodDisruptionBudget", []) if selects(p["spec"].get("selector"), labels)]
    check(
        len(pdbs) == 1 and pdbs[0]["spec"].get("maxUnavailable") == 1,
        "PodDisruptionBudget: maxUnavailable 1 over the CockroachDB pods",
    )

    policies = by_kind.get("NetworkPolicy", [])
    check(
        any(
            p["spec"].get("podSelector") == {} and "Ingress" in p["spec"].get("policyTypes", []) and not p["spec"].get("ingress")
            for p in policies
        ),
        "NetworkPolicy: default deny of ingress in the namespace",
    )
    db_policies = [p for p in policies if selects(p["spec"].get("podSelector"), labels)]
    check(db_policies, "NetworkPolicy: a policy selects the CockroachDB pods")
    sql_namespaces = set()
    for p in db_policies:
        for rule in p["spec"].get("ingress", []):
            ports = {port.get("port") for port in rule.get("ports", [])}
            if rule.get("ports") and SQL_PORT not in ports:
                continue
            peers = rule.get("from") or []
            check(peers, f"NetworkPolicy/{p['metadata']['name']}: every rule admitting {SQL_PORT} names its sources")
            for peer in peers:
                if "ipBlock" in peer:
                    check(False, f"NetworkPolicy/{p['metadata']['name']}: no ipBlock sources for SQL")
                ns_sel = peer.get("namespaceSelector")
                if ns_sel is None:
                    continue
                name = (ns_sel.get("matchLabels") or {}).get("kubernetes.io/metadata.name")
                check(name and peer.get("podSelector"), f"NetworkPolicy: SQL from namespace {name!r} is limited to labelled pods")
                sql_namespaces.add(name)
    check(
        sql_namespaces == SQL_CLIENT_NAMESPACES,
        f"NetworkPolicy: SQL from other namespaces only from {sorted(SQL_CLIENT_NAMESPACES)} (found {sorted(n or '' for n in sql_namespaces)})",
    )

    jobs = by_kind.get("Job", [])
    init = [
        j
        for j in jobs
        if any("cockroach init" in " ".join(c.get("command", [])) for c in j["spec"]["template"]["spec"]["containers"])
    ]
    check(init, "a Job runs cockroach init")
    for j in init:
        vols = j["spec"]["template"]["spec"].get("volumes", [])
        check(
            ROOT_SECRET in {v["secret"]["secretName"] for v in vols if "secret" in v},
            f"Job/{j['metadata']['name']}: root client certificate from Secret {ROOT_SECRET}",
        )

    for kind in ("Role", "ClusterRole"):
        for r in by_kind.get(kind, []):
            for rule in r.get("rules", []):
                wild = any("*" in rule.get(k, []) for k in ("apiGroups", "resources", "verbs"))
                check(not wild, f"{kind}/{r['metadata']['name']}: no wildcards")
                writes = set(rule.get("verbs", [])) - {"get", "list", "watch"}
                check(not writes, f"{kind}/{r['metadata']['name']}: read-only ({sorted(rule.get('verbs', []))})")
    return report()


def report():
    failed = 0
    for ok, what in results:
        print(f"  {'ok  ' if ok else 'FAIL'} {what}")
        failed += not ok
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1:]))
