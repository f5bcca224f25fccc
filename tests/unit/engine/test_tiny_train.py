"""Training the tiny model is deterministic; the shipped checkpoint is what its manifest says."""

from __future__ import annotations

import hashlib
import json

import pytest

from glimpse.config import EngineSettings
from glimpse.engine.loader import resolve_model_path
from glimpse.engine.tiny_eval import TARGETS
from glimpse.engine.tiny_model import shipped_tiny_model_dir
from glimpse.engine.tiny_train import MANIFEST, load_config, train

SHIPPED = shipped_tiny_model_dir()


def test_model_tiny_is_the_shipped_trained_checkpoint():
    assert resolve_model_path(EngineSettings(model="tiny")) == (str(SHIPPED), True)


def test_the_shipped_files_match_the_manifest_and_are_small():
    manifest = json.loads((SHIPPED / MANIFEST).read_text())
    files = {p.name for p in SHIPPED.iterdir() if p.is_file()} - {MANIFEST}
    assert set(manifest["files"]) == files
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((SHIPPED / name).read_bytes()).hexdigest() == digest, name
    assert sum((SHIPPED / name).stat().st_size for name in files) < 12 * 2**20
    assert manifest["command"].startswith("glimpse train-tiny")


def test_the_manifest_records_accuracy_meeting_the_colour_target():
    # Only colour meets its target so far (shape, count and position do not yet: see the README).
    table = json.loads((SHIPPED / MANIFEST).read_text())["accuracy"]["table"]
    for row, target in [("color", TARGETS["color"])]:
        for lang in ("en", "zh"):
            right, asked = table[row][lang]
            assert asked >= 100
            assert right >= target * asked, (row, lang, right, asked)


@pytest.mark.slow
def test_training_is_deterministic(tmp_path):
    small = {
        "samples": 24,
        "easy_samples": 8,
        "epochs": 1,
        "batch_size": 8,
        "eval_per_cell": 1,
        "text_hidden": 64,
        "text_ffn": 64,
        "vision_hidden": 32,
        "vision_ffn": 64,
        "text_layers": 1,
        "vision_depth": 1,
    }
    first = train(tmp_path / "a", load_config(None, **small))
    second = train(tmp_path / "b", load_config(None, **small))
    assert first["files"]["model.safetensors"] == second["files"]["model.safetensors"]
    assert first["accuracy"] == second["accuracy"]
