"""Build the FastAPI application from a ``Settings`` object."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Callable
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from glimpse import __version__
from glimpse.api import health
from glimpse.api.admission import Admission
from glimpse.api.batch.router import router as batch_router
from glimpse.api.batch.runner import BatchRunner
from glimpse.api.errors import install_error_handlers
from glimpse.api.infer.router import router as infer_router
from glimpse.api.lora.router import router as lora_router
from glimpse.api.middleware import (
    AdmissionMiddleware,
    BodyLimitMiddleware,
    RequestObserverMiddleware,
    SecurityHeadersMiddleware,
)
from glimpse.api.openai.router import router as openai_router
from glimpse.api.service import GenerationService
from glimpse.api.shedding import LoadShedder
from glimpse.api.state import AppState, StateDep
from glimpse.batches import BatchStore, RedisBatchStore, SqliteBatchStore, default_batch_dir
from glimpse.cache import MemoryCache, RedisCache, ResultCache
from glimpse.config import Settings
from glimpse.engine.factory import build_engine
from glimpse.engine.protocol import Engine
from glimpse.errors import GlimpseError, Unauthorized
from glimpse.guard import (
    AuditLog,
    Authenticator,
    PromptGuard,
    QuotaTracker,
    RateLimiter,
    RedisQuotaStore,
    RedisRateLimitStore,
    bearer_credential,
    is_loopback,
)
from glimpse.media import ImageIntake, create_fetch_client
from glimpse.obs import Metrics
from glimpse.redis_pool import RedisPools

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

FatalHandler = Callable[[BaseException], None]
ReadyHandler = Callable[[], None]


class GlimpseApp(FastAPI):
    """FastAPI with a load shedder in front of its whole middleware stack (see ``api.shedding``)."""

    shedder: LoadShedder | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.shedder is not None and self.shedder.refuses(scope):
            await self.shedder.refuse(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


async def _start_engine(
    engine: Engine, state: AppState, on_fatal: FatalHandler | None, on_ready: ReadyHandler | None
) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        await engine.start()
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # noqa: BLE001 - reported once, then the server is told to stop
        state.load_error = exc.message if isinstance(exc, GlimpseError) else f"{type(exc).__name__}: {exc}"
        logger.error(
            "engine failed to start: %s", state.load_error, exc_info=not isinstance(exc, GlimpseError)
        )
        if on_fatal is not None:
            on_fatal(exc)
        return
    state.metrics.model_load.set(loop.time() - started)
    if on_ready is not None:
        on_ready()
    logger.info(
        "engine ready", extra={"model": engine.model_name, "start_seconds": round(loop.time() - started, 2)}
    )


def _result_cache(settings: Settings, metrics: Metrics, redis: RedisPools) -> ResultCache | None:
    if not settings.cache.enabled:
        return None
    url = settings.redis_url_for("cache")
    if url is not None:
        backend: MemoryCache | RedisCache = RedisCache(
            redis.connect(url),
            settings.cache.ttl_s,
            on_failure=metrics.store_failures.labels(store="cache").inc,
        )
    else:
        backend = MemoryCache(settings.cache.max_bytes)
    return ResultCache(backend, on_event=metrics.observe_cache)


def _mount_web(app: FastAPI) -> None:
    static = Path(str(resources.files("glimpse") / "web" / "static"))
    index = static / "index.html"
    if not index.is_file():
        return
    app.mount("/static", StaticFiles(directory=static), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(index, headers={"Cache-Control": "no-cache"})


def _add_metrics_route(app: FastAPI) -> None:
    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request, state: StateDep) -> Response:
        required = state.settings.guard.metrics_api_key
        if required is not None:
            try:
                given = bearer_credential(request.headers.get("authorization", ""))
            except Unauthorized:
                given = ""
            if not hmac.compare_digest(given.encode(), required.get_secret_value().encode()):
                raise Unauthorized("/metrics needs the metrics key: Authorization: Bearer <key>.")
        health = state.engine.health()
        state.metrics.queue_depth.set(health.queue_depth)
        state.metrics.running_requests.set(health.running)
        if health.weight_bytes is not None:
            state.metrics.weight_bytes.set(health.weight_bytes)
        if health.kv_cache_bytes is not None:
            state.metrics.kv_cache_bytes.set(health.kv_cache_bytes)
        body, content_type = state.metrics.render()
        return Response(body, headers={"Content-Type": content_type})


def _batch_store(settings: Settings) -> BatchStore:
    """Redis shared by replicas when a queue Redis is named, else SQLite on this machine.

    Only ``queue.redis_url``: a cache's Redis may evict keys and keep nothing on disk.
    """
    directory = (settings.batch.dir or default_batch_dir()).expanduser()
    if settings.queue.redis_url is None:
        return SqliteBatchStore(directory)
    return RedisBatchStore(
        settings.queue.redis_url.get_secret_value(),
        directory,
        key_prefix=settings.queue.key_prefix,
        timeout_s=settings.queue.timeout_s,
        visibility_timeout_s=settings.batch.visibility_timeout_s,
    )


async def _start_batches(resources: contextlib.AsyncExitStack, state: AppState, audit: AuditLog) -> None:
    """Open the batch store and start its worker; both stop with the app (the worker first)."""
    settings = state.settings.batch
    store = _batch_store(state.settings)
    await store.open()
    resources.push_async_callback(store.close)
    state.batch_store = store
    runner = BatchRunner(store, state, settings, audit)
    await runner.start()
    resources.push_async_callback(runner.stop)
    state.wake_batch_worker = runner.wake


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _open_state(
    resources: contextlib.AsyncExitStack,
    settings: Settings,
    engine: Engine | None,
    metrics: Metrics,
    auth: Authenticator,
    guard: PromptGuard,
    admission: Admission,
) -> AppState:
    """The routes' shared state; each resource it opens is closed by ``resources``."""
    used_engine = (
        engine
        if engine is not None
        else build_engine(
            settings.engine,
            settings.upstream,
            metrics,
            worker_nice=settings.server.worker_nice,
            malloc_mmap_threshold_bytes=settings.media.malloc_mmap_threshold_bytes,
            obs=settings.obs,
        )
    )
    resources.push_async_callback(used_engine.stop)
    metrics.set_info(version=__version__, engine=settings.engine.kind, model=used_engine.model_name)
    redis = RedisPools(settings.redis)
    resources.push_async_callback(redis.aclose)  # after every store that uses it
    cache = _result_cache(settings, metrics, redis)
    if cache is not None:
        resources.push_async_callback(cache.close)
    fetch_client = create_fetch_client(settings.media)
    resources.push_async_callback(fetch_client.aclose)
    guard_url = settings.redis_url_for("guard")
    limit_store, quota_store = None, None
    if guard_url is not None:
        limit_store = RedisRateLimitStore(
            redis.connect(guard_url), on_failure=metrics.store_failures.labels(store="rate_limit").inc
        )
        quota_store = RedisQuotaStore(
            redis.connect(guard_url), on_failure=metrics.store_failures.labels(store="quota").inc
        )
    quota = QuotaTracker(settings.guard, quota_store)
    return AppState(
        settings=settings,
        engine=used_engine,
        intake=ImageIntake(settings.media, fetch_client),
        metrics=metrics,
        service=GenerationService(
            used_engine,
            cache,
            settings.cache,
            metrics,
            guard=guard,
            guard_mode=settings.guard.prompt_guard,
            quota=quota,
            answer_settings=settings.engine.answer_defaults,
        ),
        auth=auth,
        limiter=RateLimiter(settings.guard, limit_store),
        quota=quota,
        guard=guard,
        admission=admission,
        model_aliases=frozenset({used_engine.model_name, settings.engine.model}),
    )


