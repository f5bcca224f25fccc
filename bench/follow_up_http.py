"""Over HTTP, a follow-up's time to first token against the first question's, prefix cache on and off.

Usage: python bench/follow_up_http.py [--conversations 6] [--size 1024x768] [--json FILE]
       python bench/follow_up_http.py --url http://host:8080   # one running server, as it is set up

What the web page does, turn by turn: a streaming chat completion with a picture and a
question, then the same conversation (the picture in the first user turn, the answer as the
assistant turn) with a second question. Each conversation has its own picture. The time to
first token is measured by the client (request sent to first text delta), for a server with
the prefix cache on and one with it off (``GLIMPSE_ENGINE__PREFIX_CACHE``), each serving the
random tiny model with GLM-4.6V's real image processor (a 1024 x 768 picture is 3,996 patches,
so its vision tower and prefill are most of a first token's time). Greedy; the result cache
is bypassed (``Cache-Control: no-cache``). Prints the median first-token time of each turn.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from overload import tiny_server  # noqa: E402 -- the benchmark's own server launcher


def _picture(index: int, size: tuple[int, int]) -> str:
    import random

    from glimpse.engine.tiny_task import draw, encode, random_picture

    picture = random_picture(random.Random(index), size=size)
    return "data:image/png;base64," + base64.b64encode(encode(draw(picture), "PNG")).decode()


def _stream(client: Any, messages: list[dict[str, Any]], max_tokens: int) -> tuple[float, str]:
    """(seconds to the first text delta, the whole answer) of one streaming chat completion."""
    model = client.headers.get("X-Bench-Model", "tiny")
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    started = time.perf_counter()
    first: float | None = None
    text = []
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            delta = json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
            if delta and first is None:
                first = time.perf_counter() - started
            text.append(delta)
    return (first if first is not None else time.perf_counter() - started), "".join(text)


def measure(url: str, conversations: int, size: tuple[int, int], max_tokens: int) -> dict[str, Any]:
    import httpx

    turn1, turn2, answers = [], [], []
    with httpx.Client(base_url=url, headers={"Cache-Control": "no-cache"}, timeout=300) as client:
        models = client.get("/v1/models").json().get("data") or [{"id": "tiny"}]
        client.headers["X-Bench-Model"] = models[0]["id"]
        _stream(client, [{"role": "user", "content": "hello"}], 2)  # warm-up
        for index in range(conversations):
            url_ = _picture(index, size)
            first_user = {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": url_}},
                    {"type": "text", "text": "Describe the image."},
                ],
            }
            seconds, answer = _stream(client, [first_user], max_tokens)
            turn1.append(seconds)
            history = [first_user, {"role": "assistant", "content": answer}]
            seconds, second = _stream(
                client, [*history, {"role": "user", "content": "What colour is it?"}], max_tokens
            )
            turn2.append(seconds)
            answers.append((answer, second))
    return {
        "turn1_ttft_median_s": round(statistics.median(turn1), 3),
        "turn2_ttft_median_s": round(statistics.median(turn2), 3),
        "turn1_ttft_s": [round(t, 3) for t in turn1],
        "turn2_ttft_s": [round(t, 3) for t in turn2],
        "answers": answers,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--conversations", type=int, default=6)
    parser.add_argument("--size", default="1024x768")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--url", help="measure this running server only (its own prefix-cache setting)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    size = tuple(int(x) for x in args.size.split("x"))
    if args.url:
        result = measure(args.url, args.conversations, (size[0], size[1]), args.max_tokens)
        result.pop("answers")
        sys.stdout.write(
            f"first question {result['turn1_ttft_median_s']} s, follow-up {result['turn2_ttft_median_s']} s "
            f"to the first token (medians of {args.conversations})\n"
        )
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        return 0
    from glimpse.engine.tiny_model import ensure_random_tiny_model

    model_dir = ensure_random_tiny_model(Path(tempfile.mkdtemp(prefix="glimpse-follow-")) / "tiny")
    report: dict[str, Any] = {}
    for mode in ("off", "on"):
        env = {
            "GLIMPSE_ENGINE__TINY_MODEL_DIR": str(model_dir),
            "GLIMPSE_OBS__LOG_LEVEL": "WARNING",
            "GLIMPSE_ENGINE__PREFIX_CACHE": "true" if mode == "on" else "false",
        }
        with tiny_server(env) as url:
            report[mode] = measure(url, args.conversations, (size[0], size[1]), args.max_tokens)
    same = report["off"].pop("answers") == report["on"].pop("answers")
    report["answers_identical"] = same
    for mode in ("off", "on"):
        r = report[mode]
        sys.stdout.write(
            f"prefix cache {mode}: first question {r['turn1_ttft_median_s']} s, follow-up "
            f"{r['turn2_ttft_median_s']} s to the first token (medians of {args.conversations})\n"
        )
    sys.stdout.write(f"answers {'identical' if same else 'DIFFER'} with the cache on and off\n")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
