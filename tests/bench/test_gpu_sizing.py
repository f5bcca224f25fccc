"""bench/gpu_sizing.py, whose table the README's GPU sizing section shows: it runs, and its rows hold
together (an fp8 KV cache fits at least as many requests, more weights leave fewer)."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_sizing.py"


def _requests(cell: str) -> int:
    if cell == "does not load":
        return -1
    match = re.match(r"(\d+)(?: \(cap; room for (\d+)\))?$", cell)
    assert match, cell
    return int(match.group(2) or match.group(1))


def test_the_sizing_table_holds_together(capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["gpu_sizing.py"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "40 layers x 2 KV heads x 128 x 2 (K, V) x 2 bytes = 40,960 bytes" in out
    assert "a 1024² image: 1,369 tokens" in out
    rows = [
        line.strip("|").split(" | ") for line in out.splitlines() if line.startswith("| ") and "GB" in line
    ]
    assert len(rows) == 12
    by_card: dict[str, list[int]] = {}
    for card, _weights, _left, bf16_kv, fp8_kv in (row[:5] for row in rows):
        bf16, fp8 = _requests(bf16_kv.strip()), _requests(fp8_kv.strip())
        assert fp8 >= 2 * bf16 - 1 if bf16 > 0 else fp8 >= bf16
        by_card.setdefault(card.strip(), []).append(bf16)
    for card, (bf16, int8, int4) in by_card.items():
        assert bf16 <= int8 <= int4, card
    assert by_card[next(iter(by_card))][0] == -1  # 16 GB: bf16 weights alone do not fit
