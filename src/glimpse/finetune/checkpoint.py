"""The per-epoch checkpoint that lets an interrupted ``glimpse finetune`` go on where it stopped.

``OUT/checkpoint/`` holds the adapter after the last finished epoch, the optimizer's
state, the training state (epochs done, history, best epoch) and the best epoch's
adapter. It is written beside the old one and swapped in with renames, so an
interruption while saving leaves the previous checkpoint whole. Data order and
dropout are seeded per epoch, so a resumed run trains on what the uninterrupted
run would have.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glimpse.finetune.dataset import DatasetError

__all__ = ["CHECKPOINT", "TrainState", "load_checkpoint", "save_checkpoint"]

CHECKPOINT = "checkpoint"
_STATE = "state.json"
_OPTIMIZER = "optimizer.pt"


@dataclass(slots=True)
class TrainState:
    fingerprint: str
    epoch: int = 0  # epochs finished
    step: int = 0  # optimizer steps taken
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_loss: float | None = None
    #: Epochs since the best one (early stopping).
    stale: int = 0
    stopped_early: bool = False
    #: Seconds spent training and evaluating, over every run that built this checkpoint: wall clock,
    #: and CPU time of the process (what a shared machine's load does not inflate).
    seconds: float = 0.0
    cpu_seconds: float = 0.0


def save_checkpoint(out: Path, model: Any, optimizer: Any, state: TrainState, *, best: bool) -> None:
    """Write the checkpoint of the epoch just finished (``best``: it is also the best so far)."""
    import torch

    target = out / CHECKPOINT
    staging = out / f".{CHECKPOINT}.new"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    # Embeddings are never adapted: PEFT need not look the base model up (on the Hub) to check its vocabulary.
    model.save_pretrained(staging / "adapter", save_embedding_layers=False)
    torch.save(optimizer.state_dict(), staging / _OPTIMIZER)
    if best:
        shutil.copytree(staging / "adapter", staging / "best")
    elif (target / "best").is_dir():
        shutil.copytree(target / "best", staging / "best")
    (staging / _STATE).write_text(json.dumps(dataclasses.asdict(state), indent=2) + "\n")
    old = out / f".{CHECKPOINT}.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(out: Path, fingerprint: str, model: Any, optimizer: Any) -> TrainState | None:
    """The state of the checkpoint in ``out``, its adapter and optimizer state restored; ``None``: none.

    A checkpoint of other data or other options (``fingerprint``) is refused, not overwritten.
    """
    import torch
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    directory = out / CHECKPOINT
    if not (directory / _STATE).is_file():
        return None
    try:
        state = TrainState(**json.loads((directory / _STATE).read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise DatasetError(f"the checkpoint in {directory} is unreadable ({exc}); pass --restart") from exc
    if state.fingerprint != fingerprint:
        raise DatasetError(
            f"{out} holds a checkpoint of another dataset or other options; pass --restart to discard it, "
            "or choose another --out"
        )
    device = next(model.parameters()).device
    set_peft_model_state_dict(model, load_peft_weights(str(directory / "adapter"), device=str(device)))
    optimizer.load_state_dict(torch.load(directory / _OPTIMIZER, map_location=device))
    return state


def best_adapter(out: Path) -> Path:
    """The adapter to publish: the best epoch's, else the last one's."""
    directory = out / CHECKPOINT
    return directory / "best" if (directory / "best").is_dir() else directory / "adapter"
