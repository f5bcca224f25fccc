"""What ``glimpse finetune`` is told: one frozen value, checked once, recorded in the report."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from glimpse.finetune.dataset import DatasetError

__all__ = ["FinetuneOptions"]

#: Options that may change between an interrupted run and its resumption (they do not change the
#: epochs already trained): train longer, stop earlier, or on another machine.
_RESUMABLE_CHANGES = frozenset({"epochs", "patience", "out", "device", "threads", "restart"})


@dataclass(slots=True, frozen=True)
class FinetuneOptions:
    data: Path
    out: Path
    model: str = "tiny"
    val_file: Path | None = None
    #: Share of ``data`` held out for validation when there is no ``val_file`` (0: none).
    val_fraction: float = 0.1
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    #: Leaf names of the linear layers to adapt (``q_proj``, ...); empty: every one of the language model.
    target_modules: tuple[str, ...] = ()
    #: Also adapt the vision tower's linear layers.
    vision: bool = False
    lr: float = 2e-4
    epochs: int = 3
    batch_size: int = 8
    grad_accum: int = 1
    #: Epochs without a lower validation loss before stopping (None: run every epoch).
    patience: int | None = None
    seed: int = 0
    #: Answer tokens generated for the exact-match accuracy (None: the longest answer's + 4).
    max_new_tokens: int | None = None
    on_bad_line: Literal["skip", "stop"] = "stop"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    threads: int | None = None
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    #: Ignore a checkpoint left in ``out`` by an earlier run, instead of resuming from it.
    restart: bool = False

    def check(self) -> None:
        """``DatasetError`` (exit status 2) for values no training could use."""
        positive: dict[str, float] = {"rank": self.rank, "epochs": self.epochs, "batch_size": self.batch_size}
        positive.update(grad_accum=self.grad_accum, alpha=self.alpha, lr=self.lr)
        for name, value in positive.items():
            if value <= 0:
                raise DatasetError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if not 0 <= self.val_fraction < 1:
            raise DatasetError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 <= self.dropout < 1:
            raise DatasetError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.patience is not None and self.patience < 1:
            raise DatasetError(f"--patience must be at least 1, got {self.patience}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise DatasetError(f"--max-new-tokens must be positive, got {self.max_new_tokens}")

    def as_json(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        return {
            k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
            for k, v in values.items()
        }

    def fingerprint(self, data_digest: str) -> str:
        """What a checkpoint must match to be resumed: these options (but the resumable ones) and the data."""
        kept = {k: v for k, v in self.as_json().items() if k not in _RESUMABLE_CHANGES}
        kept["data_sha256"] = data_digest
        return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()