def create_app(
    settings: Settings,
    engine: Engine | None = None,
    on_fatal: FatalHandler | None = None,
    on_ready: ReadyHandler | None = None,
) -> FastAPI:
    """The whole service. ``engine`` may be injected (tests); otherwise built from settings.

    ``on_fatal`` is told when the engine cannot start, ``on_ready`` once it has started: the
    process that runs the server decides what to do then (``cli`` stops, and freezes the heap).
    """
    metrics = Metrics()
    audit = AuditLog(
        settings.guard, on_failure=lambda reason: metrics.audit_failures.labels(reason=reason).inc()
    )
    auth = Authenticator(settings.guard)
    guard = PromptGuard(settings.guard)
    admission = Admission(settings)
    if not auth.auth_enabled and not is_loopback(settings.server.host):
        logger.warning(
            "SECURITY: listening on %s with no API keys or JWT configured: anyone who can reach this "
            "address can use the model. Set GLIMPSE_GUARD__API_KEYS or GLIMPSE_GUARD__JWT_SECRET.",
            settings.server.host,
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Every resource is closed through one stack, last opened first closed, each even
        # when closing another failed: an engine that fails to stop leaks nothing else.
        async with contextlib.AsyncExitStack() as resources:
            resources.push_async_callback(audit.aclose)
            state = _open_state(resources, settings, engine, metrics, auth, guard, admission)
            app.state.glimpse = state
            starting = asyncio.create_task(_start_engine(state.engine, state, on_fatal, on_ready))
            resources.push_async_callback(_cancel, starting)
            if settings.batch.enabled:
                await _start_batches(resources, state, audit)
            resources.callback(state.start_draining)  # first of all: refuse new work, then stop
            yield

    app = GlimpseApp(
        title="Glimpse",
        version=__version__,
        description="Ask questions about images: an OpenAI-compatible vision-language model server.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(openai_router)
    app.include_router(infer_router)
    app.include_router(lora_router)
    if settings.batch.enabled:
        app.include_router(batch_router)
    if settings.obs.metrics_enabled:
        _add_metrics_route(app)
    if settings.server.web_enabled:
        _mount_web(app)
    # Outermost last: observer, CORS, security headers, admission, body limit, routes.
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.server.max_body_bytes,
        read_timeout_s=settings.server.body_timeout_s,
        route_limits=admission.body_limits(),
    )
    app.add_middleware(
        AdmissionMiddleware, admission=admission, app_state=lambda: getattr(app.state, "glimpse", None)
    )
    app.add_middleware(SecurityHeadersMiddleware)
    if settings.guard.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.guard.cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key", "X-Request-ID", "Cache-Control"],
            expose_headers=["X-Request-ID", "X-Glimpse-Cache", "Retry-After"],
            max_age=600,
        )
    app.add_middleware(RequestObserverMiddleware, metrics=metrics, audit=audit)
    app.shedder = LoadShedder(
        admission,
        metrics,
        lambda: getattr(app.state, "glimpse", None),
        cors=bool(settings.guard.cors_origins),
    )
    return app
