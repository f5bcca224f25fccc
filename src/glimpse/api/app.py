"""Build the FastAPI application from a ``Settings`` object."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from importlib import resources
from pathlib import Path

import httpx
from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from glimpse import __version__
from glimpse.api import health
from glimpse.api.errors import install_error_handlers
from glimpse.api.infer.router import router as infer_router
from glimpse.api.middleware import BodyLimitMiddleware, RequestIdMiddleware
from glimpse.api.openai.router import router as openai_router
from glimpse.api.state import AppState
from glimpse.config import Settings
from glimpse.engine.factory import build_engine
from glimpse.engine.protocol import Engine
from glimpse.errors import GlimpseError
from glimpse.media import ImageIntake

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

FatalHandler = Callable[[BaseException], None]


async def _start_engine(engine: Engine, state: AppState, on_fatal: FatalHandler | None) -> None:
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


def _web_dir() -> Path:
    return Path(str(resources.files("glimpse") / "web" / "static"))


def _mount_web(app: FastAPI) -> None:
    static = _web_dir()
    index = static / "index.html"
    if not index.is_file():
        return
    app.mount("/static", StaticFiles(directory=static), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(index, headers={"Cache-Control": "no-cache"})


def create_app(
    settings: Settings,
    engine: Engine | None = None,
    on_fatal: FatalHandler | None = None,
) -> FastAPI:
    """The whole service. ``engine`` may be injected (tests); otherwise built from settings."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        timeout = httpx.Timeout(settings.media.fetch_timeout_s)
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as http:
            used_engine = engine if engine is not None else build_engine(settings.engine)
            aliases = {used_engine.model_name, settings.engine.model}
            state = AppState(
                settings=settings,
                engine=used_engine,
                intake=ImageIntake(settings.media, http),
                model_aliases=frozenset(aliases),
            )
            app.state.glimpse = state
            starting = asyncio.create_task(_start_engine(used_engine, state, on_fatal))
            try:
                yield
            finally:
                state.draining = True
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
                await used_engine.stop()

    app = FastAPI(
        title="Glimpse",
        version=__version__,
        description="Ask questions about images: an OpenAI-compatible vision-language model server.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(openai_router)
    app.include_router(infer_router)
    if settings.server.web_enabled:
        _mount_web(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.server.max_body_bytes)
    app.add_middleware(RequestIdMiddleware)
    return app
