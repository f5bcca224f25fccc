"""Over HTTP, do 24 concurrent requests finish faster than the same 24 one at a time, with the same answers?

Usage:
    python bench/http_concurrency.py                 # starts `glimpse serve --model tiny` itself
    python bench/http_concurrency.py --model random  # only one of the two tiny models
    python bench/http_concurrency.py --url http://host:8080 [--api-key KEY]

Two servers in turn, continuous batching on, each serving one tiny model:

- ``shipped``: what ``--model tiny`` serves, the trained tiny model; its image processor
  resizes every picture to at most 8,192 pixels (at most 32 image tokens). Its answers are
  short, so requests set ``ignore_eos`` to really produce their ``max_tokens``.
- ``random``: the random-weight tiny model (``glimpse make-tiny-model``) with GLM-4.6V's real
  image processor: a 1024 x 768 picture is 3,996 patches, and on this CPU its vision tower
  (attention over every patch pair) is most of the engine thread's work; batching cannot
  share that work, so this is the vision-bound case.

Requests: chat completions with one image each (sizes from 64 x 64 to 1024 x 768, PNG, JPEG
and WebP), greedy, ``max_tokens`` from 4 to 40, the result cache bypassed
(``Cache-Control: no-cache``). They are sent one at a time, then all at once; the figure is
the ratio of the two wall times (goal, issue 15: >= 2x), and every concurrent answer must equal
its one-at-a-time answer. Exits 1 when any model misses the goal or an answer differs.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from overload import tiny_server  # noqa: E402 -- the benchmark's own server launcher

SPEEDUP_GOAL = 2.0
SIZES = [(64, 64), (1024, 768), (97, 300), (640, 200), (300, 300), (128, 96), (500, 700), (800, 240)]


def requests(n: int, seed: int, *, ignore_eos: bool = False) -> list[dict[str, Any]]:
    """``n`` chat bodies: a drawn picture each, mixed sizes and formats, 4 to 40 output tokens."""
    from glimpse.engine.tiny_task import ask, draw, encode, random_picture

    rng = random.Random(seed)
    bodies = []
    for i in range(n):
        picture = random_picture(rng, size=SIZES[i % len(SIZES)])
        fmt, mime = [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")][i % 3]
        raw = encode(draw(picture), fmt, 85)
        url = f"data:{mime};base64," + base64.b64encode(raw).decode()
        question = ask(
            rng.choice(["color", "shape", "count", "describe"]), rng.choice(["en", "zh"]), rng
        ).text
        content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": question}]
        bodies.append(
            {
                "model": "tiny",
                "messages": [{"role": "user", "content": content}],
                "max_tokens": 4 + (36 * i) // max(1, n - 1),
                "temperature": 0,
                **({"ignore_eos": True} if ignore_eos else {}),
            }
        )
    return bodies


def measure(url: str, bodies: list[dict[str, Any]], api_key: str | None) -> dict[str, Any]:
    import httpx

    headers = {"Cache-Control": "no-cache"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    with httpx.Client(base_url=url, headers=headers, timeout=600) as client:

        def one(body: dict[str, Any]) -> tuple[str, int]:
            response = client.post("/v1/chat/completions", json=body)
            response.raise_for_status()
            payload = response.json()
            return payload["choices"][0]["message"]["content"], payload["usage"]["completion_tokens"]

        one(bodies[0])  # warm-up, not timed
        started = time.perf_counter()
        alone = [one(body) for body in bodies]
        sequential_s = time.perf_counter() - started
        started = time.perf_counter()
        with ThreadPoolExecutor(len(bodies)) as pool:
            together = list(pool.map(one, bodies))
        concurrent_s = time.perf_counter() - started
    differ = [i for i, (a, b) in enumerate(zip(alone, together, strict=True)) if a != b]
    return {
        "requests": len(bodies),
        "output_tokens": sum(tokens for _, tokens in alone),
        "sequential_s": round(sequential_s, 2),
        "concurrent_s": round(concurrent_s, 2),
        "speedup": round(sequential_s / concurrent_s, 2),
        "answers_differ": differ,
    }


def _serve_and_measure(model: str, bodies: list[dict[str, Any]]) -> dict[str, Any]:
    env = {
        "GLIMPSE_OBS__LOG_LEVEL": "WARNING",
        # Both phases send the same 24 requests: with the engine's caches the second would skip
        # the prefill and the vision tower that the first paid (the result cache is bypassed per
        # request).
        "GLIMPSE_ENGINE__PREFIX_CACHE": "false",
        "GLIMPSE_ENGINE__IMAGE_EMBEDDING_CACHE_MB": "0",
    }
    if model == "random":
        from glimpse.engine.tiny_model import ensure_random_tiny_model

        model_dir = ensure_random_tiny_model(Path(tempfile.mkdtemp(prefix="glimpse-http-")) / "tiny")
        env["GLIMPSE_ENGINE__TINY_MODEL_DIR"] = str(model_dir)
    with tiny_server(env) as url:
        return measure(url, bodies, None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="A running server (default: start `glimpse serve --model tiny`).")
    parser.add_argument("--api-key")
    parser.add_argument(
        "--model",
        choices=["shipped", "random", "both"],
        default="both",
        help="Which tiny model the started servers serve (default: both, one after the other).",
    )
    parser.add_argument("--ignore-eos", action="store_true", help="With --url: requests set ignore_eos.")
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    args = parser.parse_args(argv)
    results: dict[str, dict[str, Any]] = {}
    if args.url:
        bodies = requests(args.requests, args.seed, ignore_eos=args.ignore_eos)
        results["url"] = measure(args.url, bodies, args.api_key)
    else:
        for model in ("shipped", "random") if args.model == "both" else (args.model,):
            bodies = requests(args.requests, args.seed, ignore_eos=model == "shipped")
            results[model] = _serve_and_measure(model, bodies)
    ok = True
    for model, result in results.items():
        result["speedup_goal"] = SPEEDUP_GOAL
        differ = result["answers_differ"]
        result["pass"] = result["speedup"] >= SPEEDUP_GOAL and not differ
        ok = ok and result["pass"]
        sys.stdout.write(
            f"{model}: {result['requests']} requests, {result['output_tokens']} output tokens: one at a "
            f"time {result['sequential_s']} s, all at once {result['concurrent_s']} s -> "
            f"{result['speedup']}x (goal >= {SPEEDUP_GOAL}x) "
            f"{'PASS' if result['speedup'] >= SPEEDUP_GOAL else 'FAIL'}; "
            f"answers {'DIFFER at ' + str(differ) if differ else 'identical'}\n"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
