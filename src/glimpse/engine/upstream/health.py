"""Active health checks and model discovery for upstream servers.

Every few seconds each upstream is asked ``GET /health`` (vLLM, SGLang), falling
back to ``GET /v1/models`` for servers without it. While an upstream's name for
our model is unknown, ``/v1/models`` is asked instead, which is a health check
too; it is also asked every ``MODELS_EVERY`` checks, for the LoRA adapters the
upstream serves (loaded and unloaded there at run time). Results feed the same
circuit breakers as live traffic, so an idle upstream that dies is taken out, and
one that comes back is put back after its cool-down.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from glimpse.engine.upstream._reader import IDENTITY, read_capped
from glimpse.engine.upstream.balancer import Upstream
from glimpse.engine.upstream.hooks import UpstreamMetrics
from glimpse.engine.upstream.wire import resolve_model

__all__ = ["MODELS_EVERY", "HealthChecker"]

#: Health checks between two reads of an upstream's model list (its LoRA adapters).
MODELS_EVERY = 10

logger = logging.getLogger(__name__)


class _TooLarge(Exception):
    pass


class HealthChecker:
    def __init__(
        self,
        *,
        client: Callable[[], httpx.AsyncClient],
        upstreams: Sequence[Upstream],
        model_name: str,
        headers: Mapping[str, str],
        timeout_s: float,
        interval_s: float,
        metrics: UpstreamMetrics,
        max_body_bytes: int = 1024 * 1024,
    ) -> None:
        self._client = client
        self._upstreams = upstreams
        self._model_name = model_name
        self._headers = {**headers, "Accept-Encoding": IDENTITY}
        self._max_body_bytes = max_body_bytes
        self._timeout = httpx.Timeout(timeout_s)
        self._interval_s = interval_s
        self._metrics = metrics
        self._warned: set[str] = set()

    async def run(self) -> None:
        """Check forever; meant to be a background task that ``stop()`` cancels."""
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.check_all()
            except Exception:  # noqa: BLE001 - one bad round must not end health checking for good
                logger.exception("upstream health check round failed")

    async def check_all(self, *, first: bool = False) -> None:
        """Check every upstream at once; on the ``first`` round a failure takes it out at once."""
        await asyncio.gather(*(self.check(upstream, first=first) for upstream in self._upstreams))

    async def check(self, upstream: Upstream, *, first: bool = False) -> bool:
        was_healthy = upstream.healthy
        try:
            error = await self._probe(upstream)
        except httpx.PoolTimeout:
            return upstream.healthy  # our own pool is full: no verdict on the upstream
        if error is None:
            upstream.breaker.record_success()
        else:
            upstream.last_error = error
            if first:
                upstream.breaker.trip()
            else:
                upstream.breaker.record_failure()
        if upstream.healthy != was_healthy or first:
            log = logger.info if upstream.healthy else logger.warning
            log(
                "upstream %s is %s (%s)",
                upstream.name,
                upstream.breaker.state,
                error or "health check passed",
            )
        self._metrics.set_healthy(upstream.name, upstream.healthy)
        return error is None

    async def _get(self, upstream: Upstream, path: str) -> tuple[int, bytes]:
        """The status and body, of which at most ``max_body_bytes`` are read; more is a failure."""
        url = upstream.url + path
        client = self._client()
        async with client.stream("GET", url, headers=self._headers, timeout=self._timeout) as response:
            body, truncated = await read_capped(response, self._max_body_bytes)
        if truncated:
            raise _TooLarge(f"GET {path} answered more than {self._max_body_bytes} bytes")
        return response.status_code, body

    async def _probe(self, upstream: Upstream) -> str | None:
        """``None`` when the upstream looks able to serve, else why not."""
        try:
            upstream.checks_since_models += 1
            if upstream.model is None or upstream.checks_since_models >= MODELS_EVERY:
                return await self._discover(upstream)
            for path in upstream.health_paths:
                status, _ = await self._get(upstream, path)
                if status in (404, 405) and path != upstream.health_paths[-1]:
                    # No such endpoint on this server: stop asking it.
                    upstream.health_paths = tuple(p for p in upstream.health_paths if p != path)
                    continue
                if 200 <= status < 300:
                    return None
                return f"GET {path} answered {status}"
        except httpx.PoolTimeout:
            raise
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        except _TooLarge as exc:
            return str(exc)
        return "no health endpoint answered"

    async def _discover(self, upstream: Upstream) -> str | None:
        status, body = await self._get(upstream, "/v1/models")
        if not 200 <= status < 300:
            return f"GET /v1/models answered {status}"
        try:
            payload: Any = json.loads(body)
        except (ValueError, RecursionError):
            return "GET /v1/models answered with malformed JSON"
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            return "GET /v1/models answered without a model list"
        upstream.checks_since_models = 0
        entries = [item for item in data if isinstance(item, dict) and "id" in item]
        upstream.adapters = {str(i["id"]): str(i.get("root") or i["id"]) for i in entries if i.get("parent")}
        ids = [str(item["id"]) for item in entries if not item.get("parent")]
        if upstream.model is not None:
            return None
        model = resolve_model(self._model_name, ids)
        if model is None and upstream.name not in self._warned:
            self._warned.add(upstream.name)
            logger.warning(
                "upstream %s serves %s, none of which is %r; sending our name",
                upstream.name,
                ids,
                self._model_name,
            )
        elif model is not None:
            logger.info("upstream %s serves %r as %r", upstream.name, self._model_name, model)
            upstream.model = model
        return None
