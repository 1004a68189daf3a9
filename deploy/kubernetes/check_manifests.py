"""Checks rendered tarn manifests (`kubectl kustomize deploy/kubernetes/overlays/X` output)
without a cluster:

    python3 check_manifests.py RENDERED.yaml SCHEMA_DIR

1. Custom resources against their projects' CRD schemas (SCHEMA_DIR holds each CRD's
   openAPIV3Schema as JSON; schemas/README.md says where they come from). Validation is
   strict the way the API server's strict field validation is: a field the schema does not
   declare is an error (except under x-kubernetes-preserve-unknown-fields), as are wrong types
   and missing required fields. kubernetes-validate covers the built-in kinds.
2. The promises of deploy/kubernetes: non-root pods without an API token, all capabilities
   dropped, read-only root filesystems, requests and limits, probes on /healthz and /readyz,
   one PodDisruptionBudget per workload, a default-deny NetworkPolicy, the CDC publishers one
   reader each, the ScaledObjects and the ServiceMonitor pointing at what exists.

Prints one "  ok   ..." or "  FAIL ..." line per check; exits 1 if any failed.
"""

import copy
import json
import pathlib
import sys

import jsonschema
import yaml

results = []


def check(ok, what):
    results.append((bool(ok), what))


# kind -> (apiVersion, schema file)
CUSTOM = {
    "ScaledObject": ("keda.sh/v1alpha1", "keda.sh-v1alpha1-scaledobject.json"),
    "ServiceMonitor": ("monitoring.coreos.com/v1", "monitoring.coreos.com-v1-servicemonitor.json"),
}


