"""``glimpse finetune DATA --out DIR``: the command line of the LoRA trainer."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

__all__ = ["register_finetune"]

_console = Console(stderr=True, highlight=False)


def register_finetune(sub: Any) -> None:
    p = sub.add_parser(
        "finetune",
        help="Train a LoRA adapter for the served model from a JSONL dataset.",
        description="Train a LoRA adapter (PEFT) on the model glimpse serve would load, from lines of "
        '{"image": PATH or data URL, "question": ..., "answer": ...} or {"messages": [...]} (OpenAI chat '
        "shape, the last message the answer). Writes a PEFT adapter folder to serve with "
        "glimpse serve --lora NAME=DIR, and finetune_report.json. Run it again to resume after an "
        "interruption.",
    )
    p.add_argument("data", type=Path, help="The JSONL dataset (image paths are relative to it).")
    p.add_argument("--out", type=Path, required=True, help="Folder for the adapter, report and checkpoint.")
    p.add_argument("--model", default="tiny", help="Base model: Hugging Face id, local folder or 'tiny'.")
    p.add_argument("--val-file", type=Path, help="A separate JSONL validation set.")
    p.add_argument("--val-fraction", type=float, default=0.1, help="Share of DATA held out (default 0.1).")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank r (default 8).")
    p.add_argument("--alpha", type=int, default=16, help="LoRA alpha (default 16; scaling alpha/r).")
    p.add_argument("--dropout", type=float, default=0.0, help="LoRA dropout (default 0).")
    p.add_argument(
        "--target-modules",
        default="",
        help="Comma-separated linear layer names to adapt (e.g. q_proj,v_proj,lm_head); default: every "
        "linear layer of the language model and the LM head.",
    )
    p.add_argument("--vision", action="store_true", help="Also adapt the vision tower.")
    p.add_argument("--lr", type=float, default=2e-4, help="Peak learning rate (default 2e-4).")
    p.add_argument("--epochs", type=int, default=3, help="Passes over the training set (default 3).")
    p.add_argument("--batch-size", type=int, default=8, help="Examples per forward pass (default 8).")
    p.add_argument("--grad-accum", type=int, default=1, help="Batches per optimizer step (default 1).")
    p.add_argument(
        "--patience", type=int, help="Stop after this many epochs without a lower validation loss."
    )
    p.add_argument("--seed", type=int, default=0, help="Random seed (split, order, initialisation).")
    p.add_argument("--max-new-tokens", type=int, help="Answer tokens generated for the exact-match accuracy.")
    p.add_argument(
        "--on-bad-line", choices=["skip", "stop"], default="stop", help="Skip bad lines (listed) or stop."
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="Where to train.")
    p.add_argument("--dtype", choices=["auto", "bfloat16", "float16", "float32"], default="auto")
    p.add_argument("--threads", type=int, help="torch threads on a CPU (default: every core but one).")
    p.add_argument(
        "--chat-template-kwargs",
        default="{}",
        help="Chat-template variables, as the server gets them (JSON, e.g. '{\"enable_thinking\": false}').",
    )
    p.add_argument(
        "--restart", action="store_true", help="Discard a checkpoint in --out instead of resuming."
    )
    p.set_defaults(func=_finetune)


def _finetune(args: argparse.Namespace) -> int:
    from glimpse.finetune import REPORT, DatasetError, FinetuneOptions, finetune

    try:
        kwargs = json.loads(args.chat_template_kwargs)
        if not isinstance(kwargs, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        _console.print(f"[bold red]error:[/] --chat-template-kwargs: {escape(str(exc))}", soft_wrap=True)
        return 2
    options = FinetuneOptions(
        data=args.data,
        out=args.out,
        model=args.model,
        val_file=args.val_file,
        val_fraction=args.val_fraction,
        rank=args.rank,
        alpha=args.alpha,
        dropout=args.dropout,
        target_modules=tuple(m for m in args.target_modules.split(",") if m.strip()),
        vision=args.vision,
        lr=args.lr,
        epochs=args.epochs,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        patience=args.patience,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        on_bad_line=args.on_bad_line,
        device=args.device,
        dtype=args.dtype,
        threads=args.threads,
        template_kwargs=kwargs,
        restart=args.restart,
    )
    try:
        report = finetune(options, _console)
    except DatasetError as exc:
        _console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        _console.print(
            f"interrupted; run the same command again to resume from the last finished epoch in {args.out}"
        )
        return 130
    best = report.get("best") or {}
    accuracy = (
        f", validation exact match {100 * best['val_accuracy']:.1f} %" if "val_accuracy" in best else ""
    )
    sys.stdout.write(
        f"Wrote the adapter to {args.out} (epoch {report['best_epoch']}{accuracy}; "
        f"{report['train_seconds']} s); report: {args.out / REPORT}\n"
        f"Serve it with: glimpse serve --model {args.model} --lora NAME={args.out}\n"
    )
    return 0
