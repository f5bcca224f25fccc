"""Two real Glimpse nodes behind a Glimpse gateway: their prefix-cache hit ratio by routing policy.

Usage: python bench/cache_routing_nodes.py [--conversations 12] [--concurrency 4] [--json FILE]

For each routing policy (``least_outstanding``, then ``cache_aware``), two fresh nodes serve
the random tiny model with its real image processor (prefix cache on), and a gateway
(``--engine upstream``) fans out to them. A 3-turn conversation workload runs through the
gateway: every conversation has its own picture (448 x 336), each turn is sent when the
previous one answered (the whole history, the picture in the first user turn, as the web page
and chat clients send it), ``--concurrency`` conversations at a time, greedy, 12 answer
tokens, the result cache bypassed. The hit ratio is read from the nodes' own ``/metrics``:
prompt tokens found in their prefix caches over prompt tokens looked up, summed over both
nodes. Later turns can only hit on the node that served the conversation before.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from overload import tiny_server  # noqa: E402 -- the benchmark's own server launcher

QUESTIONS = ("Describe the image.", "What colour is it?", "Where is it?")


def _picture(index: int) -> str:
    from glimpse.engine.tiny_task import draw, encode, random_picture

    picture = random_picture(random.Random(1000 + index), size=(448, 336))
    return "data:image/png;base64," + base64.b64encode(encode(draw(picture), "PNG")).decode()


def _conversation(url: str, index: int) -> None:
    import httpx

    with httpx.Client(base_url=url, headers={"Cache-Control": "no-cache"}, timeout=300) as client:
        messages: list[dict[str, Any]] = []
        for turn, question in enumerate(QUESTIONS):
            content: list[dict[str, Any]] = [{"type": "text", "text": question}]
            if turn == 0:
                content.insert(0, {"type": "image_url", "image_url": {"url": _picture(index)}})
            messages.append({"role": "user", "content": content})
            body = {"model": "tiny", "messages": messages, "max_tokens": 12, "temperature": 0}
            response = client.post("/v1/chat/completions", json=body)
            response.raise_for_status()
            messages.append(
                {"role": "assistant", "content": response.json()["choices"][0]["message"]["content"]}
            )


def _counter(metrics: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(name + " "))


def run(policy: str, model_dir: Path, conversations: int, concurrency: int) -> dict[str, Any]:
    import httpx

    node_env = {"GLIMPSE_ENGINE__TINY_MODEL_DIR": str(model_dir), "GLIMPSE_OBS__LOG_LEVEL": "WARNING"}
    with tiny_server(node_env) as a, tiny_server(node_env) as b:
        gateway_env = {
            "GLIMPSE_ENGINE__KIND": "upstream",
            "GLIMPSE_UPSTREAM__URLS": json.dumps([a, b]),
            "GLIMPSE_UPSTREAM__ROUTING_POLICY": policy,
            "GLIMPSE_OBS__LOG_LEVEL": "WARNING",
        }
        with tiny_server(gateway_env) as gateway, ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(lambda i: _conversation(gateway, i), range(conversations)))
        queried = hit = 0.0
        per_node = []
        for node in (a, b):
            text = httpx.get(f"{node}/metrics", timeout=10).text
            q = _counter(text, "glimpse_prefix_cache_queried_tokens_total")
            h = _counter(text, "glimpse_prefix_cache_hit_tokens_total")
            queried, hit = queried + q, hit + h
            per_node.append({"queried_tokens": int(q), "hit_tokens": int(h)})
    return {"hit_ratio": round(hit / queried, 3) if queried else 0.0, "nodes": per_node}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--conversations", type=int, default=12)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from glimpse.engine.tiny_model import ensure_random_tiny_model

    model_dir = ensure_random_tiny_model(Path(tempfile.mkdtemp(prefix="glimpse-routing-")) / "tiny")
    report = {
        policy: run(policy, model_dir, args.conversations, args.concurrency)
        for policy in ("least_outstanding", "cache_aware")
    }
    for policy, result in report.items():
        nodes = ", ".join(f"{n['hit_tokens']}/{n['queried_tokens']}" for n in result["nodes"])
        sys.stdout.write(
            f"{policy}: prefix-cache hit ratio {result['hit_ratio']} (hit/queried tokens per node: {nodes})\n"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
