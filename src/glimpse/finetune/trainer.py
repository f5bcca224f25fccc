"""``glimpse finetune``: train a LoRA adapter (PEFT) on the served model from a JSONL dataset.

The model is loaded as ``glimpse serve`` loads it (``engine.loader``), the inputs
are built as the server builds them (``encode``), and the loss is transformers'
own, on the answer tokens only. Each epoch ends with a validation pass (loss and
exact-match accuracy) and a checkpoint (``checkpoint``), from which a later run of
the same command resumes. The result is a standard PEFT adapter directory (what
``PeftModel.from_pretrained`` and ``glimpse serve --lora`` read) and
``finetune_report.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

from glimpse.config import EngineSettings
from glimpse.finetune.checkpoint import TrainState, best_adapter, load_checkpoint, save_checkpoint
from glimpse.finetune.dataset import BadLine, Dataset, DatasetError, read_dataset, split
from glimpse.finetune.encode import Encoded, Encoder, collate
from glimpse.finetune.evaluate import batched, mean_loss, to_device, validate
from glimpse.finetune.options import FinetuneOptions

__all__ = ["REPORT", "finetune"]

REPORT = "finetune_report.json"
_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass(slots=True)
class _Run:
    """What one training run works with."""

    options: FinetuneOptions
    model: Any  # the PEFT model
    processor: Any
    optimizer: Any
    device: Any
    dtype: Any
    pad_id: int
    total_steps: int


def _digest(*paths: Path | None) -> str:
    digest = hashlib.sha256()
    for path in paths:
        if path is not None:
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _read(options: FinetuneOptions, console: Console) -> tuple[Dataset, list[Any], list[Any], Dataset | None]:
    """The training and validation examples; every bad line printed with its file and line."""

    def report(bad: BadLine) -> None:
        console.print(f"[yellow]skipped[/] {escape(bad.where)}: {escape(bad.reason)}", soft_wrap=True)

    data = read_dataset(options.data, options.on_bad_line, report=report)
    held = (
        None
        if options.val_file is None
        else read_dataset(options.val_file, options.on_bad_line, report=report)
    )
    if held is not None:
        return data, data.examples, held.examples, held
    train, validation = split(data.examples, options.val_fraction, options.seed)
    return data, train, validation, None


def _load(options: FinetuneOptions) -> tuple[Any, Any, Any, Any, list[int]]:
    from glimpse.engine.batching import generation_eos_ids
    from glimpse.engine.loader import load_model

    settings = EngineSettings(
        model=options.model, device=options.device, dtype=options.dtype, cpu_threads=options.threads
    )
    loaded = load_model(settings)
    eos = sorted(generation_eos_ids(loaded.model.generation_config))
    return loaded.model, loaded.processor, loaded.device, loaded.dtype, eos


def _peft_model(model: Any, options: FinetuneOptions) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model

    from glimpse.engine.lora.targets import lora_targets

    try:
        targets = lora_targets(model, options.target_modules, vision=options.vision)
    except ValueError as exc:
        raise DatasetError(f"--target-modules: {exc}") from exc
    config = LoraConfig(
        r=options.rank,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=targets.names,
        bias="none",
    )
    torch.manual_seed(options.seed)
    peft_model = get_peft_model(model, config)
    # The name glimpse serve compares with the model it serves ("tiny", a hub id or a folder).
    peft_model.peft_config["default"].base_model_name_or_path = options.model
    return peft_model


def _lr_at(step: int, total: int, peak: float) -> float:
    """Linear warm-up over the first 5 % of steps, then cosine decay to a tenth of the peak."""
    warmup = max(1, total // 20)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _train_epoch(run: _Run, train: list[Encoded], epoch: int, state: TrainState, progress: Progress) -> float:
    import torch

    options = run.options
    order = random.Random(options.seed * 1_000_003 + epoch).sample(train, len(train))  # noqa: S311
    batches = batched(order, options.batch_size)
    task = progress.add_task(f"epoch {epoch}/{options.epochs}", total=len(order))
    torch.manual_seed(options.seed + epoch)  # dropout
    run.model.train()
    trainable = [p for p in run.model.parameters() if p.requires_grad]
    loss_sum, tokens_sum = 0.0, 0
    for index, batch in enumerate(batches):
        inputs = to_device(collate(batch, run.pad_id, with_answers=True), run.device, run.dtype)
        loss, tokens = mean_loss(run.model, inputs)
        (loss / options.grad_accum).backward()
        loss_sum += float(loss.detach()) * tokens
        tokens_sum += tokens
        if (index + 1) % options.grad_accum == 0 or index + 1 == len(batches):
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            for group in run.optimizer.param_groups:
                group["lr"] = _lr_at(state.step, run.total_steps, options.lr)
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
            state.step += 1
        shown = loss_sum / max(1, tokens_sum)
        progress.update(
            task, advance=len(batch), description=f"epoch {epoch}/{options.epochs} (loss {shown:.3f})"
        )
    progress.remove_task(task)
    return loss_sum / max(1, tokens_sum)


def _epoch(
    run: _Run, train: list[Encoded], validation: list[Encoded], state: TrainState, progress: Progress
) -> tuple[dict[str, Any], bool]:
    """Train one epoch and validate; the history entry and whether it is the best epoch so far."""
    started, cpu_started = time.monotonic(), time.process_time()
    epoch = state.epoch + 1
    entry: dict[str, Any] = {
        "epoch": epoch,
        "train_loss": round(_train_epoch(run, train, epoch, state, progress), 5),
    }
    best = not validation
    if validation:
        task = progress.add_task("validating", total=len(validation))
        longest = max(len(item.answer_ids) for item in validation)
        result = validate(
            run.model,
            run.processor,
            validation,
            batch_size=run.options.batch_size,
            max_new_tokens=run.options.max_new_tokens or longest + 4,
            device=run.device,
            dtype=run.dtype,
            advance=lambda n: progress.advance(task, n),
        )
        progress.remove_task(task)
        entry.update(
            val_loss=round(result.loss, 5),
            val_right=result.right,
            val_total=result.total,
            val_accuracy=round(result.accuracy, 4),
        )
        best = state.best_loss is None or result.loss < state.best_loss
        if best:
            state.best_loss, state.best_epoch, state.stale = result.loss, epoch, 0
        else:
            state.stale += 1
    else:
        state.best_epoch = epoch
    entry["seconds"] = round(time.monotonic() - started, 2)
    entry["cpu_seconds"] = round(time.process_time() - cpu_started, 2)
    state.epoch = epoch
    state.seconds += entry["seconds"]
    state.cpu_seconds += entry["cpu_seconds"]
    state.history.append(entry)
    return entry, best


def _describe(entry: dict[str, Any]) -> str:
    line = f"epoch {entry['epoch']}: train loss {entry['train_loss']:.4f}"
    if "val_loss" in entry:
        line += (
            f", validation loss {entry['val_loss']:.4f}, exact match "
            f"{entry['val_right']}/{entry['val_total']} ({100 * entry['val_accuracy']:.1f} %)"
        )
    return line + f" [{entry['seconds']:.1f} s, {entry['cpu_seconds']:.1f} CPU s]"


def finetune(options: FinetuneOptions, console: Console | None = None) -> dict[str, Any]:
    """Train (or resume), publish the adapter in ``options.out`` and return the report."""
    import torch

    console = console or Console(stderr=True)
    options.check()
    data, train_examples, val_examples, held = _read(options, console)
    fingerprint = options.fingerprint(_digest(options.data, options.val_file))
    out = options.out
    if options.restart:
        shutil.rmtree(out / "checkpoint", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    random.seed(options.seed)
    torch.manual_seed(options.seed)
    model, processor, device, dtype, eos = _load(options)
    encoder = Encoder(processor, eos, options.template_kwargs)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("preparing examples", total=len(train_examples) + len(val_examples))
        encoded: list[Encoded] = []
        for example in [*train_examples, *val_examples]:
            encoded.append(encoder.encode(example))
            progress.advance(task)
    train, validation = encoded[: len(train_examples)], encoded[len(train_examples) :]
    peft_model = _peft_model(model, options)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=options.lr, weight_decay=0.0)
    state = load_checkpoint(out, fingerprint, peft_model, optimizer) or TrainState(fingerprint)
    if state.epoch:
        console.print(f"resuming from the checkpoint after epoch {state.epoch} in {out / 'checkpoint'}")
    tokenizer = getattr(processor, "tokenizer", processor)
    pad = getattr(tokenizer, "pad_token_id", None)
    steps_per_epoch = math.ceil(len(train) / options.batch_size / options.grad_accum)
    run = _Run(
        options,
        peft_model,
        processor,
        optimizer,
        device,
        dtype,
        int(pad) if isinstance(pad, int) else eos[0],
        steps_per_epoch * options.epochs,
    )
    with Progress(console=console) as progress:
        while state.epoch < options.epochs and not state.stopped_early:
            entry, best = _epoch(run, train, validation, state, progress)
            if options.patience is not None and state.stale >= options.patience:
                state.stopped_early = True
            save_checkpoint(out, peft_model, optimizer, state, best=best)
            progress.console.print(_describe(entry))
    report = _report(options, data, held, train, validation, state, peft_model)
    _publish(out, report)
    return report


def _report(
    options: FinetuneOptions,
    data: Dataset,
    held: Dataset | None,
    train: list[Encoded],
    validation: list[Encoded],
    state: TrainState,
    model: Any,
) -> dict[str, Any]:
    from importlib.metadata import version

    bad = data.bad + (held.bad if held is not None else [])
    best = next((e for e in state.history if e["epoch"] == state.best_epoch), None)
    return {
        "model": options.model,
        "adapter": str(options.out),
        "data": {
            "file": str(options.data),
            "lines": data.lines + (held.lines if held is not None else 0),
            "bad_lines": len(bad),
            "bad": [{"where": b.where, "reason": b.reason} for b in bad[:100]],
            "train": len(train),
            "validation": len(validation),
            "validation_from": "val_file" if held is not None else f"{options.val_fraction:g} of the data",
        },
        "options": options.as_json(),
        "epochs": state.history,
        "best_epoch": state.best_epoch,
        "best": best,
        "stopped_early": state.stopped_early,
        "train_seconds": round(state.seconds, 1),
        "train_cpu_seconds": round(state.cpu_seconds, 1),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "versions": {name: version(name) for name in ("torch", "transformers", "peft")},
    }


def _publish(out: Path, report: dict[str, Any]) -> None:
    """The best epoch's adapter as the standard PEFT files in ``out``, and the report beside them."""
    source = best_adapter(out)
    for name in _ADAPTER_FILES:
        shutil.copyfile(source / name, out / name)
    (out / REPORT).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
