"""What the routes share, built once in the app's lifespan and passed by dependency."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from glimpse.api.service import GenerationService
from glimpse.config import Settings
from glimpse.engine.protocol import Engine
from glimpse.errors import ModelNotFound
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
    draining: bool = False  # only /readyz reads it: a request that arrived is always served
    load_error: str | None = None
    model_aliases: frozenset[str] = field(default_factory=frozenset)

    def check_model(self, requested: str | None) -> None:
        """Accept no model, the served name, or the model argument it was started with."""
        if requested is None or requested in self.model_aliases:
            return
        raise ModelNotFound(
            f"The model '{requested}' is not served here; this server serves '{self.engine.model_name}'.",
            param="model",
        )


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.glimpse
    return state


StateDep = Annotated[AppState, Depends(get_state)]
