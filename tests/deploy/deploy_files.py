"""Loading the files under deploy/, and checking the Glimpse settings they set."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from glimpse.config import Settings

__all__ = [
    "DEPLOY",
    "REPO",
    "glimpse_env_names",
    "interpolate",
    "k8s_objects",
    "load_yaml",
    "settings_from_env",
]

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"

_COMPOSE_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def load_yaml(path: Path) -> list[Any]:
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def k8s_objects(directory: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """Every object in the directory's manifests, keyed by (kind, name)."""
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(directory.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in load_yaml(path):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in objects, f"{key} defined twice"
            objects[key] = doc
    return objects


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's ``${VAR:-default}`` with an empty environment (the file's own defaults)."""
    env = env or {}

    def sub(match: re.Match[str]) -> str:
        name, default = match.group("name"), match.group("default")
        if name in env:
            return env[name]
        assert default is not None, f"${{{name}}} has no default"
        return default

    return _COMPOSE_VAR.sub(sub, value)


def glimpse_env_names() -> set[str]:
    """Every GLIMPSE_<SECTION>__<NAME> variable that Settings reads."""
    names = set()
    for section, field in Settings.model_fields.items():
        model = field.annotation
        assert model is not None
        for name in model.model_fields:  # type: ignore[union-attr]
            names.add(f"GLIMPSE_{section}__{name}".upper())
    return names


def settings_from_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Settings:
    """Build Settings the way the server does, from exactly these variables."""
    known = glimpse_env_names()
    unknown = {k for k in env if k.startswith("GLIMPSE_")} - known
    assert not unknown, f"not Glimpse settings: {sorted(unknown)}"
    for name in known:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        if name.startswith("GLIMPSE_"):
            monkeypatch.setenv(name, value)
    return Settings()
