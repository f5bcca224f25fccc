"""The in-process engine run in a process of its own (``GLIMPSE_ENGINE__PROCESS``)."""

from glimpse.engine.process.client import EngineProcess

__all__ = ["EngineProcess"]
