"""Weight quantization: what is refused, which layers change, the bytes, the answers, LoRA on top."""

from __future__ import annotations

import sys

import pytest
import torch

from glimpse.cli import main
from glimpse.config import EngineSettings
from glimpse.engine.loader import load_model
from glimpse.engine.quantization import check_supported, loading_config, resident_weight_bytes, torchao_config
from glimpse.engine.tiny_model import shipped_tiny_model_dir
from glimpse.errors import ModelLoadError, QuantizationUnsupported

pytestmark = pytest.mark.usefixtures("restore_logging")


def test_fp8_on_the_cpu_is_refused_naming_the_option():
    with pytest.raises(QuantizationUnsupported, match=r"--quantization fp8 .*int8"):
        check_supported("fp8", "cpu", torch.float32)


def test_an_unknown_method_is_refused():
    with pytest.raises(QuantizationUnsupported, match="int9"):
        check_supported("int9", "cpu", torch.float32)


def test_a_missing_torchao_is_one_line_naming_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)  # import torchao -> ModuleNotFoundError
    with pytest.raises(QuantizationUnsupported, match="pip install") as caught:
        check_supported("int8", "cpu", torch.float32)
    assert "\n" not in caught.value.message


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["--quantization", "fp8"], {}, "--quantization fp8 needs a CUDA GPU"),
        ([], {"GLIMPSE_ENGINE__QUANTIZATION": "bogus"}, "GLIMPSE_ENGINE__QUANTIZATION"),
        (["--quantization", "int9"], {}, None),  # argparse refuses it (exit 2)
    ],
)
def test_serve_exits_2_with_one_line(argv, env, expected, capsys, monkeypatch):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    argv = ["serve", "--model", "tiny", "--device", "cpu", *argv]
    if expected is None:
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert "invalid choice: 'int9'" in err
        assert "Traceback" not in err
        return
    assert main(argv) == 2
    err = " ".join(capsys.readouterr().err.split())  # rich's line wrapping undone
    assert expected in err
    assert "Traceback" not in err
    assert err.count("error:") == 1, err  # one message, nothing logged beside it
    assert "int8" in err  # names what to use instead


def test_int8_weight_bytes_count_the_real_storage():
    layer = torch.nn.Linear(256, 64)
    before = resident_weight_bytes(layer)
    assert before == (256 * 64 + 64) * 4
    from torchao.quantization import quantize_

    quantize_(layer, torchao_config("int8", "cpu"))
    # int8 data, per output row a float32 scale and an int8 zero point; the float32 bias unchanged
    assert resident_weight_bytes(layer) == 256 * 64 + 64 * 4 + 64 + 64 * 4


def _quantized_names(model):
    return {
        name.removesuffix(".weight")
        for name, param in model.named_parameters()
        if type(param).__name__ not in ("Parameter", "Tensor")
    }


@pytest.mark.slow
def test_only_the_language_models_linear_layers_and_head_are_quantized():
    loaded = load_model(EngineSettings(model="tiny", device="cpu", quantization="int8"))
    names = _quantized_names(loaded.model)
    linears = {n for n, m in loaded.model.named_modules() if isinstance(m, torch.nn.Linear)}
    language = {n for n in linears if n.startswith("model.language_model.")}
    assert names == language | {"lm_head"}
    assert loaded.quantization == "int8"
    full = load_model(EngineSettings(model="tiny", device="cpu"))
    assert loaded.weight_bytes < full.weight_bytes


def test_the_lm_head_and_vision_options_change_the_kept_layers():
    source = str(shipped_tiny_model_dir())
    kept = loading_config(source, "int8", "cpu", lm_head=False).modules_to_not_convert
    assert r"lm_head\." in kept
    assert not any("language_model\\.layers" in k for k in kept)
    kept = loading_config(source, "int8", "cpu", vision=True).modules_to_not_convert
    assert not any("visual\\.blocks" in k for k in kept)
    assert any("embed_tokens" in k for k in kept)


@pytest.mark.slow
def test_quantize_writes_a_checkpoint_serve_loads_as_it_is(tmp_path):
    out = tmp_path / "tiny-int8"
    assert main(["quantize", "tiny", str(out), "--quantization", "int8", "--device", "cpu"]) == 0
    assert (out / "chat_template.jinja").is_file()
    written = load_model(EngineSettings(model=str(out), device="cpu"))
    fresh = load_model(EngineSettings(model="tiny", device="cpu", quantization="int8"))
    assert written.quantization == "int8"
    assert _quantized_names(written.model) == _quantized_names(fresh.model)
    for (name, a), (_, b) in zip(
        written.model.state_dict().items(), fresh.model.state_dict().items(), strict=True
    ):
        assert torch.equal(
            a.dequantize() if hasattr(a, "qdata") else a, b.dequantize() if hasattr(b, "qdata") else b
        ), name
    with pytest.raises(ModelLoadError, match="already quantized"):
        load_model(EngineSettings(model=str(out), device="cpu", quantization="int4"))


def test_quantize_refuses_int4_on_the_cpu(tmp_path, capsys):
    assert main(["quantize", "tiny", str(tmp_path / "q"), "--quantization", "int4", "--device", "cpu"]) == 2
    assert "int4" in capsys.readouterr().err


#: Questions per task and language: 7 rows x 2 languages x 3 = 42, well under a minute on 2 cores.
PER_CELL = 3


@pytest.fixture(scope="module")
def full_and_int8():
    full = load_model(EngineSettings(model="tiny", device="cpu"))
    int8 = load_model(EngineSettings(model="tiny", device="cpu", quantization="int8"))
    return full, int8


