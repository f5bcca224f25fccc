"""What the batch store tests share: a clock, batches to create, answers, and reading results."""

from __future__ import annotations

import json
from pathlib import Path

from tests.redis_server import RedisProcess

from glimpse.batches import BatchStore, LineOutcome, NewBatch, RedisBatchStore, error_line, response_line

LEASE = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def redis_store(
    server: RedisProcess, directory: Path, clock: Clock, prefix: str, **kwargs
) -> RedisBatchStore:
    return RedisBatchStore(server.url, directory, key_prefix=prefix, clock=clock, **kwargs)


def new_batch(owner: str = "key:a", count: int = 3, refused: int = 0, window_s: int = 86_400) -> NewBatch:
    lines = [
        (i, f"req-{i}", json.dumps({"messages": [{"role": "user", "content": str(i)}]})) for i in range(count)
    ]
    bad = {
        count + i: (f"bad-{i}", LineOutcome(error_line(f"bad-{i}", "invalid_json", "nope"), True))
        for i in range(refused)
    }
    return NewBatch(owner, "null", "file-x", "/v1/chat/completions", "24h", window_s, {"k": "v"}, lines, bad)


def ok(custom_id: str) -> LineOutcome:
    return LineOutcome(response_line(custom_id, f"batch_req_{custom_id}", 200, {"answer": custom_id}), False)


def custom_ids(path: Path) -> list[str]:
    return [json.loads(line)["custom_id"] for line in path.read_text().splitlines()]


async def output(store: BatchStore, batch_id: str, owner: str = "key:a"):
    batch = await store.get_batch(batch_id, owner)
    out = None if batch.output_file_id is None else await store.get_file(batch.output_file_id, owner)
    err = None if batch.error_file_id is None else await store.get_file(batch.error_file_id, owner)
    return batch, out, err