def strict(schema):
    """The schema with unknown fields forbidden wherever it lists properties."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    # metadata is ObjectMeta, which the CRD schema leaves open.
    schema["properties"]["metadata"] = {"type": "object"}
    return schema


def name(obj):
    return f"{obj['kind']}/{obj['metadata']['name']}"


def selects(selector, labels):
    match = (selector or {}).get("matchLabels") or {}
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def main(rendered, schema_dir):
    docs = [d for d in yaml.safe_load_all(pathlib.Path(rendered).read_text(encoding="utf-8")) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)

    # 1. Custom resources against their CRD schemas.
    for kind, (api_version, file) in CUSTOM.items():
        schema = strict(json.loads((pathlib.Path(schema_dir) / file).read_text(encoding="utf-8")))
        validator = jsonschema.Draft7Validator(schema)
        objects = by_kind.get(kind, [])
        check(objects, f"the manifests hold a {kind}")
        for obj in objects:
            check(obj["apiVersion"] == api_version, f"{name(obj)}: apiVersion {api_version}")
            errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.path))
            detail = "; ".join(f"{'/'.join(map(str, e.path)) or '.'}: {e.message}" for e in errors[:5])
            check(not errors, f"{name(obj)}: valid against the {kind} CRD schema ({file}){' — ' + detail if detail else ''}")

    # 2. Workloads.
    deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
    for want in ("tarn-server", "tarn-scheduler", "tarn-kafka-consumer"):
        check(want in deployments, f"Deployment {want}")
    publishers = [d for d in deployments.values() if d["metadata"]["labels"].get("app.kubernetes.io/component") == "cdc-publisher"]
    check(publishers, "at least one CDC publisher Deployment")
    for d in deployments.values():
        n = name(d)
        spec = d["spec"]
        pod = spec["template"]["spec"]
        labels = spec["template"]["metadata"]["labels"]
        check(selects(spec["selector"], labels), f"{n}: selector matches its pod labels")
        check(pod.get("securityContext", {}).get("runAsNonRoot") is True, f"{n}: runs as non-root")
        check(pod.get("automountServiceAccountToken") is False, f"{n}: no Kubernetes API token")
        for c in pod["containers"]:
            cn = f"{n}/{c['name']}"
            image = c.get("image", "")
            check(":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"{cn}: image {image!r} has a version tag")
            res = c.get("resources", {})
            check(res.get("requests", {}).get("cpu") and res.get("requests", {}).get("memory"), f"{cn}: cpu and memory requests")
            check(res.get("limits", {}).get("memory"), f"{cn}: a memory limit")
            sc = c.get("securityContext", {})
            check(
                sc.get("allowPrivilegeEscalation") is False
                and sc.get("readOnlyRootFilesystem") is True
                and "ALL" in (sc.get("capabilities", {}).get("drop") or []),
                f"{cn}: read-only root, no privilege escalation, all capabilities dropped",
            )
            live = c.get("livenessProbe", {}).get("httpGet", {}).get("path")
            ready = c.get("readinessProbe", {}).get("httpGet", {}).get("path")
            args = c.get("args", [])
            if "serve" in args:
                check(live == "/healthz" and ready == "/readyz", f"{cn}: liveness /healthz, readiness /readyz")
            else:
                check(live == "/healthz" and ready, f"{cn}: liveness /healthz and a readiness probe")
            if "--config" in args:
                config = args[args.index("--config") + 1]
                mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
                volume = mounts.get(str(pathlib.PurePosixPath(config).parent))
                maps = {v["name"]: v["configMap"]["name"] for v in pod.get("volumes", []) if "configMap" in v}
                cm = next((m for m in by_kind.get("ConfigMap", []) if m["metadata"]["name"] == maps.get(volume)), None)
                key = pathlib.PurePosixPath(config).name
                check(cm is not None and key in cm.get("data", {}), f"{cn}: --config {config} is in a mounted ConfigMap")
        if d["metadata"]["labels"].get("app.kubernetes.io/component") == "cdc-publisher":
            check(spec.get("replicas") == 1 and spec.get("strategy", {}).get("type") == "Recreate",
                  f"{n}: one reader of its replication slot (1 replica, Recreate)")
        if d["metadata"]["name"] == "tarn-scheduler":
            check(spec.get("replicas", 1) >= 2, f"{n}: a standby for the lease (2 replicas or more)")
        pdbs = [p for p in by_kind.get("PodDisruptionBudget", []) if selects(p["spec"].get("selector"), labels)]
        check(len(pdbs) == 1, f"{n}: one PodDisruptionBudget")

    # Services select pods that exist.
    pod_labels = [d["spec"]["template"]["metadata"]["labels"] for d in deployments.values()]
    for s in by_kind.get("Service", []):
        sel = s["spec"].get("selector", {})
        check(sel and any(all(l.get(k) == v for k, v in sel.items()) for l in pod_labels), f"{name(s)}: selects a Deployment's pods")
    server_svc = [s for s in by_kind.get("Service", []) if s["metadata"]["name"] == "tarn-server"]
    check(server_svc and {p["port"] for p in server_svc[0]["spec"]["ports"]} == {5433, 8433},
          "Service/tarn-server: the Postgres wire (5433) and HTTP (8433) ports")

    # KEDA.
    for so in by_kind.get("ScaledObject", []):
        target = so["spec"]["scaleTargetRef"]
        check(target.get("kind", "Deployment") == "Deployment" and target["name"] in deployments,
              f"{name(so)}: scales an existing Deployment")
    types = {t["type"] for so in by_kind.get("ScaledObject", []) for t in so["spec"]["triggers"]}
    check({"kafka", "prometheus"} <= types, f"ScaledObjects on Kafka lag and on a Prometheus query (found {sorted(types)})")

    # ServiceMonitor: its selector picks the Services, its ports exist on them.
    for sm in by_kind.get("ServiceMonitor", []):
        picked = [s for s in by_kind.get("Service", []) if selects(sm["spec"]["selector"], s["metadata"].get("labels", {}))]
        check(len(picked) == len(by_kind.get("Service", [])), f"{name(sm)}: selects every tarn Service")
        ports = {p.get("name") for s in picked for p in s["spec"]["ports"]}
        for ep in sm["spec"]["endpoints"]:
            check(ep.get("port") in ports and ep.get("path") == "/metrics", f"{name(sm)}: endpoint {ep.get('port')} /metrics exists")

    # NetworkPolicies.
    policies = by_kind.get("NetworkPolicy", [])
    check(any(p["spec"].get("podSelector") == {} and "Ingress" in p["spec"].get("policyTypes", []) and not p["spec"].get("ingress")
              for p in policies), "NetworkPolicy: default deny of ingress")
    for p in policies:
        for rule in p["spec"].get("ingress", []):
            check(rule.get("from") and rule.get("ports"), f"{name(p)}: every ingress rule names its sources and ports")
            check(not any("ipBlock" in peer for peer in rule.get("from", [])), f"{name(p)}: no ipBlock sources")

    # Namespace and secrets.
    for d in docs:
        if d["kind"] != "Namespace":
            check(d["metadata"].get("namespace") == "tarn", f"{name(d)}: in namespace tarn")
    return report()


def report():
    failed = 0
    for ok, what in results:
        print(f"  {'ok  ' if ok else 'FAIL'} {what}")
        failed += not ok
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
