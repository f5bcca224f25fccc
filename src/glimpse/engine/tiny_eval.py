"""Measure the trained tiny model on a fresh set of the shapes task, per task and language.

``python -m glimpse.engine.tiny_eval [--model DIR] [--per-cell N] [--seed S]`` loads
the checkpoint with ``from_pretrained`` (the shipped one by default), asks ``N``
questions per task and language about pictures drawn with a seed training never
used (new sizes, shapes, colours, formats), greedily, through the real processor
and chat template, and prints the table of right answers.

``--quantization none,int8,int4`` asks the same questions of each weight format in
turn and ends with one comparison: weight bytes, right answers, and how many greedy
answers are identical to the first format's (the figures the README's quality table
and issue 19's goals are stated in).
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from glimpse.engine.tiny_data import chat_messages, decoded_images, prompt_inputs
from glimpse.engine.tiny_task import FORMATS, TASKS, Picture, Sample, Turn, answer, ask, grade, random_picture
from glimpse.engine.tiny_train import TrainConfig

__all__ = ["Case", "cases", "evaluate", "format_table", "main"]

#: Rows of the table beyond the five tasks: a question about one of two images, and a second turn.
EXTRA_ROWS = ("two images", "follow-up")
TARGETS = {"color": 0.97, "shape": 0.97, "count": 0.90, "position": 0.90}


@dataclass(slots=True)
class Case:
    row: str
    lang: str
    sample: Sample
    #: the picture the last question is about, and its task
    picture: Picture
    task: str


def _case(row: str, lang: str, rng: random.Random) -> Case:
    if row == "two images":
        pictures = [random_picture(rng), random_picture(rng)]
        index = rng.randint(0, 1)
        task = rng.choice(("color", "shape"))
        question = ask(task, lang, rng, image_index=index)  # type: ignore[arg-type]
        turns = [Turn(question, "")]
        picture = pictures[index]
    elif row == "follow-up":
        picture = random_picture(rng)
        first, task = rng.sample(["color", "shape", "count", "describe"], 2)
        q1 = ask(first, lang, rng)  # type: ignore[arg-type]
        turns = [Turn(q1, answer(picture, first, lang)), Turn(ask(task, lang, rng), "")]  # type: ignore[arg-type]
        pictures = [picture]
    else:
        task = row
        count = rng.randint(1, 4) if task == "count" else (1 if task == "position" else None)
        picture = random_picture(rng, count=count)
        turns = [Turn(ask(task, lang, rng), "")]  # type: ignore[arg-type]
        pictures = [picture]
    formats = [rng.choice(FORMATS) for _ in pictures]
    qualities = [rng.randint(60, 95) for _ in pictures]
    return Case(row, lang, Sample(pictures, turns, formats, qualities), picture, task)


def cases(seed: int, per_cell: int) -> list[Case]:
    """``per_cell`` questions for each row and language, drawn with ``seed``."""
    rng = random.Random(seed)
    return [
        _case(row, lang, rng)
        for row in (*TASKS, *EXTRA_ROWS)
        for lang in ("en", "zh")
        for _ in range(per_cell)
    ]


def answers(model: Any, processor: Any, batch: list[Case], max_new_tokens: int = 24) -> list[str]:
    """Greedy answers to the last question of each case, one batched ``generate`` call."""
    import torch

    prompts, images = [], []
    for case in batch:
        turns = case.sample.turns
        messages = chat_messages(
            len(case.sample.pictures), [t.question for t in turns], [t.answer for t in turns[:-1]]
        )
        prompts.append(prompt_inputs(processor, messages))
        images.extend(decoded_images(case.sample))
    inputs = processor(text=prompts, images=images, padding=True, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[:, inputs["input_ids"].shape[1] :]
    return [str(t).strip() for t in processor.tokenizer.batch_decode(new, skip_special_tokens=True)]


def evaluate(
    model: Any,
    processor: Any,
    *,
    seed: int,
    per_cell: int,
    batch_size: int = 32,
    said: list[str] | None = None,
) -> dict[str, dict[str, list[int]]]:
    """``{row: {lang: [right, asked]}}`` on a fresh set drawn with ``seed``; each answer is appended
    to ``said`` when given (to compare two models answer by answer)."""
    table: dict[str, dict[str, list[int]]] = {}
    todo = cases(seed, per_cell)
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        texts = answers(model, processor, batch)
        if said is not None:
            said.extend(texts)
        for case, text in zip(batch, texts, strict=True):
            cell = table.setdefault(case.row, {}).setdefault(case.lang, [0, 0])
            cell[0] += grade(case.picture, case.task, case.lang, text)  # type: ignore[arg-type]
            cell[1] += 1
    return table


def format_table(table: dict[str, dict[str, list[int]]]) -> str:
    """A Markdown table: right / asked and percent per row and language, with the targets."""
    lines = ["| task | English | Chinese | target |", "|---|---|---|---|"]
    for row, cells in table.items():
        shown = []
        for lang in ("en", "zh"):
            right, asked = cells.get(lang, [0, 0])
            shown.append(f"{right}/{asked} ({100 * right / max(1, asked):.1f} %)")
        target = f"≥ {TARGETS[row]:.0%}" if row in TARGETS else "-"
        lines.append(f"| {row} | {shown[0]} | {shown[1]} | {target} |")
    return "\n".join(lines)


def meets_targets(table: dict[str, dict[str, list[int]]]) -> bool:
    return all(
        right >= TARGETS[row] * asked for row in TARGETS for right, asked in table.get(row, {}).values()
    )


@dataclass(slots=True)
class _Run:
    method: str
    weight_bytes: int
    table: dict[str, dict[str, list[int]]]
    said: list[str]


def _format_comparison(runs: Sequence[_Run]) -> str:
    """A Markdown table of each format's weight bytes, right answers and answers identical to the first's."""
    first = runs[0]
    lines = [
        f"| weights | weight bytes | right answers | greedy answers identical to {first.method} |",
        "|---|---|---|---|",
    ]
    for run in runs:
        right = sum(cell[0] for cells in run.table.values() for cell in cells.values())
        asked = len(run.said)
        same = sum(a == b for a, b in zip(first.said, run.said, strict=True))
        identical = "-" if run is first else f"{same:,} / {asked:,} ({100 * same / max(1, asked):.1f} %)"
        lines.append(
            f"| {run.method} | {run.weight_bytes:,} | {right:,} / {asked:,} "
            f"({100 * right / max(1, asked):.2f} %) | {identical} |"
        )
    return "\n".join(lines)


def _methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in ("none", "int8", "int4")]
    if not methods or unknown:
        raise argparse.ArgumentTypeError(f"{text!r}: give none, int8 and/or int4, comma-separated")
    return methods


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m glimpse.engine.tiny_eval", description=__doc__)
    parser.add_argument("--model", help="Checkpoint directory (default: the shipped tiny model).")
    parser.add_argument("--per-cell", type=int, default=100, help="Questions per task and language.")
    parser.add_argument(
        "--seed", type=int, default=TrainConfig().eval_seed, help="Seed of the held-out set (not training's)."
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads.")
    parser.add_argument(
        "--quantization",
        type=_methods,
        default=["none"],
        help="Quantize the language model's weights as glimpse serve --quantization does (CPU): none, "
        "int8 or int4, or several comma-separated (none,int8,int4) to compare them on the same questions.",
    )
    args = parser.parse_args(argv)
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from glimpse.engine.quantization import check_supported, loading_config, resident_weight_bytes
    from glimpse.engine.tiny_model import shipped_tiny_model_dir

    torch.set_num_threads(args.threads)
    source = args.model or str(shipped_tiny_model_dir())
    processor = AutoProcessor.from_pretrained(source)
    runs: list[_Run] = []
    for method in args.quantization:
        extra: dict[str, Any] = {}
        if method != "none":
            check_supported(method, "cpu", torch.float32)
            extra["quantization_config"] = loading_config(source, method, "cpu")
        model = AutoModelForImageTextToText.from_pretrained(source, dtype=torch.float32, **extra).eval()
        said: list[str] = []
        table = evaluate(model, processor, seed=args.seed, per_cell=args.per_cell, said=said)
        runs.append(_Run(method, resident_weight_bytes(model), table, said))
        del model
        sys.stdout.write(
            f"held-out set: seed {args.seed}, {args.per_cell} questions per cell, model {source}, "
            f"quantization {method}\n"
        )
        sys.stdout.write(format_table(table) + "\n")
        sys.stdout.flush()
    if len(runs) > 1:
        sys.stdout.write("\n" + _format_comparison(runs) + "\n")
    return 0 if all(meets_targets(run.table) for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
