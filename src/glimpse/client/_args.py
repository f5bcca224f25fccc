"""argparse value types shared by the client commands."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["csv_floats", "csv_ints", "output_path", "positive_float", "positive_int"]


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


def output_path(text: str) -> Path:
    """A file to write later: checked now, so a typo fails before the work instead of after it."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a file")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"folder {path.parent} does not exist")
    return path


def csv_ints(text: str) -> list[int]:
    """``1,8,32`` -> ``[1, 8, 32]``; every item positive."""
    return [positive_int(part) for part in text.split(",") if part.strip()]


def csv_floats(text: str) -> list[float]:
    return [positive_float(part) for part in text.split(",") if part.strip()]
