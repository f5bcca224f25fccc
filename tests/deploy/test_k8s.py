"""deploy/k8s: the manifests parse and fit together (names, labels, probes, timings)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tests.deploy.deploy_files import DEPLOY, k8s_objects, load_yaml, settings_from_env

K8S = DEPLOY / "k8s"


@pytest.fixture(scope="module")
def objects():
    return k8s_objects(K8S)


@pytest.fixture(scope="module")
def pod(objects):
    return objects[("Deployment", "glimpse")]["spec"]["template"]


@pytest.fixture(scope="module")
def container(pod):
    (only,) = pod["spec"]["containers"]
    return only


def test_every_yaml_file_under_deploy_parses():
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert len(files) >= 15
    for path in files:
        assert load_yaml(path), f"{path} is empty"


def test_objects_have_the_expected_kinds(objects):
    kinds = {kind for kind, _ in objects}
    assert {
        "Namespace",
        "ConfigMap",
        "Secret",
        "PersistentVolumeClaim",
        "Deployment",
        "StatefulSet",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "Ingress",
    } <= kinds
    for (kind, name), obj in objects.items():
        assert obj["apiVersion"], (kind, name)
        if kind != "Namespace":
            assert obj["metadata"]["namespace"] == "glimpse", (kind, name)


def test_kustomization_lists_every_manifest_but_the_examples():
    (kustomization,) = load_yaml(K8S / "kustomization.yaml")
    listed = set(kustomization["resources"])
    manifests = {p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert listed == {m for m in manifests if not m.endswith(".example.yaml")}
    (gpu,) = load_yaml(K8S / "gpu" / "kustomization.yaml")
    for patch in gpu["patches"]:
        (doc,) = load_yaml(K8S / "gpu" / patch["path"])
        assert (doc["kind"], doc["metadata"]["name"]) == ("Deployment", "glimpse")
        (gpu_container,) = doc["spec"]["template"]["spec"]["containers"]
        assert gpu_container["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_probes(container):
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/healthz"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # model loading is slow
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in port_names


def _prestop_sleep(container) -> int:
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    return int(command[1])


def test_termination_grace_covers_prestop_and_drain(objects, pod, container):
    config = objects[("ConfigMap", "glimpse-config")]["data"]
    graceful = float(config["GLIMPSE_SERVER__GRACEFUL_TIMEOUT_S"])
    sleep = _prestop_sleep(container)
    assert sleep >= 5  # long enough for endpoints to drop the pod
    assert pod["spec"]["terminationGracePeriodSeconds"] > sleep + graceful


def test_labels_and_references_match(objects, pod, container):
    labels = pod["metadata"]["labels"]
    deployment = objects[("Deployment", "glimpse")]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = objects[("Service", "glimpse")]
    assert service["spec"]["selector"].items() <= labels.items()
    port_names = {p["name"] for p in container["ports"]}
    assert all(p["targetPort"] in port_names for p in service["spec"]["ports"])
    pdb = objects[("PodDisruptionBudget", "glimpse")]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    hpa = objects[("HorizontalPodAutoscaler", "glimpse")]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "glimpse"}
    assert hpa["spec"]["minReplicas"] >= pdb["spec"]["minAvailable"] + 1
    refs = {
        next(iter(k for k in ("configMapRef", "secretRef") if k in e)): e.get(
            "configMapRef", e.get("secretRef")
        )
        for e in container["envFrom"]
    }
    assert ("ConfigMap", refs["configMapRef"]["name"]) in objects
    assert ("Secret", refs["secretRef"]["name"]) in objects
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert all(("PersistentVolumeClaim", c) in objects for c in claims)
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    config = objects[("ConfigMap", "glimpse-config")]["data"]
    assert config["HF_HOME"] in mounts
    # The root filesystem is read-only: wherever Glimpse writes must be a mount.
    assert str(Path(config["GLIMPSE_GUARD__AUDIT_LOG_PATH"]).parent) in mounts
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"/tmp", "/home/glimpse"} <= mounts
    ingress = objects[("Ingress", "glimpse")]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == "glimpse"
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}


def test_the_ingress_lets_batch_uploads_through_at_glimpses_own_limit(objects):
    """ingress-nginx sets the body size per Ingress: /v1/files has its own, the batch file limit."""
    from glimpse.api.admission import TEXT_ALLOWANCE_BYTES
    from glimpse.config import BatchSettings, ServerSettings

    def body_mib(name: str) -> int:
        size = objects[("Ingress", name)]["metadata"]["annotations"][
            "nginx.ingress.kubernetes.io/proxy-body-size"
        ]
        assert size.endswith("m")
        return int(size[:-1]) * 1024 * 1024

    assert body_mib("glimpse") == ServerSettings().max_body_bytes
    assert body_mib("glimpse-files") == BatchSettings().max_file_bytes + TEXT_ALLOWANCE_BYTES
    (path,) = objects[("Ingress", "glimpse-files")]["spec"]["rules"][0]["http"]["paths"]
    assert (path["path"], path["pathType"]) == ("/v1/files", "Exact")


def test_scrape_annotations_point_at_the_metrics_port(pod, container):
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) in {p["containerPort"] for p in container["ports"]}
    (config,) = load_yaml(DEPLOY / "prometheus" / "prometheus-k8s.yml")
    relabels = config["scrape_configs"][0]["relabel_configs"]
    sources = {s for r in relabels for s in r.get("source_labels", [])}
    for key in ("scrape", "port", "path"):
        assert f"__meta_kubernetes_pod_annotation_prometheus_io_{key}" in sources
    address = next(r for r in relabels if r.get("target_label") == "__address__")
    joined = "10.0.0.7:9999;" + annotations["prometheus.io/port"]
    assert re.fullmatch(address["regex"], joined)
    assert re.sub(address["regex"], address["replacement"].replace("$", "\\"), joined) == "10.0.0.7:8080"


def test_pods_run_as_the_image_user(pod, container):
    dockerfile = (DEPLOY / "docker" / "Dockerfile").read_text()
    (uid,) = set(re.findall(r"^USER (\d+):\d+$", dockerfile, re.MULTILINE))
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True
    assert str(security["runAsUser"]) == uid
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_configmap_and_secret_are_valid_glimpse_settings(objects, monkeypatch):
    env = {
        **objects[("ConfigMap", "glimpse-config")]["data"],
        **objects[("Secret", "glimpse-secrets")]["stringData"],
    }
    settings = settings_from_env(monkeypatch, env)
    assert settings.server.port == 8080
    assert settings.engine.model == "zai-org/GLM-4.6V-Flash"
    assert len(settings.guard.api_keys) == 1
    redis = objects[("Service", "glimpse-redis")]
    assert settings.cache.redis_url is not None
    redis_url = settings.cache.redis_url.get_secret_value()
    assert redis_url.startswith(f"redis://{redis['metadata']['name']}:{redis['spec']['ports'][0]['port']}/")


def test_the_batch_queue_is_a_durable_redis_of_its_own(objects, monkeypatch):
    queue = objects[("StatefulSet", "glimpse-queue-redis")]
    (redis,) = queue["spec"]["template"]["spec"]["containers"]
    args = redis["args"]
    flags = {args[i].removeprefix("--"): args[i + 1] for i in range(0, len(args) - 1, 2)}
    assert flags["appendonly"] == "yes"
    assert flags["appendfsync"] == "everysec"
    assert flags["maxmemory-policy"] == "noeviction"
    # The AOF's directory (/data) is a persistent volume claimed per pod, not an emptyDir.
    (claim,) = queue["spec"]["volumeClaimTemplates"]
    (data,) = [m for m in redis["volumeMounts"] if m["mountPath"] == "/data"]
    assert data["name"] == claim["metadata"]["name"]
    pod_labels = queue["spec"]["template"]["metadata"]["labels"]
    service = objects[("Service", "glimpse-queue-redis")]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert queue["spec"]["serviceName"] == service["metadata"]["name"]
    env = {
        **objects[("ConfigMap", "glimpse-config")]["data"],
        **objects[("Secret", "glimpse-secrets")]["stringData"],
    }
    settings = settings_from_env(monkeypatch, env)
    assert settings.queue.redis_url is not None
    url = settings.queue.redis_url.get_secret_value()
    assert url.startswith(f"redis://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/")
    assert settings.cache.redis_url is not None
    assert url != settings.cache.redis_url.get_secret_value()  # the cache's Redis evicts


def test_the_pods_share_one_batch_file_volume(objects, pod, container, monkeypatch):
    settings = settings_from_env(monkeypatch, objects[("ConfigMap", "glimpse-config")]["data"])
    assert settings.batch.dir is not None
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(settings.batch.dir)]
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
    claim = objects[("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # every replica mounts it
