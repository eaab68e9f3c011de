"""What deploy/kubernetes/ promises a deployer, asserted on the manifests themselves.

Run by scripts/check-kubernetes.sh after the schema validation; needs PyYAML (a dependency
of kubernetes-validate). Exits non-zero with one line per broken promise.
"""

import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
problems = []
QUANTITY = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][+-]?\d+)?")


def check(condition, message):
    if not condition:
        problems.append(message)
    return condition


def load(directory):
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    listed = kustomization.get("resources", [])
    on_disk = sorted(p.name for p in directory.glob("*.yaml") if p.name != "kustomization.yaml")
    check(sorted(listed) == on_disk, f"kustomization resources {sorted(listed)} != files {on_disk}")
    objects = {}
    for name in listed:
        for doc in yaml.safe_load_all((directory / name).read_text()):
            if doc:
                objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return kustomization, objects


def container_hardened(where, pod_spec, container):
    pod_ctx = pod_spec.get("securityContext", {})
    ctx = container.get("securityContext", {})
    check(pod_ctx.get("runAsNonRoot") is True, f"{where}: runAsNonRoot is not true")
    check(pod_ctx.get("runAsUser", 0) != 0, f"{where}: runAsUser is root")
    check(ctx.get("readOnlyRootFilesystem") is True, f"{where}: root filesystem is writable")
    check(ctx.get("allowPrivilegeEscalation") is False, f"{where}: privilege escalation allowed")
    check(not ctx.get("privileged", False), f"{where}: privileged")
    check(ctx.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities not all dropped")
    check(not ctx.get("capabilities", {}).get("add"), f"{where}: capabilities added")
    check(pod_spec.get("automountServiceAccountToken") is False, f"{where}: API token mounted")
    resources = container.get("resources", {})
    for kind in ("requests", "limits"):
        check("memory" in resources.get(kind, {}), f"{where}: no memory {kind}")
    check("cpu" in resources.get("requests", {}), f"{where}: no cpu request")
    # The schema takes any string for a quantity; the API server would refuse a bad one.
    for kind in ("requests", "limits"):
        for resource, quantity in resources.get(kind, {}).items():
            check(QUANTITY.fullmatch(str(quantity)), f"{where}: {kind}.{resource} {quantity!r} is no quantity")


def env_names_known_to_the_binary():
    sources = "\n".join(p.read_text() for p in (ROOT / "src").rglob("*.rs"))
    return set(re.findall(r'env\s*=\s*"([A-Z0-9_]+)"', sources)) | set(
        re.findall(r'"((?:HEALTHPROBE|RTMANAGER|NATS|OTEL|DATABASE)[A-Z0-9_]*)"', sources)
    ) | {"RUST_LOG", "OTEL_SERVICE_NAME", "OTEL_EXPORTER_OTLP_ENDPOINT"}


def main(directory):
    kustomization, objects = load(directory)
    deployment = objects.get(("Deployment", "healthprobe"))
    if not check(deployment is not None, "no Deployment healthprobe"):
        return
    spec = deployment["spec"]
    pod = spec["template"]
    pod_labels = pod["metadata"]["labels"]
    check(spec.get("replicas") == 2, "Deployment replicas is not 2")
    check(spec["selector"]["matchLabels"].items() <= pod_labels.items(), "Deployment selector misses its pods")
    (worker,) = pod["spec"]["containers"]
    container_hardened("Deployment", pod["spec"], worker)
    check(worker.get("args", [])[:1] == ["run"], "Deployment does not `run`")
    # The migrate Job owns the schema; the worker's role may not change it.
    check("--no-migrate" in worker.get("args", []), "Deployment does not `run --no-migrate`")
    replica_id = [e for e in worker.get("env", []) if e["name"] == "HEALTHPROBE_REPLICA_ID"]
    check(
        replica_id and replica_id[0].get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
        "HEALTHPROBE_REPLICA_ID is not the pod name (downward API)",
    )
    ports = {p["name"]: p["containerPort"] for p in worker.get("ports", [])}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"), ("startupProbe", "/healthz")):
        get = worker.get(probe, {}).get("httpGet", {})
        check(get.get("path") == path, f"{probe} is not GET {path}")
        check(get.get("port") in ports, f"{probe} port {get.get('port')!r} is not a container port")
    check(
        worker["livenessProbe"].get("timeoutSeconds", 1) >= 2,
        "livenessProbe timeout under 2 s: a busy tick could get the worker restarted",
    )

    configmaps = {name for kind, name in objects if kind == "ConfigMap"}
    secrets = {name for kind, name in objects if kind == "Secret"}
    sources = worker.get("envFrom", [])
    check(any(s.get("configMapRef", {}).get("name") in configmaps for s in sources), "no ConfigMap in envFrom")
    check(any(s.get("secretRef", {}).get("name") in secrets for s in sources), "no Secret in envFrom")
    known = env_names_known_to_the_binary()
    for kind, name in objects:
        if kind in ("ConfigMap", "Secret"):
            data = objects[(kind, name)].get("data", {}) | objects[(kind, name)].get("stringData", {})
            for key in data:
                check(key in known, f"{kind} {name}: {key} is not a variable healthprobe reads")
    secret_keys = set().union(*(objects[("Secret", s)].get("stringData", {}).keys() for s in secrets))
    check("DATABASE_URL" in secret_keys, "DATABASE_URL is not in the Secret")
    worker_secrets = [s["secretRef"]["name"] for s in sources if s.get("secretRef", {}).get("name") in secrets]
    worker_secret_keys = set().union(*(objects[("Secret", s)].get("stringData", {}).keys() for s in worker_secrets))
    check(
        "HEALTHPROBE_HTTP_TOKEN" in worker_secret_keys,
        "HEALTHPROBE_HTTP_TOKEN is not in the worker's Secret (the status port binds beyond loopback)",
    )
    config = next(iter(objects[("ConfigMap", c)]["data"] for c in configmaps))
    check(
        config.get("HEALTHPROBE_HTTP_ADDR", "").split(":")[-1] == str(ports.get("status")),
        "HEALTHPROBE_HTTP_ADDR's port is not the container's status port",
    )

    pdb = objects.get(("PodDisruptionBudget", "healthprobe"))
    if check(pdb is not None, "no PodDisruptionBudget"):
        check(pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items(), "PDB selects no worker pod")
        check(pdb["spec"].get("minAvailable") == 1, "PDB does not keep one worker")
    service = objects.get(("Service", "healthprobe"))
    if check(service is not None, "no Service"):
        check(service["spec"]["selector"].items() <= pod_labels.items(), "Service selects no worker pod")
        check(all(p["targetPort"] in ports for p in service["spec"]["ports"]), "Service targets no container port")

    jobs = [doc for (kind, _), doc in objects.items() if kind == "Job"]
    if check(len(jobs) == 1, "not exactly one Job"):
        job_pod = jobs[0]["spec"]["template"]
        (migrate,) = job_pod["spec"]["containers"]
        check(migrate.get("args") == ["migrate"], "the Job does not run `migrate`")
        url = [e for e in migrate.get("env", []) if e["name"] == "DATABASE_URL"]
        ref = url[0].get("valueFrom", {}).get("secretKeyRef", {}) if url else {}
        check(
            ref.get("name") in secrets
            and ref.get("key") in objects[("Secret", ref["name"])].get("stringData", {}),
            "the Job's DATABASE_URL is not a key of a Secret",
        )
        check(job_pod["spec"].get("restartPolicy") in ("OnFailure", "Never"), "Job restartPolicy")
        check(not job_pod["metadata"]["labels"].items() >= spec["selector"]["matchLabels"].items(),
              "the Job's pod is selected by the Deployment")
        container_hardened("Job", job_pod["spec"], migrate)

    cargo = (ROOT / "Cargo.toml").read_text()
    version = re.search(r'^version\s*=\s*"([^"]+)"', cargo, re.M).group(1)
    tags = [i.get("newTag") for i in kustomization.get("images", []) if i.get("name") == "healthprobe"]
    check(tags == [version], f"kustomization image tag {tags} is not Cargo.toml's {version}")

    if problems:
        for p in problems:
            print(f"check-kubernetes: FAILED: {p}", file=sys.stderr)
        sys.exit(1)
    print(
        f"check-kubernetes: {len(objects)} objects; Deployment of {spec['replicas']} "
        f"(run --no-migrate, replica id from the pod name, /readyz, /healthz, start-up probe, non-root, read-only root, "
        f"no escalation, capabilities dropped, requests {worker['resources']['requests']}, "
        f"limits {worker['resources']['limits']}, HTTP token from the Secret), PDB, Service, migrate Job, "
        f"ConfigMap, Secrets: all checks pass",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
