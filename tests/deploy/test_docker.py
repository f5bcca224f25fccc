"""deploy/docker: both images are multi-stage, unprivileged, and buildable from what they copy."""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from tests.deploy.deploy_files import DEPLOY, REPO

DOCKERFILES = ["Dockerfile", "Dockerfile.cuda"]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    result = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def final_stage(steps: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (word, _) in enumerate(steps) if word == "FROM"]
    return steps[starts[-1] :]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_image_is_multi_stage_and_unprivileged(name):
    steps = instructions(DEPLOY / "docker" / name)
    froms = [args for word, args in steps if word == "FROM"]
    assert len(froms) >= 2
    assert froms[0].endswith(" AS builder")
    runtime = final_stage(steps)
    assert any(word == "COPY" and args.startswith("--from=builder ") for word, args in runtime)
    users = [args for word, args in runtime if word == "USER"]
    assert users
    assert users[-1].split(":")[0] not in ("root", "0")
    run = " ".join(args for word, args in runtime if word == "RUN")
    assert f"--uid {users[-1].split(':')[0]}" in run


@pytest.mark.parametrize("name", DOCKERFILES)
def test_image_runtime_settings(name):
    runtime = {
        word: args for word, args in final_stage(instructions(DEPLOY / "docker" / name)) if word != "ENV"
    }
    env = " ".join(args for word, args in instructions(DEPLOY / "docker" / name) if word == "ENV")
    assert "HF_HOME=/models" in env
    assert json.loads(runtime["VOLUME"]) == ["/models"]
    assert runtime["EXPOSE"] == "8080"
    assert runtime["STOPSIGNAL"] == "SIGTERM"
    assert "/healthz" in runtime["HEALTHCHECK"]
    assert json.loads(runtime["ENTRYPOINT"]) == ["glimpse", "serve", "--host", "0.0.0.0"]


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; ``!`` re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.removeprefix("!").rstrip("/")
        if fnmatch.fnmatch(path, body) or fnmatch.fnmatch(path, body + "/*") or path.startswith(body + "/"):
            ignored = not negate
    return ignored


def build_context(name: str, into: Path) -> Path:
    """The files the Dockerfile's ignore file lets into the build context."""
    lines = (DEPLOY / "docker" / f"{name}.dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for file in REPO.rglob("*"):
        rel = file.relative_to(REPO).as_posix()
        if file.is_file() and not rel.startswith((".git/", ".venv/")) and not _ignored(rel, patterns):
            (into / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, into / rel)
    return into


@pytest.mark.parametrize("name", DOCKERFILES)
def test_build_context_holds_what_the_dockerfile_copies(name, tmp_path):
    context = build_context(name, tmp_path)
    copies = [args for word, args in instructions(DEPLOY / "docker" / name) if word == "COPY"]
    for args in copies:
        if args.startswith("--from="):
            continue
        *sources, _ = args.split()
        for source in sources:
            assert (context / source).exists(), f"{source} is not in the build context"
    assert not (context / "tests").exists()  # the ignore file does keep the context small
    assert not (context / "deploy").exists()


def test_wheel_built_from_the_context_has_the_app_and_its_web_page(tmp_path):
    """What the builder stage runs (`pip wheel --no-deps .`), on the filtered build context."""
    context = build_context("Dockerfile", tmp_path / "context")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "--wheel-dir",
            str(tmp_path / "wheels"),
            str(context),
        ],  # fmt: skip
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "wheels").glob("glimpse_serve-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "glimpse/cli.py" in names
    assert "glimpse/web/static/index.html" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "glimpse = glimpse.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
