"""``kv_cache_dtype fp8`` is refused in one line wherever it cannot run: never a silent fallback."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import AutoConfig, CLIPVisionConfig, LlamaConfig, LlavaConfig

from glimpse.cli import build_parser, main, settings_from_args
from glimpse.config import EngineSettings
from glimpse.engine.kv_cache_dtype import check_kv_cache_dtype
from glimpse.engine.loader import LoadedModel
from glimpse.engine.tiny_model import shipped_tiny_model_dir
from glimpse.engine.worker import EngineWorker
from glimpse.errors import QuantizationUnsupported

pytestmark = pytest.mark.usefixtures("restore_logging")

FP8 = EngineSettings(model="tiny", kv_cache_dtype="fp8")


@pytest.fixture
def gpu(monkeypatch):
    """Pretend to be a CUDA GPU of the capability the test sets (the checks only ask torch)."""
    capability = {"value": (9, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_: capability["value"])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "Test GPU")
    return capability


def test_the_flag_and_the_default():
    args = build_parser().parse_args(["serve", "--kv-cache-dtype", "fp8"])
    assert settings_from_args(args).engine.kv_cache_dtype == "fp8"
    assert EngineSettings().kv_cache_dtype == "auto"
    check_kv_cache_dtype(EngineSettings(), "cpu")  # auto: anywhere


def test_serve_exits_2_with_one_line_on_the_cpu(capsys):
    assert main(["serve", "--model", "tiny", "--device", "cpu", "--kv-cache-dtype", "fp8"]) == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.strip()] == [
        "error: --kv-cache-dtype fp8 needs a CUDA GPU with fp8 support (compute capability 8.9 or newer), "
        "and the model runs on the CPU here; drop --kv-cache-dtype (the cache keeps the model's dtype)."
    ]


def test_gpus_before_ada_are_refused_naming_their_capability(gpu):
    gpu["value"] = (8, 6)
    with pytest.raises(QuantizationUnsupported, match=r"--kv-cache-dtype fp8 .* Test GPU is 8\.6") as caught:
        check_kv_cache_dtype(FP8, "cuda")
    assert "\n" not in caught.value.message
    gpu["value"] = (8, 9)
    check_kv_cache_dtype(FP8, "cuda")


def test_without_the_batching_engine_fp8_is_refused(gpu):
    with pytest.raises(QuantizationUnsupported, match="--kv-cache-dtype fp8 .*BATCHING=false"):
        check_kv_cache_dtype(FP8.model_copy(update={"batching": False}), "cuda")
    llava = LlavaConfig(
        text_config=LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64
        ),
        vision_config=CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28
        ),
    )
    with pytest.raises(QuantizationUnsupported, match="--kv-cache-dtype fp8 .*LlavaForConditionalGeneration"):
        check_kv_cache_dtype(FP8, "cuda", llava)
    check_kv_cache_dtype(FP8, "cuda", AutoConfig.from_pretrained(shipped_tiny_model_dir()))


def test_the_engine_refuses_rather_than_serving_through_generate():
    """The same rule where the engine is built without the CLI's check: no fallback to ``generate()``."""
    unbatchable = SimpleNamespace(config=SimpleNamespace(), parameters=lambda: iter([torch.zeros(1)]))
    loaded = LoadedModel(unbatchable, None, "cpu", torch.float32, "x", False, 0.0)
    worker = EngineWorker(FP8, on_loaded=lambda _: None)
    with pytest.raises(QuantizationUnsupported, match="--kv-cache-dtype fp8 .*not supported by the batching"):
        worker._make_steps(loaded)