@pytest.fixture(scope="module")
def held_out(full_and_int8):
    """The held-out questions, and each weight format's greedy answers and how many are right."""
    from glimpse.engine.tiny_eval import answers, cases
    from glimpse.engine.tiny_task import grade
    from glimpse.engine.tiny_train import TrainConfig

    full, int8 = full_and_int8
    int4 = load_model(EngineSettings(model="tiny", device="cpu", quantization="int4"))
    assert int4.weight_bytes < int8.weight_bytes < full.weight_bytes  # torchao's CPU int4 layout
    todo = cases(TrainConfig().eval_seed, PER_CELL)
    said = {
        name: answers(loaded.model, loaded.processor, todo)
        for name, loaded in (("full", full), ("int8", int8), ("int4", int4))
    }
    right = {
        name: sum(grade(c.picture, c.task, c.lang, t) for c, t in zip(todo, texts, strict=True))  # type: ignore[arg-type]
        for name, texts in said.items()
    }
    assert right["full"] > 0.25 * len(todo)  # the shipped model answers (README: 49-100 % per row)
    return len(todo), said, right


@pytest.mark.slow
def test_int8_keeps_the_trained_tiny_models_accuracy_and_answers(held_out):
    asked, said, right = held_out
    assert (right["full"] - right["int8"]) / asked <= 0.01
    same = sum(a == b for a, b in zip(said["full"], said["int8"], strict=True))
    assert same >= 0.9 * asked


@pytest.mark.slow
def test_int4_keeps_the_trained_tiny_models_accuracy_within_three_points(held_out):
    asked, said, right = held_out
    assert (right["full"] - right["int4"]) / asked <= 0.03


@pytest.mark.slow
def test_batched_answers_on_int8_equal_its_own_generate(full_and_int8):
    from glimpse.engine.batching import BatcherConfig, ContinuousBatcher, SequenceRequest
    from glimpse.engine.protocol import SamplingParams
    from glimpse.engine.tiny_data import chat_messages, decoded_images, prompt_inputs
    from glimpse.engine.tiny_eval import cases

    from .batching.conftest import RecordingSink, reference

    _, int8 = full_and_int8
    processor, model = int8.processor, int8.model
    prepared = []
    for index, case in enumerate(cases(seed=7, per_cell=1)):
        turns = case.sample.turns
        messages = chat_messages(
            len(case.sample.pictures), [t.question for t in turns], [t.answer for t in turns[:-1]]
        )
        inputs = dict(
            processor(
                text=[prompt_inputs(processor, messages)],
                images=decoded_images(case.sample),
                return_tensors="pt",
            )
        )
        prepared.append((f"case{index}", inputs, reference(model, inputs, 16)))
    batcher = ContinuousBatcher(model, BatcherConfig(max_batch_size=8, max_seq_len=512))
    sink = RecordingSink()
    for seq_id, inputs, _ in prepared:
        batcher.submit(SequenceRequest(seq_id, inputs, sink, SamplingParams(max_new_tokens=16)))
    for _ in range(400):
        batcher.step()
        if all(sink.done(seq_id) for seq_id, _, _ in prepared):
            break
    assert not sink.errors
    for seq_id, _, ref in prepared:
        assert sink.tokens[seq_id] == ref, seq_id


@pytest.mark.slow
@pytest.mark.parametrize("method", ["int8", "int4"])
def test_lora_adapters_on_quantized_weights_answer_as_peft_does(method, random_tiny_adapter):
    """Our LoRA layers wrap torchao's quantized linears as they wrap plain ones (``base(x)`` plus the
    delta). Reference: PEFT's own torchao LoRA layer on the same quantized weights, one request at a time.
    """
    from peft import PeftModel

    from glimpse.engine.batching import BatcherConfig, ContinuousBatcher, SequenceRequest
    from glimpse.engine.lora.bank import LoraBank
    from glimpse.engine.protocol import SamplingParams

    from .batching.conftest import RecordingSink, make_inputs, reference

    settings = EngineSettings(model="tiny", device="cpu", quantization=method)
    peft = PeftModel.from_pretrained(load_model(settings).model, random_tiny_adapter).eval()
    v_proj = peft.base_model.model.model.language_model.layers[0].self_attn.v_proj
    assert type(v_proj).__name__ == "TorchaoLoraLinear"  # PEFT saw quantized weights
    served = load_model(settings)
    questions = ("What colour is the shape?", "How many shapes are there?", "What shape is it?")
    prompts = [make_inputs(served.processor, (64 + 16 * i, 80), q) for i, q in enumerate(questions)]
    want = {"noise": [reference(peft, p, 12) for p in prompts]}
    with peft.disable_adapter():
        want["base"] = [reference(peft, p, 12) for p in prompts]
    assert want["noise"] != want["base"]  # the adapter changes the answers
    bank = LoraBank(served.model, max_resident=1, max_rank=16, parent="tiny", served_names=("tiny",))
    bank.add(bank.read("noise", random_tiny_adapter))
    batcher = ContinuousBatcher(served.model, BatcherConfig(max_batch_size=8, max_seq_len=256), lora=bank)
    sink = RecordingSink()
    for i, inputs in enumerate(prompts):  # adapter and base rows in one running batch
        for name in ("noise", "base"):
            adapter = None if name == "base" else name
            params = SamplingParams(max_new_tokens=12)
            batcher.submit(SequenceRequest(f"{name}-{i}", inputs, sink, params, adapter=adapter))
    for _ in range(400):
        batcher.step()
        if all(sink.done(f"{name}-{i}") for name in want for i in range(len(prompts))):
            break
    assert not sink.errors
    for name, answers in want.items():
        for i, answer in enumerate(answers):
            assert sink.tokens[f"{name}-{i}"] == answer, (name, i)
