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
    assert _default_profile(services) == {"glimpse-1", "glimpse-2", "redis", "nginx", "tls-init"}
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
