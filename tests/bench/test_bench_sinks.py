"""The benchmarks' token sinks and batch observers take what the scheduler passes them.

Four benchmarks once crashed (three minutes into a run) because their sinks lacked the
``logprobs`` argument the scheduler had gained, or their observer a report added to the
protocol (mypy does not check ``bench/``).
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path

import pytest

from glimpse.engine.batching.interface import BatchObserver, TokenSink

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = [*ROOT.glob("bench/*.py"), *ROOT.glob("scripts/*.py")]
WITH_SINKS = sorted(p for p in SCRIPTS if "def on_token(" in p.read_text())
WITH_OBSERVERS = sorted(p for p in SCRIPTS if "def on_decode_step(" in p.read_text())


def _classes_with(path: Path, method: str) -> list[type]:
    spec = importlib.util.spec_from_file_location(f"_sinks_{path.stem}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return [c for c in vars(module).values() if inspect.isclass(c) and method in vars(c)]


def test_the_benchmarks_with_sinks_are_found():
    assert {"engine_v2.py", "prefix_cache.py", "lora.py"} <= {p.name for p in WITH_SINKS}


@pytest.mark.parametrize("path", WITH_SINKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_each_sink_takes_every_argument_the_scheduler_passes(path):
    _check(_classes_with(path, "on_token"), TokenSink)


def test_the_benchmarks_with_observers_are_found():
    assert "preprocess_overlap.py" in {p.name for p in WITH_OBSERVERS}


@pytest.mark.parametrize("path", WITH_OBSERVERS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_each_observer_takes_every_report_of_the_protocol(path):
    _check(_classes_with(path, "on_decode_step"), BatchObserver)


def _check(classes: list[type], protocol: type) -> None:
    assert classes
    methods = [name for name in vars(protocol) if name.startswith("on_")]
    for cls in classes:
        for method in methods:
            wanted = len(inspect.signature(getattr(protocol, method)).parameters) - 1  # all but self
            inspect.signature(getattr(cls, method)).bind(None, *(object() for _ in range(wanted)))
