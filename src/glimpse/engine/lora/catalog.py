"""The in-process engine's adapters as the API sees them: listed, looked up, loaded and unloaded.

Before the model is loaded the configured adapters are listed from the settings
(so ``/v1/models`` says what will be served); after, the ``LoraBank`` is the
truth. Loading reads and checks the files in a thread, never on the event loop
and never on the engine thread, which only ever makes checked adapters resident.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from glimpse.config import EngineSettings
from glimpse.engine.lora.adapter import AdapterError, LoraAdapter
from glimpse.engine.lora.bank import LoraBank
from glimpse.engine.protocol import AdapterInfo
from glimpse.errors import InvalidRequest, ModelNotFound, NotReady

__all__ = ["AdapterCatalog"]


def _read(bank: LoraBank, name: str, path: str) -> LoraAdapter:
    return bank.read(name, Path(path).expanduser())


class AdapterCatalog:
    def __init__(self, settings: EngineSettings, parent: str, bank: Callable[[], LoraBank | None]) -> None:
        self._settings = settings
        self._parent = parent
        self._bank = bank

    def list(self) -> list[AdapterInfo]:
        bank = self._bank()
        if bank is not None:
            return bank.infos()
        return [AdapterInfo(n, str(p), self._parent) for n, p in self._settings.lora_paths.items()]

    def get(self, name: str) -> AdapterInfo | None:
        bank = self._bank()
        if bank is not None:
            return bank.info(name)
        path = self._settings.lora_paths.get(name)
        return None if path is None else AdapterInfo(name, str(path), self._parent)

    def _ready_bank(self) -> LoraBank:
        if not self._settings.lora_enabled:
            raise InvalidRequest(
                "This server does not serve LoRA adapters; start it with --enable-lora "
                "(or --lora NAME=PATH).",
                param="lora_name",
            )
        bank = self._bank()
        if bank is None:
            raise NotReady("The model is still loading; try again shortly.", retry_after=2)
        return bank

    async def load(self, name: str, path: str) -> AdapterInfo:
        bank = self._ready_bank()
        if name in (self._parent, self._settings.model):
            raise AdapterError(f"'{name}' is the base model's name; give the adapter another.")
        if bank.info(name) is not None:
            raise AdapterError(f"A LoRA adapter named '{name}' is already loaded; unload it first.")
        adapter = await asyncio.to_thread(_read, bank, name, path)
        return bank.add(adapter)

    async def unload(self, name: str) -> None:
        bank = self._ready_bank()
        if bank.info(name) is None:
            raise ModelNotFound(f"No LoRA adapter named '{name}' is loaded.", param="lora_name")
        bank.remove(name)
