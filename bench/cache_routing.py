"""Prefix-cache hit ratio behind the upstream engine: cache-aware vs least-outstanding routing (issue 16).

Usage:
    python bench/cache_routing.py [--conversations 40] [--turns 3] [--concurrency 8] [--margin 8]

The real ``UpstreamEngine`` (balancer, health checks, relay) sends a multi-turn conversation
workload to two fake OpenAI-compatible upstreams in this process (an ``httpx.MockTransport``,
no sockets). Each fake stands in for a server's prefix cache: it remembers the opening of
every conversation it served (system prompt + first user turn; with an image in that turn,
up to and including the image, by its bytes) and counts a request as a hit when its opening
was served by that upstream before. A fake takes
``--hit-ms`` to answer a hit and ``--miss-ms`` a miss (prefill saved or not), each varied at
random by up to ``--jitter`` (0.5: +-50%), so the number of requests in flight per upstream,
which both policies read, varies as it would; without jitter, least-outstanding's round-robin
falls into lockstep with the workers and sends each conversation to one upstream by accident.

``--conversations`` conversations of ``--turns`` turns each, ``--concurrency`` at a time
(a conversation's turns in order, each after the previous answer), with ``--images``
distinct images shared among the conversations' first turns (0: text only). ``--upstreams`` (default 2) fakes
keep ``--prefixes`` openings each (least recently used out; default 0: all). The same
workload runs once per policy, in one run, and prints the hit ratio (the first turn of a
conversation about a new opening can never hit, so the best possible is printed too),
the split of requests over the upstreams and the routing decisions.

Fakes, not real servers: Glimpse nodes have no prefix KV cache yet (issue 16 builds it
next), so two real nodes would report no hits under either policy.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import random
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator
from typing import Any

import httpx
from PIL import Image

from glimpse.config import EngineSettings, UpstreamSettings
from glimpse.engine.protocol import (
    ChatMessage,
    ContentPart,
    GenerationRequest,
    ImagePart,
    SamplingParams,
    TextPart,
)
from glimpse.engine.upstream import UpstreamEngine


def _opening(messages: list[dict[str, Any]]) -> str:
    """The part of a chat body that a server's prefix cache keeps for the next request to reuse.

    The system turns and the first user turn; if that turn has an image, only up to and including
    the image (image tokens are most of such a prompt, and any question about the image shares them).
    """
    opening: list[Any] = []
    for message in messages:
        content = message["content"]
        if message["role"] == "user" and isinstance(content, list):
            kinds = [part["type"] for part in content]
            if "image_url" in kinds:
                content = content[: kinds.index("image_url") + 1]
        opening.append((message["role"], content))
        if message["role"] == "user":
            break
    return hashlib.sha256(json.dumps(opening, sort_keys=True).encode()).hexdigest()


class _Stream(httpx.AsyncByteStream):
    def __init__(self, delay_s: float, text: str) -> None:
        self._delay_s = delay_s
        self._text = text

    async def __aiter__(self) -> AsyncIterator[bytes]:
        await asyncio.sleep(self._delay_s)
        for delta, finish in (({"content": self._text}, None), ({}, "stop")):
            chunk = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"


class FakeServer:
    """One upstream and its prefix set."""

    def __init__(self, hit_s: float, miss_s: float, capacity: int, rng: random.Random, jitter: float) -> None:
        #: Openings served, least recently used first (a real prefix cache is bounded too).
        self.prefixes: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity
        self.hits = 0
        self.requests = 0
        self._hit_s, self._miss_s = hit_s, miss_s
        self._rng, self._jitter = rng, jitter

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/health":
            return httpx.Response(200)
        if path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": "m", "object": "model"}]})
        body = json.loads(request.content)
        key = _opening(body["messages"])
        hit = key in self.prefixes
        self.prefixes[key] = None
        self.prefixes.move_to_end(key)
        if self._capacity and len(self.prefixes) > self._capacity:
            self.prefixes.popitem(last=False)
        self.requests += 1
        self.hits += hit
        delay = (self._hit_s if hit else self._miss_s) * self._rng.uniform(1 - self._jitter, 1 + self._jitter)
        stream = _Stream(delay, "ok")
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=stream)


def _images(count: int) -> list[ImagePart]:
    rng = random.Random(0)
    parts = []
    for _ in range(count):
        image = Image.new("RGB", (32, 32), tuple(rng.randrange(256) for _ in range(3)))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        parts.append(ImagePart(image, hashlib.sha256(buffer.getvalue()).hexdigest()))
    return parts


def _turn(index: int, turn: int, images: list[ImagePart], history: list[ChatMessage]) -> list[ChatMessage]:
    if turn == 0:
        content: tuple[ContentPart, ...] = (TextPart(f"Conversation {index}: what do you see?"),)
        if images:
            content = (images[index % len(images)], *content)
        return [
            ChatMessage("system", (TextPart("You are a careful assistant."),)),
            ChatMessage("user", content),
        ]
    return [
        *history,
        ChatMessage("assistant", (TextPart("ok"),)),
        ChatMessage("user", (TextPart(f"turn {turn}?"),)),
    ]


async def _run(policy: str, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)  # the same draws for both policies
    servers = {
        chr(ord("a") + i): FakeServer(
            args.hit_ms / 1000, args.miss_ms / 1000, args.prefixes, rng, args.jitter
        )
        for i in range(args.upstreams)
    }
    transport = httpx.MockTransport(lambda request: servers[request.url.host].handle(request))
    routes: Counter[str] = Counter()

    class Hook:
        def on_request(self, upstream: str, outcome: str, seconds: float) -> None:
            return None

        def set_in_flight(self, upstream: str, count: int) -> None:
            return None

        def set_healthy(self, upstream: str, healthy: bool) -> None:
            return None

        def on_route(self, outcome: str) -> None:
            routes[outcome] += 1

    options = UpstreamSettings(
        urls=tuple(f"http://{host}:8000" for host in servers),
        health_interval_s=3600,
        routing_policy=policy,  # type: ignore[arg-type]
        routing_load_margin=args.margin,
    )
    async with httpx.AsyncClient(transport=transport) as client:
        engine = UpstreamEngine(
            EngineSettings(kind="upstream", model="m"), options, http_client=client, metrics_hook=Hook()
        )
        await engine.start()
        images = _images(args.images)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for index in range(args.conversations):
            queue.put_nowait(index)

        async def worker() -> None:
            while not queue.empty():
                index = queue.get_nowait()
                history: list[ChatMessage] = []
                for turn in range(args.turns):
                    history = _turn(index, turn, images, history)
                    request = GenerationRequest(
                        f"{policy}-{index}-{turn}", tuple(history), SamplingParams(max_new_tokens=4)
                    )
                    async for _ in engine.submit(request):
                        pass

        try:
            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        finally:
            await engine.stop()
    requests = sum(s.requests for s in servers.values())
    hits = sum(s.hits for s in servers.values())
    return {
        "policy": policy,
        "requests": requests,
        "hit_ratio": hits / requests,
        "split": {host: s.requests for host, s in servers.items()},
        "routes": dict(routes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--conversations", type=int, default=40)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--images", type=int, default=0, help="distinct images in first turns (0: text only)")
    parser.add_argument("--upstreams", type=int, default=2)
    parser.add_argument("--prefixes", type=int, default=0, help="openings each fake keeps, LRU (0: all)")
    parser.add_argument("--margin", type=float, default=8, help="routing_load_margin")
    parser.add_argument("--hit-ms", type=float, default=10)
    parser.add_argument("--miss-ms", type=float, default=40)
    parser.add_argument("--jitter", type=float, default=0.5, help="answer times vary by up to this share")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    results = [asyncio.run(_run(policy, args)) for policy in ("cache_aware", "least_outstanding")]
    openings = min(args.images, args.conversations) if args.images else args.conversations
    best = 1 - openings / (args.conversations * args.turns)
    print(  # noqa: T201
        f"{args.conversations} conversations x {args.turns} turns, concurrency {args.concurrency}, "
        f"{args.upstreams} fake upstreams keeping {args.prefixes or 'all'} openings, margin {args.margin:g}; "
        f"best possible hit ratio {best:.3f}"
    )
    for r in results:
        print(  # noqa: T201
            f"{r['policy']:>18}: hit ratio {r['hit_ratio']:.3f} over {r['requests']} requests; "
            f"split {r['split']}; decisions {r['routes'] or '-'}"
        )
    ratio = results[0]["hit_ratio"] / max(results[1]["hit_ratio"], 1e-9)
    print(f"cache-aware / least-outstanding hit ratio: {ratio:.2f}x")  # noqa: T201
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "best": best, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
