"""The benchmarks' token sinks take what the scheduler passes them.

Three benchmarks once crashed minutes into a run because their sinks lacked the
``logprobs`` argument the scheduler had gained (mypy does not check ``bench/``).
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path

import pytest

from glimpse.engine.batching.interface import TokenSink

ROOT = Path(__file__).resolve().parents[2]
WITH_SINKS = sorted(
    p for p in [*ROOT.glob("bench/*.py"), *ROOT.glob("scripts/*.py")] if "def on_token(" in p.read_text()
)


def _sinks(path: Path) -> list[type]:
    spec = importlib.util.spec_from_file_location(f"_sinks_{path.stem}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return [c for c in vars(module).values() if inspect.isclass(c) and "on_token" in vars(c)]


def test_the_benchmarks_with_sinks_are_found():
    assert {"engine_v2.py", "prefix_cache.py", "lora.py"} <= {p.name for p in WITH_SINKS}


@pytest.mark.parametrize("path", WITH_SINKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_each_sink_takes_every_argument_the_scheduler_passes(path):
    sinks = _sinks(path)
    assert sinks, path
    for method in ("on_token", "on_finish", "on_error"):
        wanted = len(inspect.signature(getattr(TokenSink, method)).parameters) - 1  # all but self
        for sink in sinks:
            inspect.signature(getattr(sink, method)).bind(None, *(object() for _ in range(wanted)))
