"""Pick the engine the settings ask for."""

from __future__ import annotations

from glimpse.config import EngineSettings
from glimpse.engine.protocol import Engine

__all__ = ["build_engine"]


def build_engine(settings: EngineSettings) -> Engine:
    if settings.kind == "upstream":
        from glimpse.engine.upstream import UpstreamEngine

        return UpstreamEngine(settings)
    from glimpse.engine.hf import HFEngine

    return HFEngine(settings)
