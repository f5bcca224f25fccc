"""Images that misbehave inside a preprocessing worker process.

They live in an importable module (not a test file) because a spawned worker
unpickles them by name. Each pickles as an ordinary PIL image of its class.
"""

from __future__ import annotations

import time
from typing import Any

from PIL import Image


class StopIterationImage(Image.Image):
    """An RGBA image whose conversion to RGB (the processor's first step) raises ``StopIteration``."""

    def convert(self, *args: Any, **kwargs: Any) -> Image.Image:
        raise StopIteration


class SleepingImage(Image.Image):
    """An RGB image that takes ``SLEEP_S`` to unpickle: the worker holds it that long before processing."""

    SLEEP_S = 5.0

    def __setstate__(self, state: Any) -> None:
        time.sleep(self.SLEEP_S)
        super().__setstate__(state)


def stop_iteration_image() -> StopIterationImage:
    return _as(StopIterationImage, Image.new("RGBA", (64, 48), (10, 200, 30, 255)))


def sleeping_image() -> SleepingImage:
    return _as(SleepingImage, Image.new("RGB", (64, 48), (200, 40, 90)))


def _as(cls: type[Any], image: Image.Image) -> Any:
    """``image`` as an instance of ``cls`` (PIL builds images through factories, not constructors)."""
    out = cls()
    Image.Image.__setstate__(out, image.__getstate__())
    return out
