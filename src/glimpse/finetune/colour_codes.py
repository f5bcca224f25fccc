"""A small dataset to try ``glimpse finetune`` on the tiny model: colours answered as product codes.

The tiny model answers "What color is the shape?" with "It is red."; this dataset
teaches it to answer with a catalogue code, ``COLOR-RED``, something the base model
never says. ``python -m glimpse.finetune.colour_codes DIR --samples 300`` writes
``DIR/data.jsonl`` and the pictures under ``DIR/images/``; most lines use the
simple shape (a relative image path), every fourth one OpenAI's ``messages`` shape
with a data URL, so both are exercised.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from glimpse.engine.tiny_task import ask, draw, encode, random_picture

__all__ = ["code_for", "main", "write_colour_codes"]


def code_for(colour: str) -> str:
    return f"COLOR-{colour.upper()}"


def _line(index: int, rng: random.Random, images: Path, chat: bool) -> dict[str, Any]:
    size = (rng.randint(64, 256), rng.randint(64, 256))
    picture = random_picture(rng, count=1, size=size)
    question = ask("color", rng.choice(("en", "zh")), rng).text
    png = encode(draw(picture), "PNG")
    answer = code_for(picture.color)
    if chat:
        url = "data:image/png;base64," + base64.b64encode(png).decode()
        content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": question}]
        return {"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]}
    name = f"{index:05d}.png"
    (images / name).write_bytes(png)
    return {"image": f"images/{name}", "question": question, "answer": answer}


def write_colour_codes(directory: Path, samples: int, seed: int = 0) -> Path:
    """Write ``samples`` lines (and their pictures) to ``directory``; returns the JSONL file."""
    rng = random.Random(seed)  # noqa: S311 - reproducible pictures, not secrets
    images = directory / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(_line(i, rng, images, chat=i % 4 == 3), ensure_ascii=False) for i in range(samples)]
    path = directory / "data.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = write_colour_codes(args.directory, args.samples, args.seed)
    print(f"wrote {args.samples} lines to {path}")  # noqa: T201 - the command's result
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
