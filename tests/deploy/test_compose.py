"""deploy/compose: the file parses, its parts fit together, and `docker compose config` accepts it."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from tests.deploy.deploy_files import DEPLOY, REPO, interpolate, load_yaml, settings_from_env

COMPOSE_DIR = DEPLOY / "compose"
COMPOSE = COMPOSE_DIR / "docker-compose.yml"
GPU_OVERRIDE = COMPOSE_DIR / "docker-compose.gpu.yml"


@pytest.fixture(scope="module")
def services():
    (compose,) = load_yaml(COMPOSE)
    return compose["services"]


def _env(service) -> dict[str, str]:
    return {k: interpolate(str(v)) for k, v in service["environment"].items()}


def _default_profile(services) -> set[str]:
    return {name for name, s in services.items() if not s.get("profiles")}


def test_services_and_profiles(services):
    assert _default_profile(services) == {
        "glimpse-1",
        "glimpse-2",
        "redis",
        "queue-redis",
        "nginx",
        "tls-init",
    }
    assert services["vllm"]["profiles"] == ["vllm"]
    assert services["glimpse-vllm"]["profiles"] == ["vllm"]
    assert services["prometheus"]["profiles"] == services["grafana"]["profiles"] == ["monitoring"]


def test_replicas_share_redis_and_a_model_volume_and_drain_in_time(services, monkeypatch):
    for name in ("glimpse-1", "glimpse-2", "glimpse-vllm"):
        service = services[name]
        settings = settings_from_env(monkeypatch, _env(service))
        assert settings.cache.redis_url is not None
        assert settings.cache.redis_url.get_secret_value() == "redis://redis:6379/0"
        assert "models:/models" in service["volumes"]
        # Per-replica state (the audit store) on a volume of its own, where the setting points.
        (state,) = [v.split(":")[0] for v in service["volumes"] if v.endswith(":/var/lib/glimpse")]
        assert state == f"{name}-state"
        assert settings.guard.audit_log_path is not None
        assert settings.guard.audit_log_path.parent.as_posix() == "/var/lib/glimpse"
        grace = int(service["stop_grace_period"].removesuffix("s"))
        assert grace > settings.server.graceful_timeout_s
        assert (
            REPO / service["build"]["dockerfile"].replace("${GLIMPSE_DOCKERFILE:-Dockerfile}", "Dockerfile")
        ).is_file()
        assert (COMPOSE_DIR / service["build"]["context"]).resolve() == REPO


def _redis_flags(command: list[str]) -> dict[str, str]:
    """``--name value`` pairs of a redis-server command line."""
    args = command[1:] if command[0] == "redis-server" else command
    return {args[i].removeprefix("--"): args[i + 1] for i in range(0, len(args) - 1, 2)}


def test_the_batch_queue_is_a_durable_redis_of_its_own(services, monkeypatch):
    queue = services["queue-redis"]
    flags = _redis_flags(queue["command"])
    assert flags["appendonly"] == "yes"
    assert flags["appendfsync"] == "everysec"
    assert flags["maxmemory-policy"] == "noeviction"
    (data,) = [v.split(":")[0] for v in queue["volumes"] if v.endswith(":/data")]  # the AOF's directory
    (compose,) = load_yaml(COMPOSE)
    assert data in compose["volumes"]  # a named volume: it outlives the container
    assert "redis-cli" in queue["healthcheck"]["test"]
    # The cache's Redis evicts and keeps nothing: the queue must never be that one.
    assert _redis_flags(services["redis"]["command"])["maxmemory-policy"] != "noeviction"
    for name in ("glimpse-1", "glimpse-2", "glimpse-vllm"):
        settings = settings_from_env(monkeypatch, _env(services[name]))
        assert settings.queue.redis_url is not None
        assert settings.queue.redis_url.get_secret_value() == "redis://queue-redis:6379/0"
        assert services[name]["depends_on"]["queue-redis"]["condition"] == "service_healthy"


def test_the_replicas_share_one_batch_file_volume_the_image_lets_them_write(services, monkeypatch):
    (compose,) = load_yaml(COMPOSE)
    shared = set()
    for name in ("glimpse-1", "glimpse-2", "glimpse-vllm"):
        settings = settings_from_env(monkeypatch, _env(services[name]))
        assert settings.batch.dir is not None
        (volume,) = [
            v.split(":")[0] for v in services[name]["volumes"] if v.endswith(f":{settings.batch.dir}")
        ]
        shared.add(volume)
    (volume,) = shared  # one volume, the same for every replica
    assert volume in compose["volumes"]
    # Docker fills a new named volume from the image's directory, owner included.
    for dockerfile in ("Dockerfile", "Dockerfile.cuda"):
        run = " ".join((DEPLOY / "docker" / dockerfile).read_text().split())
        assert re.search(rf"mkdir -p [^&]*{settings.batch.dir}\b", run), dockerfile
        assert re.search(rf"chown glimpse:glimpse [^&]*{settings.batch.dir}\b", run), dockerfile


def test_vllm_serves_glm46v_flash_on_a_gpu_and_glimpse_uses_it(services, monkeypatch):
    vllm = services["vllm"]
    command = vllm["command"]
    assert command[command.index("--model") + 1] == "zai-org/GLM-4.6V-Flash"
    port = command[command.index("--port") + 1]
    (device,) = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert "gpu" in device["capabilities"]
    assert vllm["image"].startswith("vllm/vllm-openai:")
    settings = settings_from_env(monkeypatch, _env(services["glimpse-vllm"]))
    assert settings.engine.kind == "upstream"
    assert settings.upstream.urls == (f"http://vllm:{port}",)
    assert services["glimpse-vllm"]["depends_on"]["vllm"]["condition"] == "service_healthy"


def test_nginx_mounts_existing_files_and_balances_the_default_replicas(services):
    nginx = services["nginx"]
    for volume in nginx["volumes"]:
        source = interpolate(volume).split(":")[0]
        if source.startswith("."):
            assert (COMPOSE_DIR / source).is_file(), volume
    upstreams = (DEPLOY / "nginx" / "upstreams.compose.conf").read_text()
    servers = re.findall(r"^server ([\w.-]+):(\d+)\b", upstreams, re.MULTILINE)
    replicas = {n for n in _default_profile(services) if n.startswith("glimpse-")}
    assert {host for host, _ in servers} == replicas
    assert {port for _, port in servers} == {"8080"}
    assert set(nginx["depends_on"]) == replicas | {"tls-init"}
    # The TLS volume that tls-init fills is the one nginx reads its certificate from.
    (tls_init_volume,) = services["tls-init"]["volumes"]
    assert tls_init_volume.split(":")[0] in {v.split(":")[0] for v in nginx["volumes"]}


def test_monitoring_mounts_and_targets(services):
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE_DIR / source).exists(), volume
    (prometheus,) = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    targets = {t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    for target in targets:
        host, port = target.split(":")
        assert host in services, target
        assert port in {"8080", "8000"}


def test_gpu_override_targets_the_replicas():
    (override,) = load_yaml(GPU_OVERRIDE)
    assert set(override["services"]) == {"glimpse-1", "glimpse-2"}
    for service in override["services"].values():
        assert service["build"]["dockerfile"] == "deploy/docker/Dockerfile.cuda"
        assert service["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    return [standalone] if standalone else None


@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, GPU_OVERRIDE]], ids=["base", "gpu"])
@pytest.mark.parametrize("profiles", [[], ["vllm", "monitoring"]], ids=["default", "all-profiles"])
def test_docker_compose_config_accepts_it(files, profiles):
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no `docker compose` plugin or docker-compose binary on this machine")
    args = [
        *cli,
        *(a for f in files for a in ("-f", str(f))),
        *(a for p in profiles for a in ("--profile", p)),
    ]
    result = subprocess.run([*args, "config", "-q"], capture_output=True, text=True, cwd=COMPOSE_DIR)
    assert result.returncode == 0, result.stderr
