"""Fixtures that run real Glimpse servers on the tiny model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.e2e.harness import GlimpseServer

from glimpse.engine.tiny_model import ensure_random_tiny_model


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-weight model, built once per test session and shared by the servers that
    test the batching machinery (long, varied answers); ``seeing_server`` serves the trained one."""
    return ensure_random_tiny_model(tmp_path_factory.mktemp("models") / "tiny-glm46v")


@pytest.fixture(scope="session")
def tiny_env(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return {
        "GLIMPSE_ENGINE__TINY_MODEL_DIR": str(tiny_model_dir),
        "GLIMPSE_OBS__LOG_LEVEL": "INFO",
        "GLIMPSE_GUARD__AUDIT_LOG_PATH": str(tmp_path_factory.mktemp("audit") / "audit.sqlite3"),
        "GLIMPSE_BATCH__DIR": str(tmp_path_factory.mktemp("batches")),
    }


@pytest.fixture(scope="session")
def tiny_server(
    tiny_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GlimpseServer]:
    """One ``glimpse serve --model tiny`` shared by the session's e2e tests."""
    log = tmp_path_factory.mktemp("logs") / "tiny_server.log"
    with GlimpseServer(["--model", "tiny"], env=tiny_env, log_path=log) as server:
        yield server
    # Everything the e2e tests did to it (bad inputs, hang-ups, cancellations, a clean
    # SIGTERM at the end) must leave no traceback behind: those are bugs, not noise.
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[text.index("Traceback") - 300 :][:4000]


@pytest.fixture(scope="session")
def seeing_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GlimpseServer]:
    """``glimpse serve --model tiny`` on the shipped trained checkpoint, continuous batching on."""
    log = tmp_path_factory.mktemp("logs") / "seeing_server.log"
    env = {
        "GLIMPSE_OBS__LOG_LEVEL": "INFO",
        "GLIMPSE_GUARD__AUDIT_LOG_PATH": str(tmp_path_factory.mktemp("audit") / "audit.sqlite3"),
        "GLIMPSE_BATCH__DIR": str(tmp_path_factory.mktemp("batches")),
    }
    with GlimpseServer(["--model", "tiny", "--max-batch-size", "8"], env=env, log_path=log) as server:
        yield server
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[text.index("Traceback") - 300 :][:4000]


@pytest.fixture(scope="session")
def reference(tiny_model_dir: Path) -> tuple[object, object]:
    """The tiny model and processor loaded directly, to compare answers with ``model.generate``."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir).eval()
    return model, processor
