"""The adapters an engine knows, and the few resident in its LoRA layers (least recently used out).

Any thread may add (after reading and checking the files off the engine thread)
or remove adapters; only the engine thread makes one resident (``acquire``, when a
sequence that uses it is admitted) and lets it go (``release``). At most
``max_resident`` adapters sit in the layers at once, each in a numbered slot (0 is
the base model: no delta). When a new one is needed and every slot is taken, the
least recently used adapter that no running sequence holds is unloaded; it is
read from its folder again the next time a request names it. A removed adapter
leaves the layers once its last running sequence ends.

Adapters may change the language model's decoder layers, its LM head and the
vision tower's linear layers; the tower's are routed by image (``vision_routed``).
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glimpse.engine.lora.adapter import AdapterError, LoraAdapter, check_against, read_adapter
from glimpse.engine.lora.layer import LoraLinear, Route, Routing, VisionRoutes, wrap_linears
from glimpse.engine.lora.targets import head_name, language_model_prefix, vision_prefix
from glimpse.engine.protocol import AdapterInfo
from glimpse.errors import ModelNotFound, Overloaded

__all__ = ["LoraBank", "servable_shapes"]


def servable_shapes(model: Any) -> dict[str, tuple[int, int]]:
    """``name -> (in_features, out_features)`` of the linear layers adapters may change when served:
    those of the language model's decoder layers, the LM head and the vision tower (works on a
    ``meta`` model too)."""
    import torch

    tower = vision_prefix(model)
    starts = tuple(prefix + "." for prefix in (language_model_prefix(model) + ".layers", tower) if prefix)
    head = head_name(model)
    shapes: dict[str, tuple[int, int]] = {}
    for name, module in model.named_modules():
        if not (name.startswith(starts) or name == head) or name.rpartition(".")[0] in shapes:
            continue  # outside the served part, or a wrapper's own base layer
        if isinstance(module, torch.nn.Linear | LoraLinear):
            shapes[str(name)] = (int(module.in_features), int(module.out_features))
    return shapes


@dataclass(slots=True)
class _Known:
    info: AdapterInfo
    #: The weights read when the adapter was added, kept until it is first made resident.
    pending: LoraAdapter | None


@dataclass(slots=True)
class _Resident:
    slot: int
    pins: int = 0  # running sequences that use it
    removed: bool = False  # unload once the last of them ends


class LoraBank:
    """See the module's docstring. ``routing`` is what the runner sets around each forward."""

    def __init__(
        self, model: Any, *, max_resident: int, max_rank: int, parent: str, served_names: Sequence[str]
    ) -> None:
        import torch

        first = next(model.parameters())
        self._device = first.device
        half = (torch.float16, torch.bfloat16)
        # PEFT keeps the adapters of a half-precision model in float32 (autocast_adapter_dtype).
        self._dtype = torch.float32 if first.dtype in half else first.dtype
        self.routing = Routing()
        self._shapes = servable_shapes(model)
        self._layers: dict[str, LoraLinear] = wrap_linears(
            model, list(self._shapes), self.routing, head=head_name(model), vision=vision_prefix(model)
        )
        #: Slots of resident adapters that change the vision tower.
        self._vision_slots: set[int] = set()
        self.max_rank = max_rank
        self.max_resident = max_resident
        self._parent = parent
        self._served = tuple(served_names)
        self._lock = threading.Lock()
        self._known: dict[str, _Known] = {}
        self._resident: OrderedDict[str, _Resident] = OrderedDict()  # least recently used first
        self._free = list(range(max_resident, 0, -1))
        #: Adapters read from disk again after they were unloaded (an LRU miss).
        self.reloads = 0

    # -- any thread -------------------------------------------------------------------

    def read(self, name: str, path: Path) -> LoraAdapter:
        """Read and check an adapter's files (blocking; raises ``AdapterError``); changes nothing."""
        adapter = read_adapter(name, path, max_rank=self.max_rank)
        check_against(adapter, self._shapes, self._served)
        return adapter

    def add(self, adapter: LoraAdapter) -> AdapterInfo:
        info = AdapterInfo(adapter.name, str(adapter.path), self._parent, adapter.rank, adapter.digest)
        with self._lock:
            if adapter.name in self._known:
                raise AdapterError(
                    f"A LoRA adapter named '{adapter.name}' is already loaded; unload it first."
                )
            self._known[adapter.name] = _Known(info, adapter)
        return info

    def remove(self, name: str) -> None:
        with self._lock:
            if self._known.pop(name, None) is None:
                raise ModelNotFound(f"No LoRA adapter named '{name}' is loaded.", param="lora_name")
            resident = self._resident.get(name)
            if resident is not None:
                resident.removed = True
                if resident.pins == 0:
                    self._unload(name)

    def info(self, name: str) -> AdapterInfo | None:
        with self._lock:
            known = self._known.get(name)
            return known.info if known is not None else None

    def infos(self) -> list[AdapterInfo]:
        with self._lock:
            return [known.info for known in self._known.values()]

    def resident(self) -> list[str]:
        """Names in the layers now, least recently used first."""
        with self._lock:
            return list(self._resident)

    # -- engine thread ----------------------------------------------------------------

    def can_acquire(self, name: str, held_back: Sequence[str] = ()) -> bool:
        """Whether ``acquire(name)`` would find a slot now (an unknown name: it fails at once).

        ``held_back``: the adapters of requests ahead of this one, in queue order, that could not
        be admitted (every slot pinned). Each of them is promised the slot of a resident adapter
        (``_promised``): a request for a promised adapter waits too, so no new row keeps that slot
        pinned and the one ahead gets it when the rows holding it end, however many arrive meanwhile.
        """
        with self._lock:
            if name not in self._known:
                return True
            if name in self._resident:
                return name not in self._promised(held_back)
            return bool(self._free) or any(r.pins == 0 for r in self._resident.values())

    def _promised(self, held_back: Sequence[str]) -> set[str]:
        """The resident adapters whose slots ``held_back`` wait for: the least recently used first, one
        per waiting adapter (the lock is held). No new pins on them, so that order stays put."""
        promised: set[str] = set()
        candidates = iter(self._resident)
        for waiting in dict.fromkeys(held_back):
            if waiting in self._resident or waiting not in self._known:
                continue  # waits for a promised slot itself, or fails at admission
            victim = next((n for n in candidates if n not in promised), None)
            if victim is None:
                break
            promised.add(victim)
        return promised

    def acquire(self, name: str) -> tuple[int, AdapterInfo]:
        """Make ``name`` resident (unloading the least recently used free one if need be) and hold it;
        returns its slot (what ``routed`` takes) and what it is."""
        with self._lock:
            known = self._known.get(name)
            if known is None:
                raise ModelNotFound(f"The LoRA adapter '{name}' is not loaded (any more).", param="model")
            resident = self._resident.get(name)
            if resident is not None:
                resident.pins += 1
                self._resident.move_to_end(name)
                return resident.slot, known.info
            slot = self._take_slot()
            adapter, known.pending = known.pending, None
        try:
            if adapter is None:
                adapter = self.read(name, Path(known.info.path))
                self.reloads += 1
            self._install(slot, adapter)
        except BaseException:
            self._clear(slot)
            raise
        with self._lock:
            self._resident[name] = _Resident(slot, pins=1, removed=name not in self._known)
        return slot, known.info

    def release(self, name: str) -> None:
        with self._lock:
            resident = self._resident.get(name)
            if resident is None:
                return
            resident.pins -= 1
            if resident.removed and resident.pins == 0:
                self._unload(name)

    def changes_vision(self, slot: int) -> bool:
        """Whether the adapter in ``slot`` changes the vision tower (its image features are its own)."""
        return slot in self._vision_slots

    @contextlib.contextmanager
    def routed(
        self, routes: Sequence[Route], head_routes: Sequence[Route], vision: VisionRoutes | None = None
    ) -> Iterator[None]:
        """Rows of the forward inside use these adapters: packed token rows, the LM head's rows, and
        the images of vision-tower calls (engine thread)."""
        self.routing.routes, self.routing.head_routes, self.routing.vision = routes, head_routes, vision
        try:
            yield
        finally:
            self.routing.routes = self.routing.head_routes = ()
            self.routing.vision = None

    @contextlib.contextmanager
    def vision_routed(self, slots: Sequence[int], patches: Sequence[int]) -> Iterator[None]:
        """The vision-tower call inside encodes images with these adapter slots and patch counts, in
        the order it concatenates them (engine thread)."""
        self.routing.vision = VisionRoutes(slots, patches, self._device)
        try:
            yield
        finally:
            self.routing.vision = None

    def _take_slot(self) -> int:
        if self._free:
            return self._free.pop()
        victim = next((n for n, r in self._resident.items() if r.pins == 0), None)
        if victim is None:  # the scheduler asks can_acquire first; kept for other callers
            raise Overloaded("Every LoRA adapter slot is in use by running requests.", retry_after=1)
        slot = self._resident[victim].slot
        self._unload(victim, free=False)
        return slot

    def _install(self, slot: int, adapter: LoraAdapter) -> None:
        for module, (a, b, scaling) in adapter.weights.items():
            layer = self._layers[module]
            if layer.vision:
                self._vision_slots.add(slot)
            a_dev = a.to(device=self._device, dtype=self._dtype)
            b_dev = b.to(device=self._device, dtype=self._dtype)
            layer.adapters[slot] = (a_dev, b_dev, scaling)

    def _clear(self, slot: int) -> None:
        for layer in self._layers.values():
            layer.adapters.pop(slot, None)
        self._vision_slots.discard(slot)
        with self._lock:
            self._free.append(slot)

    def _unload(self, name: str, *, free: bool = True) -> None:
        """Take ``name`` out of the layers (the lock is held)."""
        slot = self._resident.pop(name).slot
        for layer in self._layers.values():
            layer.adapters.pop(slot, None)
        self._vision_slots.discard(slot)
        if free:
            self._free.append(slot)
