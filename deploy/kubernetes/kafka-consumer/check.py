"""Checks the Kafka consumer's manifests without a cluster: every file parses, the tarn.toml
inside the ConfigMap parses, and the objects agree with each other and with tarn's limits.

    python3 check.py [DIR]

DIR defaults to this file's directory. Prints one line per check; exits 1 if any failed.
scripts/test.sh runs it. The checks:

- each YAML document is a Kubernetes object in namespace `tarn`;
- tarn.toml: a Kafka source with named topics, a group and a dead-letter topic;
- the ScaledObject scales the Deployment, at most to one replica (tarn assigns itself every
  partition; two workers of one group would both consume everything), with one `kafka`
  trigger per configured topic, on the configured group and brokers;
- the Deployment runs `tarn ingest kafka` with the ConfigMap as its config, never two pods at
  once (Recreate, at most one replica), serves /metrics on the port it declares and
  Prometheus scrapes, probes /healthz, and gives SIGTERM time to commit.
"""

import pathlib
import sys
import tomllib

import yaml

results = []


def check(ok, what):
    results.append((bool(ok), what))


def main():
    here = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).parent)
    objects = {}
    for path in sorted(p for p in here.glob("*.yaml") if p.name != "kustomization.yaml"):
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
        except yaml.YAMLError as e:
            check(False, f"{path.name} parses as YAML: {e}")
            continue
        check(docs, f"{path.name} parses as YAML ({len(docs)} object(s))")
        for d in docs:
            ok = all(k in d for k in ("apiVersion", "kind", "metadata")) and d["metadata"].get("namespace") == "tarn"
            check(ok, f"{path.name}: {d.get('kind')} {d.get('metadata', {}).get('name')} is an object in namespace tarn")
            objects[d.get("kind")] = d

    for kind in ("ConfigMap", "Deployment", "ScaledObject"):
        check(kind in objects, f"a {kind}")
    if not all(k in objects for k in ("ConfigMap", "Deployment", "ScaledObject")):
        return
    config_map, deployment, scaled = objects["ConfigMap"], objects["Deployment"], objects["ScaledObject"]

    try:
        config = tomllib.loads(config_map["data"]["tarn.toml"])
    except (KeyError, tomllib.TOMLDecodeError) as e:
        check(False, f"the ConfigMap's tarn.toml parses as TOML: {e}")
        return
    check(True, "the ConfigMap's tarn.toml parses as TOML")
    cdc = config.get("cdc", {})
    kafka = cdc.get("kafka", {})
    topics = kafka.get("topics", [])
    check(cdc.get("source_kind") == "kafka", "tarn.toml: cdc.source_kind is kafka")
    check(topics and not any(t.startswith("^") for t in topics), f"tarn.toml: named topics {topics}")
    check(kafka.get("group"), "tarn.toml: a consumer group")
    check(kafka.get("dead_letter_topic"), "tarn.toml: a dead-letter topic")
    check(str(config.get("storage", {}).get("warehouse", "")).startswith("s3://"),
          "tarn.toml: the warehouse is in object storage, not on the pod")

    spec = scaled["spec"]
    target = spec["scaleTargetRef"]
    check(target.get("kind") == "Deployment" and target.get("name") == deployment["metadata"]["name"],
          "the ScaledObject scales the Deployment")
    replicas = spec.get("maxReplicaCount", 100)
    check(replicas == 1 or kafka.get("assignment") == "group",
          "more than one worker only with cdc.kafka.assignment = group (else each reads every partition)")
    check(spec.get("minReplicaCount", 1) in (0, 1), "the ScaledObject scales down to zero or one")
    triggers = spec.get("triggers", [])
    check(triggers and all(t.get("type") == "kafka" for t in triggers), "every trigger is KEDA's kafka scaler")
    meta = [t.get("metadata", {}) for t in triggers]
    check(all(m.get("consumerGroup") == kafka.get("group") for m in meta),
          f"every trigger reads group {kafka.get('group')}")
    check(all(m.get("bootstrapServers") == kafka.get("brokers") for m in meta),
          f"every trigger asks brokers {kafka.get('brokers')}")
    check(sorted(m.get("topic") for m in meta) == sorted(topics), f"one trigger per topic {topics}")
    check(all(m.get("offsetResetPolicy") == "earliest" for m in meta),
          "a group without offsets counts from the start (offsetResetPolicy earliest)")

    dspec = deployment["spec"]
    check(dspec.get("replicas", 1) <= replicas, "the Deployment starts within the ScaledObject's range")
    check(kafka.get("assignment") == "group" or dspec.get("strategy", {}).get("type") == "Recreate",
          "rollouts run two workers side by side only when the group splits the partitions")
    pod = dspec["template"]
    containers = pod["spec"]["containers"]
    check(len(containers) == 1, "one container")
    c = containers[0]
    args = c.get("args", [])
    check("ingest" in args and args[args.index("ingest") + 1:args.index("ingest") + 2] == ["kafka"],
          "the container runs tarn ingest kafka")
    config_volume = next((v for v in pod["spec"].get("volumes", []) if "configMap" in v), None)
    check(config_volume and config_volume["configMap"]["name"] == config_map["metadata"]["name"],
          "the config volume is the ConfigMap")
    mount = next((m for m in c.get("volumeMounts", []) if config_volume and m["name"] == config_volume["name"]), None)
    check(mount and "--config" in args and args[args.index("--config") + 1] == f"{mount['mountPath']}/tarn.toml",
          "--config names the mounted tarn.toml")
    listen = args[args.index("--metrics-listen") + 1] if "--metrics-listen" in args else ""
    port = int(listen.rsplit(":", 1)[1]) if ":" in listen else None
    ports = {p.get("name"): p.get("containerPort") for p in c.get("ports", [])}
    check(port is not None and port in ports.values(), f"--metrics-listen {listen} is a declared container port")
    annotations = pod["metadata"].get("annotations", {})
    check(annotations.get("prometheus.io/port") == str(port) and annotations.get("prometheus.io/path") == "/metrics",
          "Prometheus scrapes /metrics on that port")
    for probe in ("livenessProbe", "readinessProbe"):
        get = c.get(probe, {}).get("httpGet", {})
        check(get.get("path") == "/healthz" and ports.get(get.get("port"), get.get("port")) == port,
              f"{probe} is /healthz on the metrics port")
    check(pod["spec"].get("terminationGracePeriodSeconds", 30) >= 30, "SIGTERM gets 30 s or more to commit")


if __name__ == "__main__":
    main()
    for ok, what in results:
        print(f"  {'ok  ' if ok else 'FAIL'} {what}")
    failed = sum(1 for ok, _ in results if not ok)
    print(f"kafka-consumer manifests: {len(results) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
