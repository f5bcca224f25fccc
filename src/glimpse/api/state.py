"""What the routes share, built once in the app's lifespan and passed by dependency."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from glimpse.api.admission import Admission
from glimpse.api.service import GenerationService
from glimpse.batches import BatchStore
from glimpse.config import Settings
from glimpse.engine.protocol import AdapterServing, Engine
from glimpse.errors import ModelNotFound, NotReady
from glimpse.guard import Authenticator, PromptGuard, QuotaTracker, RateLimiter
from glimpse.media import ImageIntake
from glimpse.obs import Metrics

__all__ = ["AppState", "StateDep", "get_state"]


@dataclass(slots=True)
class AppState:
    settings: Settings
    engine: Engine
    intake: ImageIntake
    metrics: Metrics
    service: GenerationService
    auth: Authenticator
    limiter: RateLimiter
    quota: QuotaTracker
    guard: PromptGuard
    admission: Admission
    #: ``time.monotonic()`` when SIGTERM/SIGINT (or shutdown) started the drain.
    draining_since: float | None = None
    load_error: str | None = None
    model_aliases: frozenset[str] = field(default_factory=frozenset)
    #: The Batch API's files, batches and line queue (None: the Batch API is off).
    batch_store: BatchStore | None = None
    #: Tells the batch worker that new lines are queued (it looks on its own every poll interval).
    wake_batch_worker: Callable[[], None] = lambda: None

    @property
    def draining(self) -> bool:
        return self.draining_since is not None

    def start_draining(self) -> None:
        if self.draining_since is None:
            self.draining_since = time.monotonic()

    def refuse_if_draining(self, arrived_at: float | None) -> None:
        """Refuse a request that arrived after the drain began; serve every one that arrived before.

        Arrival is when the request entered the app (stamped by the request middleware),
        not when its route runs: a request still sending its body when SIGTERM comes was
        admitted, and is answered in full. Admission calls this from the headers.
        """
        if self.draining_since is None:
            return
        if arrived_at is None or arrived_at >= self.draining_since:
            raise NotReady("The server is shutting down; retry on another replica.", retry_after=1)

    def check_model(self, requested: str | None) -> str | None:
        """The LoRA adapter a request's ``model`` names; ``None`` for the base model (no model, the served
        name, or the model argument it was started with). Anything else: 404."""
        if requested is None or requested in self.model_aliases:
            return None
        engine = self.engine
        if isinstance(engine, AdapterServing) and engine.adapter(requested) is not None:
            return requested
        served = [self.engine.model_name]
        if isinstance(engine, AdapterServing):
            served += [adapter.name for adapter in engine.adapters()]
        raise ModelNotFound(
            f"The model '{requested}' is not served here; this server serves "
            + ", ".join(f"'{name}'" for name in served)
            + ".",
            param="model",
        )

    def answered_by(self, adapter: str | None) -> str:
        """The ``model`` an answer names: the adapter's name, else the served model's."""
        return adapter or self.engine.model_name


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.glimpse
    return state


StateDep = Annotated[AppState, Depends(get_state)]
