"""A linear layer that adds each batch row's own LoRA delta: many adapters, and the base, in one forward.

``LoraLinear`` wraps one of the model's ``nn.Linear`` modules in place, so every
code path that calls the module (the batching runner's packed forward,
``generate()``) goes through it. Before a forward, the runner says which rows
(packed token positions; for the LM head, which is applied to the rows whose
logits are wanted only, those rows) use which adapter (``Routing``); the layer then computes
``base(x)`` once for every row, and for each adapter present in the step its
rows' ``lora_B(lora_A(x)) * scaling``, added to those rows only. Rows of the base
model get nothing added. That is PEFT's own arithmetic, in PEFT's order (input
cast to the adapter's dtype, the sum cast back), so greedy answers match
``generate()`` on the PEFT model for that adapter.

One grouped matmul per adapter in the step, rather than gathering an ``[r, in]``
matrix per row: the same result, without a per-row copy of the weights.

The vision tower's layers are routed by image (``VisionRoutes``): the tower runs
all images of a step in one call, their patches concatenated, so each image's
rows are a contiguous run, as long as its patch count in the blocks and that
divided by the merge factor in the patch merger; a layer finds which by how many
rows it sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["LoraLinear", "Route", "Routing", "VisionRoutes", "wrap_linears"]

#: (adapter slot, the flattened rows that use it; ``None``: every row)
Route = tuple[int, torch.Tensor | None]


class VisionRoutes:
    """Which images of a vision-tower call use which adapter: each image's slot and patch count, in
    the order the tower concatenates them (``patches=None``: one slot for every row)."""

    def __init__(self, slots: Sequence[int], patches: Sequence[int] | None, device: torch.device) -> None:
        if patches is not None and len(patches) != len(slots):
            raise ValueError("one patch count per image")
        self._slots = list(slots)
        self._patches = None if patches is None else [int(count) for count in patches]
        self._device = device
        self._by_rows: dict[int, list[Route]] = {}

    @classmethod
    def whole(cls, slot: int) -> VisionRoutes:
        """Every row of the call on ``slot`` (``generate()``: one sequence, one adapter)."""
        return cls([slot], None, torch.device("cpu"))

    def routes(self, rows: int) -> Sequence[Route]:
        """The routes of a layer that sees ``rows`` rows: the patches, or merged patches."""
        if self._patches is None:
            return [(self._slots[0], None)] if self._slots[0] else []
        found = self._by_rows.get(rows)
        if found is None:
            found = self._by_rows[rows] = self._resolve(rows)
        return found

    def _resolve(self, rows: int) -> list[Route]:
        total = sum(self._patches or ())
        if rows <= 0 or total % rows:
            raise ValueError(f"a vision layer saw {rows} rows, which do not divide the {total} patches")
        merged = total // rows
        by_slot: dict[int, list[int]] = {}
        start = 0
        for slot, count in zip(self._slots, self._patches or (), strict=True):
            length = count // merged
            if slot:
                by_slot.setdefault(slot, []).extend(range(start, start + length))
            start += length
        if len(by_slot) == 1 and len(next(iter(by_slot.values()))) == rows:
            return [(next(iter(by_slot)), None)]
        return [
            (slot, torch.tensor(at, dtype=torch.long, device=self._device)) for slot, at in by_slot.items()
        ]


class Routing:
    """Which rows of the current forward use which adapter; set by the engine thread around a forward.

    ``routes`` index the packed tokens (what the decoder layers see), ``head_routes`` the rows
    the LM head is applied to, ``vision`` the images of a vision-tower call.
    """

    __slots__ = ("head_routes", "routes", "vision")

    def __init__(self) -> None:
        self.routes: Sequence[Route] = ()
        self.head_routes: Sequence[Route] = ()
        self.vision: VisionRoutes | None = None


class LoraLinear(nn.Module):
    """``base`` plus the LoRA delta of each row's adapter (see the module's docstring)."""

    def __init__(
        self, base: nn.Linear, routing: Routing, *, head: bool = False, vision: bool = False
    ) -> None:
        super().__init__()
        self.base = base
        self.routing = routing
        #: The LM head: rows are the logit rows (``Routing.head_routes``), not the packed tokens.
        self.head = head
        #: A layer of the vision tower: rows are image patches (``Routing.vision``).
        self.vision = vision
        #: slot -> (A [r, in], B [out, r], scaling), on the base's device
        self.adapters: dict[int, tuple[torch.Tensor, torch.Tensor, float]] = {}

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> Any:
        out = self.base(x)
        if not self.adapters:
            return out
        routes = self._routes(x)
        if not routes:
            return out
        for slot, rows in routes:
            weights = self.adapters.get(slot)
            if weights is None:
                continue
            a, b, scaling = weights
            if rows is None:
                delta = nn.functional.linear(nn.functional.linear(x.to(a.dtype), a), b) * scaling
                out = (out + delta).to(out.dtype)
                continue
            out = out.contiguous()  # so the flat view below is ``out`` itself
            flat_out = out.view(-1, out.shape[-1])
            picked = x.reshape(-1, x.shape[-1]).index_select(0, rows)
            delta = nn.functional.linear(nn.functional.linear(picked.to(a.dtype), a), b) * scaling
            if delta.dtype == out.dtype:
                flat_out.index_add_(0, rows, delta)
            else:  # PEFT adds in the adapter's dtype, then rounds the sum once
                flat_out.index_copy_(0, rows, (flat_out.index_select(0, rows) + delta).to(out.dtype))
        return out

    def _routes(self, x: torch.Tensor) -> Sequence[Route]:
        if self.vision:
            vision = self.routing.vision
            return () if vision is None else vision.routes(x.numel() // x.shape[-1])
        return self.routing.head_routes if self.head else self.routing.routes


def wrap_linears(
    model: nn.Module,
    names: Sequence[str],
    routing: Routing,
    head: str | None = None,
    vision: str | None = None,
) -> dict[str, LoraLinear]:
    """Replace each named ``nn.Linear`` of ``model`` by a ``LoraLinear`` around it; returns them by name.
    ``head`` is the LM head's name (routed by logit rows), ``vision`` the vision tower's (its layers
    are routed by image)."""
    wrapped: dict[str, LoraLinear] = {}
    for name in names:
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        module = getattr(parent, leaf)
        if isinstance(module, LoraLinear):
            wrapped[name] = module
            continue
        in_tower = vision is not None and name.startswith(vision + ".")
        layer = LoraLinear(module, routing, head=name == head, vision=in_tower)
        setattr(parent, leaf, layer)
        wrapped[name] = layer
    return wrapped
