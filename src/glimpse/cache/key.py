"""Cache keys and the rule for which requests may be cached.

A key must change whenever anything that can change the answer changes, and
must not change for representations that mean the same thing (dict key order),
so it is a hash over canonical JSON rather than over Python ``repr``s.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

__all__ = ["KEY_VERSION", "cache_key", "is_cacheable"]

#: Bump when the key layout or the cached value's meaning changes, so old
#: entries in a shared Redis are never read by a newer replica.
KEY_VERSION = 4


def cache_key(
    model: str,
    image_hashes: Sequence[str],
    messages: object,
    settings: Mapping[str, object],
    partition: str = "",
) -> str:
    """SHA-256 (hex) over everything that determines the answer, and over who may reuse it.

    ``messages`` is any JSON-able structure (lists, dicts, str, numbers, bool,
    None) that fully describes the conversation, images by their hash. Values
    that JSON cannot represent exactly raise ``TypeError``/``ValueError``: a key
    that silently dropped information would serve wrong answers.

    ``partition`` names who may share the entry (a client id; ``""`` for everyone):
    a hit tells its caller that someone in the same partition asked exactly this
    before, so clients who must not learn of each other's questions get their own.
    """
    document = {
        "v": KEY_VERSION,
        "partition": partition,
        "model": model,
        "images": list(image_hashes),
        "messages": messages,
        "settings": dict(settings),
    }
    canonical = json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def is_cacheable(greedy: bool, seed: int | None, allow_sampled: bool = False) -> bool:
    """Only answers that would come out the same again are worth reusing.

    Greedy decoding (as the engine's ``SamplingParams.greedy`` decides; the cache
    keeps no rule of its own) and an explicit seed are reproducible; sampled answers
    are cached only when the operator says repeating one sample is acceptable.
    """
    return greedy or seed is not None or allow_sampled
