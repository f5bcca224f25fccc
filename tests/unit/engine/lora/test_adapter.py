"""Adapters that cannot be served are refused with a message that says which, why and what to do."""

from __future__ import annotations

import json
import shutil

import pytest

from glimpse.config import EngineSettings
from glimpse.engine.lora.adapter import AdapterError, check_against, read_adapter
from glimpse.engine.lora.bank import servable_shapes
from glimpse.engine.lora.preflight import check_adapters
from glimpse.errors import ModelLoadError

from .conftest import fresh_model, make_adapter

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def good(tiny_dir, tmp_path_factory):
    return make_adapter(tiny_dir, tmp_path_factory.mktemp("good") / "a", seed=3, rank=8)


@pytest.fixture(scope="module")
def shapes(tiny_dir):
    return servable_shapes(fresh_model(tiny_dir))


def _copy(good, tmp_path, edit=None):
    path = tmp_path / "copy"
    shutil.copytree(good, path)
    if edit is not None:
        config = json.loads((path / "adapter_config.json").read_text())
        edit(config)
        (path / "adapter_config.json").write_text(json.dumps(config))
    return path


def test_a_good_adapter_reads_with_its_scaling_and_fits(good, shapes):
    adapter = read_adapter("a", good, max_rank=8)
    assert adapter.rank == 8
    assert "lm_head" in adapter.weights
    assert {scale for _, _, scale in adapter.weights.values()} == {2.0}  # alpha 16 / r 8
    assert len(adapter.digest) == 64
    check_against(adapter, shapes, ("tiny",))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: (p / "adapter_config.json").unlink(), "has no adapter_config.json"),
        (lambda p: (p / "adapter_config.json").write_text("{oops"), "not JSON"),
        (lambda p: (p / "adapter_model.safetensors").unlink(), "has no adapter_model.safetensors"),
        (lambda p: (p / "adapter_model.safetensors").write_bytes(b"\x00" * 40), "corrupt"),
    ],
)
def test_missing_or_corrupt_files(good, tmp_path, damage, message):
    path = _copy(good, tmp_path)
    damage(path)
    with pytest.raises(AdapterError, match=message):
        read_adapter("a", path, max_rank=64)


def test_rank_above_the_limit(good):
    with pytest.raises(AdapterError, match="rank 8, above this server's limit of 4"):
        read_adapter("a", good, max_rank=4)


def test_options_the_serving_path_does_not_compute(good, tmp_path):
    path = _copy(good, tmp_path, lambda c: c.update(use_dora=True))
    with pytest.raises(AdapterError, match="use_dora=True is not supported"):
        read_adapter("a", path, max_rank=64)


def test_an_adapter_for_another_base_model(good, tmp_path, shapes):
    renamed = read_adapter(
        "a", _copy(good, tmp_path, lambda c: c.update(base_model_name_or_path="Qwen2-VL")), max_rank=64
    )
    with pytest.raises(AdapterError, match="trained for base model 'Qwen2-VL'"):
        check_against(renamed, shapes, ("tiny",))
    narrower = {name: (inputs + 1, outputs) for name, (inputs, outputs) in shapes.items()}
    with pytest.raises(AdapterError, match="trained for another base model"):
        check_against(read_adapter("a", good, max_rank=64), narrower, ("tiny",))


def test_vision_tower_adapters_are_checked_like_the_others(tiny_dir, tmp_path, shapes):
    path = make_adapter(tiny_dir, tmp_path / "v", seed=1, leaves=("qkv", "proj"), vision=True)
    adapter = read_adapter("v", path, max_rank=64)
    assert any(module.startswith("model.visual.merger.") for module in adapter.modules)
    check_against(adapter, shapes, ("tiny",))
    narrower = {name: (inputs + 1, outputs) for name, (inputs, outputs) in shapes.items()}
    with pytest.raises(AdapterError, match=r"model\.visual\.\S+ takes"):
        check_against(adapter, narrower, ("tiny",))


def test_start_up_refuses_a_bad_adapter_before_loading_weights(tiny_dir, good, tmp_path):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_dir)
    named = {"model": str(tiny_dir), "served_model_name": "tiny", "lora_modules": (f"a={good}",)}
    check_adapters(EngineSettings(**named), config, str(tiny_dir))  # the adapter records base "tiny"
    with pytest.raises(ModelLoadError, match="not for the model served here"):
        check_adapters(EngineSettings(**{**named, "served_model_name": "other"}), config, str(tiny_dir))
    bad = EngineSettings(**named, max_lora_rank=4)
    with pytest.raises(ModelLoadError, match="above this server's limit"):
        check_adapters(bad, config, str(tiny_dir))


def test_serve_exits_2_before_starting_when_an_adapter_cannot_be_served(tmp_path, capsys):
    from glimpse.cli import main

    assert main(["serve", "--model", "tiny", "--lora", f"bad={tmp_path}", "--port", "0"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"LoRA adapter 'bad': {tmp_path} has no adapter_config.json" in err
