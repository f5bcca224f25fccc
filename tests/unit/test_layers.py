"""Dependencies point inward: each package imports only from the layers below it (STYLE.md §1)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "glimpse"

#: package -> glimpse packages it must never import
FORBIDDEN = {
    "obs": {"api", "engine", "media", "guard", "cache", "client", "web", "cli"},
    "media": {"api", "engine", "guard", "cache", "client", "cli"},
    "guard": {"api", "engine", "media", "cache", "client", "cli"},
    "cache": {"api", "engine", "media", "guard", "client", "cli"},
    "engine": {"api", "client", "cli", "guard", "cache"},
    "client": {"api", "engine", "media", "guard", "cache", "cli"},
    "batches": {"api", "engine", "media", "guard", "cache", "client", "web", "cli"},
    "finetune": {"api", "guard", "cache", "client", "web", "cli", "batches"},
}
WEB_FRAMEWORKS = {"fastapi", "starlette", "uvicorn"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_respects_the_layers(package):
    offenders = []
    for path in sorted((SRC / package).rglob("*.py")):
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "glimpse" and len(parts) > 1 and parts[1] in FORBIDDEN[package]:
                offenders.append(f"{path.relative_to(SRC)} imports {name}")
            if parts[0] in WEB_FRAMEWORKS:
                offenders.append(f"{path.relative_to(SRC)} imports {name} (only glimpse.api may)")
    assert offenders == []
