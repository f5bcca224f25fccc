"""Loading and unloading LoRA adapters on every upstream, through vLLM's own endpoints.

A gateway forwards ``POST /v1/load_lora_adapter`` (and ``/v1/unload_lora_adapter``)
to each upstream at once, with the same body, and reports what each one answered.
The upstreams need not end up alike, and the gateway does not pretend they do:
requests for an adapter only go to the upstreams that list it
(``UpstreamEngine._without_adapter``), so one where loading failed (the folder
missing on its machine, runtime LoRA updates off) simply gets none of them. The
call succeeds when at least one upstream did what was asked; loading again adds
the adapter where it is missing (those that have it answer "already loaded").
An upstream's list is updated here at once on success, and re-read from its
``/v1/models`` every few health checks.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from glimpse.engine.protocol import AdapterPlacement
from glimpse.engine.upstream._reader import IDENTITY, read_capped
from glimpse.engine.upstream.balancer import Upstream
from glimpse.errors import InvalidRequest, ModelNotFound, UpstreamError

__all__ = ["AdapterForwarder"]

#: The most of an upstream's answer kept for the report.
_MESSAGE_CHARS = 300
#: Statuses by which an upstream refuses the request itself, not the gateway.
_REFUSED = frozenset({400, 404, 409, 422})


def _message(status: int, body: bytes) -> str:
    """An upstream's answer in one line: vLLM's error message (either error shape), else the text."""
    text = body.decode("utf-8", "replace").strip()
    try:
        payload: Any = json.loads(text)
    except (ValueError, RecursionError):
        payload = None
    if isinstance(payload, dict):
        error = payload.get("error")
        found = error.get("message") if isinstance(error, dict) else payload.get("message")
        found = found if isinstance(found, str) else payload.get("detail")
        if isinstance(found, str):
            text = found
    return " ".join(text.split())[:_MESSAGE_CHARS] or f"HTTP {status}"


def _summary(placements: Sequence[AdapterPlacement]) -> str:
    return "; ".join(f"{p.server}: {p.message}" for p in placements)


class AdapterForwarder:
    """Sends adapter loads and unloads to every upstream (see the module's docstring)."""

    def __init__(
        self,
        *,
        client: Callable[[], httpx.AsyncClient],
        upstreams: Sequence[Upstream],
        headers: Mapping[str, str],
        timeout: httpx.Timeout,
        max_body_bytes: int,
    ) -> None:
        self._client = client
        self._upstreams = upstreams
        self._headers = {**headers, "Accept-Encoding": IDENTITY}
        self._timeout = timeout
        self._max_body_bytes = max_body_bytes

    async def load(self, name: str, path: str) -> tuple[AdapterPlacement, ...]:
        """Load ``name`` from ``path`` (a folder on the upstreams' machines) on every upstream."""
        body = {"lora_name": name, "lora_path": path}
        placements = await self._send("/v1/load_lora_adapter", body)
        for upstream, placement in zip(self._upstreams, placements, strict=True):
            if placement.ok:
                upstream.adapters[name] = path
        self._check(placements, f"No upstream loaded the LoRA adapter '{name}'")
        return placements

    async def unload(self, name: str) -> tuple[AdapterPlacement, ...]:
        """Unload ``name`` from every upstream; ``ModelNotFound`` if none of them had it."""
        placements = await self._send("/v1/unload_lora_adapter", {"lora_name": name})
        for upstream, placement in zip(self._upstreams, placements, strict=True):
            if placement.ok or placement.status == 404:
                upstream.adapters.pop(name, None)
        if not any(p.ok for p in placements) and all(p.status == 404 for p in placements):
            raise ModelNotFound(
                f"No upstream serves a LoRA adapter named '{name}' ({_summary(placements)}).",
                param="lora_name",
            )
        self._check(placements, f"No upstream unloaded the LoRA adapter '{name}'")
        return placements

    @staticmethod
    def _check(placements: Sequence[AdapterPlacement], failed: str) -> None:
        """Nothing done anywhere: a 400 when every upstream refused the request itself (a bad path, a
        name taken), else a 502 (unreachable, refused the gateway's key, failed)."""
        if any(p.ok for p in placements):
            return
        message = f"{failed}: {_summary(placements)}."
        if all(p.status in _REFUSED for p in placements):
            raise InvalidRequest(message, param="lora_name")
        raise UpstreamError(message)

    async def _send(self, path: str, body: Mapping[str, str]) -> tuple[AdapterPlacement, ...]:
        return tuple(await asyncio.gather(*(self._one(u, path, body) for u in self._upstreams)))

    async def _one(self, upstream: Upstream, path: str, body: Mapping[str, str]) -> AdapterPlacement:
        client = self._client()
        try:
            async with client.stream(
                "POST", upstream.url + path, json=body, headers=self._headers, timeout=self._timeout
            ) as response:
                data, _truncated = await read_capped(response, self._max_body_bytes)
        except httpx.HTTPError as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return AdapterPlacement(upstream.name, ok=False, status=0, message=f"no answer ({reason})")
        status = response.status_code
        ok = 200 <= status < 300
        return AdapterPlacement(upstream.name, ok=ok, status=status, message=_message(status, data))
