"""``glimpse finetune`` on the tiny model: it learns what the base never says, resumes, refuses nothing."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from rich.console import Console
from tests.lora_data import train_colour_codes

from glimpse.cli import main
from glimpse.engine.batching import generation_eos_ids
from glimpse.engine.tiny_model import shipped_tiny_model_dir
from glimpse.finetune import REPORT, DatasetError, FinetuneOptions, finetune, read_dataset
from glimpse.finetune.dataset import split
from glimpse.finetune.encode import IGNORE, Encoder, collate
from glimpse.finetune.evaluate import validate

pytestmark = pytest.mark.slow


def _validation(report, model, processor):
    """The report's validation split, encoded again from the dataset file, and checked with ``model``."""
    options = report["options"]
    examples = read_dataset(Path(options["data"]), "stop").examples
    _, held = split(examples, options["val_fraction"], options["seed"])
    encoder = Encoder(processor, sorted(generation_eos_ids(model.generation_config)), {})
    items = [encoder.encode(example) for example in held]
    return validate(
        model, processor, items, batch_size=16, max_new_tokens=16, device="cpu", dtype=torch.float32
    )


def test_the_adapter_answers_colours_as_product_codes_the_base_model_never_says(colour_codes_adapter):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    adapter, report = colour_codes_adapter
    assert report["data"]["train"] == 240
    assert report["data"]["validation"] == 60
    assert report["best"]["val_accuracy"] >= 0.9
    assert (adapter / "adapter_config.json").is_file()
    assert json.loads((adapter / REPORT).read_text())["best_epoch"] == report["best_epoch"]
    processor = AutoProcessor.from_pretrained(shipped_tiny_model_dir())
    base = AutoModelForImageTextToText.from_pretrained(shipped_tiny_model_dir(), dtype=torch.float32).eval()
    assert _validation(report, base, processor).right == 0
    tuned = PeftModel.from_pretrained(base, adapter).eval()  # the published files: a standard PEFT adapter
    assert _validation(report, tuned, processor).accuracy >= 0.9


def test_labels_cover_the_answer_and_the_end_of_turn_only(tmp_path):
    from transformers import AutoProcessor

    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"question": "What colour is it?", "answer": "COLOR-RED"}) + "\n")
    processor = AutoProcessor.from_pretrained(shipped_tiny_model_dir())
    encoder = Encoder(processor, [processor.tokenizer.convert_tokens_to_ids("<|user|>")], {})
    item = encoder.encode(read_dataset(path, "stop").examples[0])
    batch = collate([item], 0, with_answers=True)
    labelled = batch["labels"][0][batch["labels"][0] != IGNORE].tolist()
    assert processor.tokenizer.decode(labelled) == "COLOR-RED<|user|>"
    prompt = processor.tokenizer.decode(batch["input_ids"][0][: item.prompt_len])
    assert prompt.endswith("What colour is it?<|assistant|>\n")


def test_an_interrupted_run_resumes_after_its_last_epoch(tmp_path):
    console = Console(file=io.StringIO())
    _, first = train_colour_codes(tmp_path, samples=40, epochs=1, val_fraction=0.25)
    assert [e["epoch"] for e in first["epochs"]] == [1]
    options = FinetuneOptions(**{**_options(first), "epochs": 2})
    second = finetune(options, console)
    assert "resuming from the checkpoint after epoch 1" in console.file.getvalue()
    assert second["epochs"][0] == first["epochs"][0]
    assert [e["epoch"] for e in second["epochs"]] == [1, 2]
    with pytest.raises(DatasetError, match="--restart"):
        finetune(
            FinetuneOptions(**{**_options(first), "epochs": 3, "lr": first["options"]["lr"] / 2}), console
        )


def _options(report):
    values = dict(report["options"])
    for key in ("data", "out"):
        values[key] = Path(values[key])
    values["target_modules"] = tuple(values["target_modules"])
    return values


def test_a_dataset_with_nothing_usable_exits_2_with_one_line(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"image": "nowhere.png", "question": "Q", "answer": "A"}\n')
    assert main(["finetune", str(path), "--out", str(tmp_path / "out"), "--on-bad-line", "skip"]) == 2
    err = capsys.readouterr().err
    assert f"skipped {path}:1: cannot read image" in " ".join(err.split())
    assert "nothing to train on" in err
    assert not (tmp_path / "out").exists()
    assert main(["finetune", str(path), "--out", str(tmp_path / "out")]) == 2
    assert f"{path}:1" in capsys.readouterr().err
