"""An engine that proxies to OpenAI-compatible servers (vLLM, SGLang, LMDeploy, Glimpse).

Each request runs in its own producer task that talks to one upstream at a time
and puts ``TokenEvent``s on a queue the caller's iterator reads. Cancelling that
task (client gone, ``cancel()``, deadline) leaves the ``httpx`` stream context in
the task that opened it, which closes the upstream connection, and that is how
vLLM and SGLang learn to abort the request. A request moves to another upstream
only while nothing has reached the client (retrying later would repeat text) and
never after a 4xx (it would fail again anywhere); ``_failures`` says which failure
is whose, and ``_verdicts`` why a 500 that every upstream gives opens no circuit.
What an upstream sends is read within bounds (``_reader``): error bodies, event
lines, the whole answer, and no more answer tokens than ``max_tokens``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

import httpx

from glimpse.config import EngineSettings, UpstreamSettings
from glimpse.engine.protocol import (
    AdapterInfo,
    AdapterPlacement,
    EngineHealth,
    FinishReason,
    GenerationRequest,
    TokenEvent,
)
from glimpse.engine.upstream._checks import check_request
from glimpse.engine.upstream._failures import BadStatus, Progress, Reported, Retry, Verdict, classify
from glimpse.engine.upstream._reader import IDENTITY, check_identity, read_capped
from glimpse.engine.upstream._relay import relay
from glimpse.engine.upstream._verdicts import Suspects, apply_verdict
from glimpse.engine.upstream.adapters import AdapterForwarder
from glimpse.engine.upstream.balancer import Balancer, Upstream
from glimpse.engine.upstream.breaker import BreakerState, CircuitBreaker
from glimpse.engine.upstream.health import HealthChecker
from glimpse.engine.upstream.hooks import NullUpstreamMetrics, Outcome, UpstreamMetrics
from glimpse.engine.upstream.routing import RouteOutcome, affinity_key
from glimpse.engine.upstream.wire import ImageEncoder, chat_body, error_for_status
from glimpse.errors import (
    DeadlineExceeded,
    EngineRequestError,
    GlimpseError,
    InvalidRequest,
    NotReady,
    Overloaded,
    UpstreamError,
    UpstreamTimeout,
)
from glimpse.media.threads import BlockingRunner

__all__ = ["UpstreamEngine"]

logger = logging.getLogger(__name__)


class UpstreamEngine:
    """Balances requests over upstream servers with health checks, circuit breakers and failover."""

    def __init__(
        self,
        settings: EngineSettings,
        upstream: UpstreamSettings,
        http_client: httpx.AsyncClient | None = None,
        metrics_hook: UpstreamMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        image_runner: BlockingRunner | None = None,
    ) -> None:
        self._model_name = settings.served_model_name or settings.model
        self._metrics: UpstreamMetrics = metrics_hook or NullUpstreamMetrics()
        self._max_new_tokens_limit = settings.max_new_tokens_limit
        self._options = upstream
        opts = self._options
        self._clock = clock
        self._balancer = Balancer.from_urls(
            upstream.urls,
            lambda: CircuitBreaker(
                failure_threshold=opts.failure_threshold, cooldown_s=opts.cooldown_s, clock=clock
            ),
            max_in_flight=opts.max_in_flight_per_upstream,
            policy=opts.routing_policy,
            load_margin=opts.routing_load_margin,
            on_route=self._record_route,
        )
        self._client = http_client
        self._owns_client = http_client is None
        key = upstream.api_key
        self._headers = {"Authorization": f"Bearer {key.get_secret_value()}"} if key else {}
        self._timeout = httpx.Timeout(
            connect=opts.connect_timeout_s,
            read=opts.read_timeout_s,
            write=opts.write_timeout_s,
            pool=opts.pool_timeout_s,
        )
        self._encoder = ImageEncoder(
            png_max_pixels=opts.png_max_pixels, runner=image_runner or BlockingRunner(opts.encode_workers)
        )
        self._checker = HealthChecker(
            client=self._http,
            upstreams=self._balancer.upstreams,
            model_name=self._model_name,
            headers=self._headers,
            timeout_s=opts.health_timeout_s,
            interval_s=opts.health_interval_s,
            metrics=self._metrics,
            max_body_bytes=opts.max_event_bytes,
        )
        self._forwarder = AdapterForwarder(
            client=self._http,
            upstreams=self._balancer.upstreams,
            headers=self._headers,
            timeout=self._timeout,
            max_body_bytes=opts.max_event_bytes,
        )
        self._checker_task: asyncio.Task[None] | None = None
        self._producers: dict[str, set[asyncio.Task[None]]] = {}
        self._started = False
        self._stopping = False

    @property
    def model_name(self) -> str:
        return self._model_name

    def adapters(self) -> list[AdapterInfo]:
        """The LoRA adapters the upstreams list (each name once; healthy upstreams' first)."""
        seen: dict[str, AdapterInfo] = {}
        for upstream in sorted(self.upstreams, key=lambda u: not u.healthy):
            for name, root in upstream.adapters.items():
                seen.setdefault(name, AdapterInfo(name, root, self._model_name))
        return list(seen.values())

    def adapter(self, name: str) -> AdapterInfo | None:
        return next((info for info in self.adapters() if info.name == name), None)

    async def load_adapter(self, name: str, path: str) -> AdapterInfo:
        """Load it on every upstream (``adapters.AdapterForwarder``); ``path`` is on their machines."""
        if name == self._model_name:
            raise InvalidRequest(
                f"'{name}' is the base model's name; give the adapter another.", param="lora_name"
            )
        placements = await self._forwarder.load(name, path)
        return AdapterInfo(name, path, self._model_name, placements=placements)

    async def unload_adapter(self, name: str) -> tuple[AdapterPlacement, ...]:
        return await self._forwarder.unload(name)

    def _without_adapter(self, name: str | None) -> set[str]:
        """Upstreams a request for adapter ``name`` must not go to: those that do not list it (none, when
        no upstream lists it: the first one asked answers 404)."""
        if name is None:
            return set()
        serving = {u.name for u in self.upstreams if name in u.adapters}
        return {u.name for u in self.upstreams if u.name not in serving} if serving else set()

    def _record_route(self, outcome: RouteOutcome) -> None:
        self._metrics.on_route(outcome)

    @property
    def upstreams(self) -> tuple[Upstream, ...]:
        """Live view of the upstreams (for the API's status page and for tests)."""
        return self._balancer.upstreams

    @property
    def health_checker(self) -> HealthChecker:
        return self._checker

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            raise NotReady("the upstream engine has not been started")
        return self._client

    async def start(self) -> None:
        if self._client is None:
            limits = httpx.Limits(max_connections=self._options.max_connections, max_keepalive_connections=64)
            # trust_env=False: proxies come from settings, never from the environment.
            self._client = httpx.AsyncClient(timeout=self._timeout, limits=limits, trust_env=False)
        await self._checker.check_all(first=True)
        self._checker_task = asyncio.create_task(self._checker.run(), name="upstream-health")
        self._started = True
        logger.info("upstream engine serving %r over %d upstream(s)", self._model_name, len(self.upstreams))

    async def stop(self) -> None:
        self._stopping = True
        tasks = [task for group in self._producers.values() for task in group]
        if self._checker_task is not None:
            tasks.append(self._checker_task)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._checker_task = None
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    def health(self) -> EngineHealth:
        healthy = [u for u in self.upstreams if u.healthy]
        ready = self._started and not self._stopping and bool(healthy)
        parts = []
        for u in self.upstreams:
            text = f"{u.name} {u.breaker.state} in_flight={u.in_flight} attempts={u.attempts}"
            if not u.healthy and u.last_error:
                text += f" last_error={u.last_error!r}"
            parts.append(text)
        running = sum(u.in_flight for u in self.upstreams)
        summary = f"{len(healthy)}/{len(self.upstreams)} upstreams healthy"
        return EngineHealth(ready=ready, detail="; ".join([summary, *parts]), running=running)

    def submit(self, request: GenerationRequest) -> AsyncGenerator[TokenEvent, None]:
        if not self._started or self._stopping:
            raise NotReady("the upstream engine is not running", retry_after=1)
        check_request(request, self._max_new_tokens_limit)
        if not self._balancer.any_available():
            raise self._no_upstream()
        return self._stream(request)

    def _no_upstream(self) -> Overloaded:
        if self._balancer.all_full():
            return Overloaded("every upstream is at its in-flight limit", retry_after=1)
        wait = max(1, math.ceil(self._balancer.seconds_until_trial()))
        return Overloaded("no healthy upstream server", retry_after=wait)

    async def _stream(self, request: GenerationRequest) -> AsyncGenerator[TokenEvent, None]:
        # Unbounded is fine: the stream is bounded by max_tokens and events are small.
        queue: asyncio.Queue[TokenEvent | None] = asyncio.Queue()
        producer = asyncio.create_task(self._produce(request, queue), name=f"upstream:{request.request_id}")
        producer.add_done_callback(lambda _: queue.put_nowait(None))
        self._producers.setdefault(request.request_id, set()).add(producer)
        delivered = 0
        try:
            while (event := await queue.get()) is not None:
                delivered += bool(event.text)
                yield event
            if producer.cancelled():
                yield TokenEvent("", finish_reason=FinishReason.CANCELLED, completion_tokens=delivered)
                return
            producer.result()  # re-raises the producer's error, if any
        finally:
            group = self._producers.get(request.request_id)
            if group is not None:
                group.discard(producer)
                if not group:
                    del self._producers[request.request_id]
            if not producer.done():
                producer.cancel()
                await asyncio.wait({producer})
            if not producer.cancelled():
                producer.exception()  # retrieved, so asyncio does not warn about it

    async def _produce(self, request: GenerationRequest, queue: asyncio.Queue[TokenEvent | None]) -> None:
        try:
            async with asyncio.timeout(request.seconds_left()):
                messages = await self._encoder.messages(request.messages)
                await self._attempts(request, messages, queue)
        except TimeoutError as exc:
            raise DeadlineExceeded("the request's deadline passed while the upstream was answering") from exc
        except GlimpseError:
            raise
        except Exception as exc:
            logger.exception("upstream engine bug on request %s", request.request_id)
            raise EngineRequestError("the upstream engine failed on this request") from exc

    async def _attempts(
        self,
        request: GenerationRequest,
        messages: list[dict[str, Any]],
        queue: asyncio.Queue[TokenEvent | None],
    ) -> None:
        tried = self._without_adapter(request.adapter)
        failures: list[GlimpseError] = []
        suspects = Suspects(self._judge)
        key = affinity_key(request) if self._balancer.cache_aware else None
        try:
            while (upstream := self._balancer.pick(tried, key)) is not None:
                # In half-open state pick() just took the one trial slot; only its owner may free it.
                trial = upstream.breaker.state is BreakerState.HALF_OPEN
                tried.add(upstream.name)
                try:
                    await self._attempt(upstream, request, messages, queue, suspects, trial=trial)
                except Retry as retry:
                    failures.append(retry.error)
                    logger.warning(
                        "request %s: upstream %s failed before the first token (%s)",
                        request.request_id,
                        upstream.name,
                        retry.error.message,
                    )
                    if retry.suspect:
                        suspects.add(upstream, retry.error, trial)
                        if len(suspects) > 1:  # failed the same way twice: the request's doing
                            raise self._request_failed(len(suspects), retry.error) from retry.error
                else:
                    return
        finally:
            suspects.absolve()  # whatever is still held: no other upstream served the request
        if not failures:
            raise self._no_upstream()
        last = failures[-1]
        if all(isinstance(failure, Overloaded) for failure in failures):
            raise Overloaded(
                f"all upstreams tried are busy: {last.message}", retry_after=last.retry_after
            ) from last
        if isinstance(last, UpstreamTimeout):
            raise UpstreamTimeout(f"{len(failures)} upstream(s) tried; last: {last.message}") from last
        raise UpstreamError(f"{len(failures)} upstream(s) tried, all failed; last: {last.message}") from last

    @staticmethod
    def _request_failed(tried: int, last: GlimpseError) -> UpstreamError:
        kind = UpstreamTimeout if isinstance(last, UpstreamTimeout) else UpstreamError
        return kind(
            f"this request failed the same way on {tried} upstream servers ({last.message}); "
            "it is not tried further"
        )

    async def _attempt(
        self,
        upstream: Upstream,
        request: GenerationRequest,
        messages: list[dict[str, Any]],
        queue: asyncio.Queue[TokenEvent | None],
        suspects: Suspects,
        *,
        trial: bool = False,
    ) -> None:
        upstream.in_flight += 1
        upstream.attempts += 1
        self._metrics.set_in_flight(upstream.name, upstream.in_flight)
        started = self._clock()
        # Once this upstream produces output, upstreams that failed the request before it
        # failed on their own.
        progress = Progress(on_output=suspects.blame)
        try:
            await self._exchange(upstream, request, messages, queue, progress)
        except asyncio.CancelledError:
            self._settle(upstream, "cancelled", started, "none", trial=trial)
            raise
        except (BadStatus, Reported, httpx.HTTPError, GlimpseError) as exc:
            failure = classify(exc, progress.sent)
            if isinstance(exc, Reported):
                logger.warning("upstream %s sent an error event: %r", upstream.name, exc.detail)
            self._settle(upstream, failure.outcome, started, failure.verdict, failure.error, trial)
            if failure.retry:
                raise Retry(failure.error, suspect=failure.verdict == "suspect") from exc
            raise failure.error from exc
        except Exception:
            # A bug of ours or something no class above covers: the upstream still gets its
            # verdict (and a trial slot back), or it could stay half-open and unused for good.
            self._settle(upstream, "stream_error", started, "fault", trial=trial)
            raise
        else:
            self._settle(upstream, "2xx", started, "healthy")
        finally:
            upstream.in_flight -= 1
            self._metrics.set_in_flight(upstream.name, upstream.in_flight)

    def _settle(
        self,
        upstream: Upstream,
        outcome: Outcome,
        started: float,
        verdict: Verdict,
        error: GlimpseError | None = None,
        trial: bool = False,
    ) -> None:
        """Record the attempt; a ``suspect`` verdict is held by the request's ``Suspects``."""
        self._metrics.on_request(upstream.name, outcome, self._clock() - started)
        if verdict != "suspect":
            self._judge(upstream, verdict, error, trial)

    def _judge(self, upstream: Upstream, verdict: Verdict, error: GlimpseError | None, trial: bool) -> None:
        apply_verdict(upstream, verdict, error, trial, self._metrics)

    async def _exchange(
        self,
        upstream: Upstream,
        request: GenerationRequest,
        messages: list[dict[str, Any]],
        queue: asyncio.Queue[TokenEvent | None],
        progress: Progress,
    ) -> None:
        # An adapter goes by its own name: vLLM and SGLang serve LoRA adapters as models of their own.
        body = chat_body(request, request.adapter or upstream.model or self._model_name, messages)
        headers = {**self._headers, "X-Request-ID": request.request_id, "Accept-Encoding": IDENTITY}
        url = upstream.url + "/v1/chat/completions"
        opts = self._options
        async with self._http().stream(
            "POST", url, json=body, headers=headers, timeout=self._timeout
        ) as response:
            if response.status_code != 200:
                content, _ = await read_capped(response, opts.max_error_body_bytes)
                error = error_for_status(
                    response.status_code,
                    response.headers,
                    content,
                    upstream.name,
                    max_retry_after_s=opts.max_retry_after_s,
                )
                raise BadStatus(response.status_code, error)
            check_identity(response)
            await relay(response, request, queue, progress, self._options)
