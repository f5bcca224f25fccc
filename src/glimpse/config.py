"""Glimpse's one typed settings object.

Built once (from ``GLIMPSE_*`` environment variables, then CLI flags on top) and
passed down: each package receives only its own sub-model, and nothing else in
the code base reads the environment. Every field carries a description because
``glimpse settings`` and the README's settings table are generated from them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "AnswerDefaults",
    "BatchSettings",
    "CacheSettings",
    "EngineSettings",
    "GuardSettings",
    "MediaSettings",
    "MOVED_SETTINGS",
    "ObsSettings",
    "QueueSettings",
    "RedisSettings",
    "ServerSettings",
    "Settings",
    "UpstreamSettings",
    "DEFAULT_MODEL",
    "TINY_MODEL",
]

DEFAULT_MODEL = "zai-org/GLM-4.6V-Flash"
TINY_MODEL = "tiny"

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class ServerSettings(BaseModel):
    model_config = _FROZEN

    host: str = Field("127.0.0.1", description="Address to bind. Non-loopback without auth logs a warning.")
    port: int = Field(8080, ge=0, le=65535, description="TCP port to listen on (0 picks a free one).")
    max_body_bytes: int = Field(
        32 * 1024 * 1024, gt=0, description="Largest request body accepted, enforced while it streams in."
    )
    request_timeout_s: float = Field(
        300.0, gt=0, description="Longest a request may take end to end before it is cancelled (504)."
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="Longest a client may take to send its request body (else 408)."
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="Longest a connection may take to send a request's headers (else closed)."
    )
    graceful_timeout_s: float = Field(
        60.0, ge=0, description="On SIGTERM, how long admitted requests get to finish before exit."
    )
    worker_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="Niceness added to every thread of glimpse serve but the HTTP event loop's, and to its "
        "preprocessing processes (Linux), so the OS runs the loop first when the CPU is short; 0 leaves them "
        "all at one priority.",
    )
    switch_interval_ms: float = Field(
        0.5,
        gt=0,
        le=100,
        description="How long a thread may keep Python's interpreter lock while another waits (Python's "
        "default is 5): short, so the event loop answers between the engine's steps.",
    )
    web_enabled: bool = Field(True, description="Serve the web page at /.")
    allowed_hosts: tuple[str, ...] | None = Field(
        None,
        description="Host header names served (exact, or '*.suffix'; any port), others get 400; "
        "default: localhost, 127.0.0.1 and [::1] when bound to a loopback address (no DNS "
        "rebinding), any host otherwise.",
    )


class AnswerDefaults(BaseModel):
    """Server settings that shape every answer: part of every cache key, so replicas configured
    differently never share entries in one Redis. Built from ``EngineSettings.answer_defaults``.
    """

    model_config = _FROZEN

    template_defaults: dict[str, str | int | float | bool] = Field(default_factory=dict)
    reasoning_parser: Literal["none", "think-tags"] = "none"


class EngineSettings(BaseModel):
    model_config = _FROZEN

    kind: Literal["hf", "upstream"] = Field(
        "hf",
        description="'hf': in-process transformers engine; 'upstream': proxy to OpenAI-compatible servers.",
    )
    model: str = Field(
        DEFAULT_MODEL,
        description="Hugging Face model id or local directory; 'tiny' is the shipped tiny test model "
        "(trained on coloured shapes only).",
    )
    served_model_name: str | None = Field(
        None,
        description="Name reported by /v1/models and accepted in requests (default: the model argument).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where the model runs.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Weight dtype: 'auto' is bfloat16 on a GPU and float32 on a CPU."
    )
    trust_remote_code: bool = Field(False, description="Allow model repositories to run their own code.")
    quantization: Literal["none", "int8", "int4", "fp8"] = Field(
        "none",
        description="Weight-only quantization of the language model's linear layers by torchao, done while "
        "the model loads: 'int8' (any device), 'int4' (CPU, or a CUDA GPU with bfloat16), 'fp8' (CUDA GPU of "
        "compute capability 8.9 or newer). A checkpoint written by glimpse quantize is already quantized.",
    )
    quantize_lm_head: bool = Field(
        True, description="With quantization, also quantize the output layer (LM head) unless tied."
    )
    quantize_vision: bool = Field(
        False, description="With quantization, also quantize the vision tower's linear layers."
    )
    kv_cache_dtype: Literal["auto", "fp8"] = Field(
        "auto",
        description="What the continuous-batching engine's KV cache stores: 'auto' is the model's dtype; "
        "'fp8' (float8 e4m3, scale 1.0) takes half the bytes of bfloat16, so about twice the tokens fit the "
        "same memory. fp8 needs a CUDA GPU of compute capability 8.9 or newer and a model the batching "
        "engine runs (GLM-4.xV); elsewhere it is refused at start-up.",
    )
    reasoning_parser: Literal["none", "think-tags"] = Field(
        "none",
        description="'think-tags': send a thinking model's <think>…</think> text as reasoning_content, "
        "apart from the answer (recommended for GLM-4.6V); 'none': one text.",
    )
    chat_template_kwargs: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description='Default chat-template variables, e.g. {"enable_thinking": false} for GLM-4.6V; '
        "a request's chat_template_kwargs override them.",
    )
    tiny_model_dir: Path | None = Field(
        None,
        description="A tiny checkpoint that 'tiny' serves instead of the shipped one "
        "(written by glimpse train-tiny or make-tiny-model).",
    )
    warmup: bool = Field(True, description="Run one generation at start-up before /readyz turns 200.")
    max_batch_size: int | None = Field(
        None,
        ge=1,
        description="Most sequences decoded together in one step (KV-cache slots). Default: sized from the "
        "machine: on a GPU as many max_seq_len slots as fit the memory left after the weights and one step's "
        "activations (at most 256), on the CPU 16. The chosen size is logged at start-up.",
    )
    max_queue: int = Field(
        16,
        ge=0,
        description="Most admitted requests waiting to start (beyond max_batch_size running); beyond it: "
        "503 + Retry-After at once, from the headers. Keep it near max_batch_size: each waiting request "
        "adds its wait to every later one's latency.",
    )
    max_tokens_in_flight: int | None = Field(
        None,
        ge=1,
        description="Most prompt + output tokens held in the running batch at once (default: no bound "
        "beyond the KV-cache slots, each max_seq_len tokens).",
    )
    max_seq_len: int = Field(
        8192,
        ge=16,
        description="Longest prompt + output per sequence; each of max_batch_size KV-cache slots is "
        "preallocated at this length (capped by the model's context).",
    )
    prefill_tokens_per_step: int = Field(
        8192,
        ge=1,
        description="Prompt tokens prefilled per step, in the same forward as every running stream's next "
        "token (longer prompts are split across steps; an image's tokens count once more in the step "
        "that encodes it), so arrivals stall running streams by at most this much work.",
    )
    kv_bucket: int = Field(
        256,
        ge=1,
        description="Where paged decode attention is unavailable (no flex attention kernel), CUDA-graph "
        "decode steps attend to a length rounded up to this, then doubling, so step shapes repeat.",
    )
    cuda_graphs: bool = Field(
        False,
        description="Replay decode steps as CUDA graphs on a GPU (experimental: not yet measured on a GPU).",
    )
    prefix_cache: bool = Field(
        True,
        description="Index full KV-cache blocks by their tokens and image contents, so a follow-up or a "
        "prompt that starts the same shares them (reference-counted, least recently used out) and "
        "prefills only the rest.",
    )
    batching: bool = Field(
        True, description="Continuous batching where the model supports it (GLM-4.xV); else one at a time."
    )
    process: bool = Field(
        True,
        description="Run the model in a process of its own, apart from the HTTP server, so the two do not "
        "share Python's interpreter lock: the server answers (and refuses) without waiting for the engine's "
        "step loop (bench/overload.py on the 2-core CPU box: capacity 74 -> 87-91 req/s, refusal p99 "
        "5.2 -> 4.0-4.4 ms). The processor is loaded in both. false: the engine thread in the server's "
        "process.",
    )
    image_embedding_cache_mb: int = Field(
        256,
        ge=0,
        description="Host memory (MiB) for the vision tower's output of images seen before, so a new "
        "question about a known image skips the tower (least recently used out; keyed by the image's "
        "pixel values; continuous batching only); 0: off. A 1024² image takes ~11 MB for GLM-4.6V in bf16.",
    )
    queue_timeout_s: float = Field(
        120.0, gt=0, description="Longest a request may wait in the queue before it fails with 503."
    )
    default_max_new_tokens: int = Field(512, ge=1, description="Output tokens when a request does not say.")
    max_new_tokens_limit: int = Field(4096, ge=1, description="Largest max_tokens a request may ask for.")
    max_n: int = Field(
        8,
        ge=1,
        le=128,
        description="Most choices (OpenAI's n) one chat completion may ask for; each is a sequence of its "
        "own in the batch, so a request holds up to n times the work of one.",
    )
    preprocess_workers: int | None = Field(
        None,
        ge=0,
        le=64,
        description="Processes that run the chat template and image processor, apart from the decode loop "
        "(default: 1 with the model on the CPU, min(4, cores - 1) on a GPU); 0: threads of the server "
        "process instead (one per core, at most 8), which slow decode steps while they work.",
    )
    cpu_threads: int | None = Field(
        None,
        ge=1,
        description="Torch threads for a model on the CPU (default: every core but one, which is left to the "
        "HTTP event loop so refusals stay fast and admitted requests keep moving under overload).",
    )

    lora_modules: tuple[str, ...] = Field(
        (),
        description="LoRA adapters to serve, each 'NAME=PATH' (a PEFT adapter folder, e.g. written by "
        "glimpse finetune); a request names one as its model. An adapter that cannot be served stops "
        "start-up.",
    )
    enable_lora: bool = Field(
        False,
        description="Serve LoRA adapters even with none configured, so /v1/load_lora_adapter can add them at "
        "run time (on whenever lora_modules is set).",
    )
    max_loras: int = Field(
        4,
        ge=1,
        description="LoRA adapters held in the model at once; when another is needed, the least recently "
        "used one no running request uses is unloaded (and read again from its folder when next asked for).",
    )
    max_lora_rank: int = Field(
        64, ge=1, description="Highest LoRA rank accepted; adapters of a higher rank are refused at load."
    )

    @property
    def lora_enabled(self) -> bool:
        return self.enable_lora or bool(self.lora_modules)

    @property
    def lora_paths(self) -> dict[str, Path]:
        """``lora_modules`` as ``name -> folder`` (checked by the validator)."""
        return {name: Path(path) for name, _, path in (entry.partition("=") for entry in self.lora_modules)}

    @field_validator("lora_modules")
    @classmethod
    def _name_equals_path(cls, entries: tuple[str, ...]) -> tuple[str, ...]:
        seen: set[str] = set()
        for entry in entries:
            name, sep, path = entry.partition("=")
            name, path = name.strip(), path.strip()
            if not sep or not name or not path:
                raise ValueError(f"{entry!r} is not NAME=PATH")
            if any(c.isspace() for c in name):
                raise ValueError(f"adapter name {name!r} has spaces")
            if name in seen:
                raise ValueError(f"adapter name {name!r} is given twice")
            seen.add(name)
        return tuple("=".join(part.strip() for part in entry.partition("=")[::2]) for entry in entries)

    @property
    def answer_defaults(self) -> AnswerDefaults:
        """The settings here that change what a request's answer is (part of every cache key)."""
        return AnswerDefaults(
            template_defaults=dict(self.chat_template_kwargs), reasoning_parser=self.reasoning_parser
        )

    @model_validator(mode="after")
    def _consistent_token_limits(self) -> EngineSettings:
        # Refused at start-up: otherwise the server comes up and fails every request that
        # leaves max_tokens out, blaming a parameter the client never sent.
        if self.default_max_new_tokens > self.max_new_tokens_limit:
            raise ValueError(
                f"default_max_new_tokens ({self.default_max_new_tokens}) is above "
                f"max_new_tokens_limit ({self.max_new_tokens_limit})"
            )
        if self.default_max_new_tokens >= self.max_seq_len:
            raise ValueError(
                f"default_max_new_tokens ({self.default_max_new_tokens}) leaves no room for a prompt "
                f"in max_seq_len ({self.max_seq_len})"
            )
        return self


class UpstreamSettings(BaseModel):
    """The upstream engine's servers and tuning (engine 'upstream'): its only source of knobs."""

    model_config = _FROZEN

    urls: tuple[str, ...] = Field(
        (), description="Base URLs of OpenAI-compatible servers (engine 'upstream')."
    )
    api_key: SecretStr | None = Field(None, description="Bearer key sent to upstream servers.")
    connect_timeout_s: float = Field(
        5.0, gt=0, description="Seconds to connect to an upstream; a failure moves the request to another."
    )
    read_timeout_s: float = Field(
        120.0, gt=0, description="Longest silence from an upstream (first token included) before 504."
    )
    write_timeout_s: float = Field(
        30.0, gt=0, description="Seconds to send a request body (images included) to an upstream."
    )
    pool_timeout_s: float = Field(
        10.0, gt=0, description="Seconds to wait for a free pooled connection to the upstreams."
    )
    health_interval_s: float = Field(
        3.0, gt=0, description="Seconds between active health checks of each upstream."
    )
    health_timeout_s: float = Field(2.0, gt=0, description="Time-out of one health check request.")
    failure_threshold: int = Field(
        3,
        ge=1,
        description="Consecutive failures (requests or health checks) that take an upstream out of rotation.",
    )
    cooldown_s: float = Field(
        5.0, gt=0, description="Seconds an upstream stays out before one trial request may put it back."
    )
    max_in_flight_per_upstream: int | None = Field(
        None,
        ge=1,
        description="Most requests open to one upstream at once (default: no limit; the upstream queues).",
    )
    png_max_pixels: int = Field(
        1_000_000,
        ge=1,
        description="Images up to this many pixels go upstream as lossless PNG, larger ones as JPEG quality "
        "95 (1 MP keeps even a noisy PNG under a Glimpse node's default 5 MiB image limit).",
    )
    encode_workers: int = Field(2, ge=1, description="Threads that encode images into data URLs at once.")
    max_connections: int = Field(
        512, ge=1, description="Connection pool size of the client to the upstreams."
    )
    max_error_body_bytes: int = Field(
        64 * 1024,
        ge=1,
        description="Most bytes of an upstream's error body read: a 4xx message goes to the client (500 "
        "characters at most), a 5xx one only to the log.",
    )
    max_event_bytes: int = Field(
        1024 * 1024,
        ge=1,
        description="Longest line of an upstream's event stream, and largest /v1/models answer.",
    )
    response_bytes_per_token: int = Field(
        4096,
        ge=1,
        description="An answer may be at most max_event_bytes + this many bytes per requested output token: "
        "about ten times what vLLM's chunks take, so only a runaway upstream reaches it.",
    )
    max_retry_after_s: int = Field(
        60, ge=1, description="An upstream's Retry-After is passed on clamped to 1..this many seconds."
    )
    routing_policy: Literal["cache_aware", "least_outstanding"] = Field(
        "cache_aware",
        description="'cache_aware': requests sharing a first image or a conversation opening (system "
        "prompt + first user turn) go to the same upstream (consistent hashing), so its prefix cache "
        "hits; 'least_outstanding': each request to the upstream with the fewest in flight.",
    )
    routing_load_margin: float = Field(
        8,
        ge=0,
        description="Cache-aware routing passes over an upstream with more than this many requests in "
        "flight (per unit of weight) beyond the least-loaded one's, and takes the next on the ring.",
    )


class MediaSettings(BaseModel):
    model_config = _FROZEN

    allowed_formats: tuple[str, ...] = Field(
        ("JPEG", "PNG", "WEBP"), description="Image formats accepted, detected from the bytes."
    )
    max_image_bytes: int = Field(5 * 1024 * 1024, gt=0, description="Largest encoded image.")
    max_pixels: int = Field(
        40_000_000, gt=0, description="Largest width*height, checked before the pixel data is decoded."
    )
    max_side: int = Field(8192, gt=0, description="Largest width or height.")
    min_side: int = Field(8, gt=0, description="Smallest width or height.")
    max_images_per_request: int = Field(4, ge=1, description="Most images in one request.")
    max_request_pixels: int = Field(
        50_000_000,
        gt=0,
        description="Largest total width*height of one request's images, checked from their headers "
        "before any is decoded (413).",
    )
    max_pixels_in_flight: int = Field(
        120_000_000,
        gt=0,
        description="Most decoded pixels held at once over the whole server (3 bytes each as RGB), from "
        "decode until the engine has taken the images; beyond it requests wait.",
    )
    pixel_wait_s: float = Field(
        10.0,
        gt=0,
        description="Longest a request waits for room under max_pixels_in_flight (or until its deadline) "
        "before 503 with Retry-After.",
    )
    malloc_mmap_threshold_bytes: int = Field(
        1024 * 1024,
        ge=0,
        le=2**31 - 1,
        description="glibc: allocations this large or larger get their own mmap, returned to the OS when "
        "freed, so RSS comes back after large images, in the server and its preprocessing processes (0: "
        "glibc's default, which keeps them).",
    )
    allow_urls: bool = Field(False, description="Fetch http(s) image URLs (off by default).")
    url_allowlist: tuple[str, ...] = Field(
        (), description="Host names (or *.suffix) that image URLs may point at; empty means any public host."
    )
    fetch_timeout_s: float = Field(10.0, gt=0, description="Connect/read timeout for image URLs.")

    @model_validator(mode="after")
    def _sides_in_order(self) -> MediaSettings:
        if self.min_side > self.max_side:
            raise ValueError(f"min_side ({self.min_side}) is above max_side ({self.max_side}): no image fits")
        if self.max_request_pixels > self.max_pixels_in_flight:
            raise ValueError(
                f"max_request_pixels ({self.max_request_pixels}) is above max_pixels_in_flight "
                f"({self.max_pixels_in_flight}): a request at the limit could never be decoded"
            )
        return self


class GuardSettings(BaseModel):
    model_config = _FROZEN

    prompt_guard: Literal["off", "flag", "block"] = Field(
        "flag", description="Prompt-injection guard: off, flag (record only) or block (400)."
    )
    prompt_rules_file: Path | None = Field(
        None, description="Extra prompt-guard rules (JSON), added to the built-in ones."
    )
    api_keys: tuple[SecretStr, ...] = Field((), description="API keys accepted (Bearer or X-API-Key).")
    api_keys_file: Path | None = Field(
        None, description="JSON file of hashed API keys with names, scopes and limits."
    )
    jwt_secret: SecretStr | None = Field(None, description="HS256 secret for JWT bearer tokens.")
    jwt_public_key_file: Path | None = Field(None, description="PEM public key for RS256/ES256 JWTs.")
    jwt_algorithms: tuple[str, ...] = Field(
        ("HS256",), description="JWT algorithms accepted ('none' never is)."
    )
    jwt_audience: str | None = Field(None, description="Required JWT 'aud', if set.")
    jwt_issuer: str | None = Field(None, description="Required JWT 'iss', if set.")
    rate_limit_per_minute: int = Field(
        0, ge=0, description="Requests per minute per client; 0 means unlimited."
    )
    token_quota_per_day: int = Field(
        0, ge=0, description="Output + prompt tokens per client per UTC day; 0 means unlimited."
    )
    audit_store: Literal["sqlite", "jsonl", "off"] = Field(
        "sqlite", description="Where audit records go besides the glimpse.audit logger."
    )
    audit_log_path: Path | None = Field(
        None, description="Audit store file (default: ~/.cache/glimpse/audit.sqlite3 or audit.jsonl)."
    )
    audit_retention_days: int = Field(30, ge=1, description="Audit records older than this are deleted.")
    audit_question: Literal["hash", "truncated", "full"] = Field(
        "hash",
        description="How the question is recorded: length + keyed hash (HMAC) only, truncated, or in full.",
    )
    audit_hash_key: SecretStr | None = Field(
        None,
        description=(
            "Secret key of the audit records' prompt hashes (HMAC-SHA256); unset: a random key per "
            "process, so hashes do not correlate across restarts."
        ),
    )
    audit_truncate_chars: int = Field(
        200, ge=1, description="Characters kept when audit_question is 'truncated'."
    )
    cors_origins: tuple[str, ...] = Field(
        (), description="Origins allowed to call the API from a browser (CORS); empty: same origin only."
    )
    metrics_api_key: SecretStr | None = Field(
        None, description="If set, /metrics requires this bearer key (for scrapers)."
    )
    redis_url: SecretStr | None = Field(
        None,
        description="Redis for rate limits and token quotas shared by replicas; default: redis.url, else "
        "cache.redis_url.",
    )

    @field_validator("metrics_api_key", "jwt_secret", "audit_hash_key")
    @classmethod
    def _no_empty_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("must not be empty (leave it unset instead)")
        return value

    @field_validator("api_keys")
    @classmethod
    def _usable_keys(cls, keys: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        # Presented keys are stripped, so an empty or padded key could never match, yet it
        # would switch authentication on: everyone locked out (e.g. '["${API_KEY}"]' unset).
        for index, key in enumerate(keys):
            value = key.get_secret_value()
            if not value.strip():
                raise ValueError(f"key {index} is empty")
            if value != value.strip():
                raise ValueError(f"key {index} has leading or trailing whitespace")
        return keys


class CacheSettings(BaseModel):
    model_config = _FROZEN

    enabled: bool = Field(True, description="Cache answers of deterministic requests.")
    max_bytes: int = Field(64 * 1024 * 1024, ge=0, description="Size bound of the in-process cache.")
    redis_url: SecretStr | None = Field(
        None,
        description="Redis for the cache (shared by replicas) instead of in-process; default: redis.url.",
    )
    ttl_s: int = Field(3600, gt=0, description="How long a cached answer lives in Redis.")
    allow_sampled: bool = Field(False, description="Also cache sampled (temperature > 0, no seed) answers.")
    shared_across_clients: bool = Field(
        False,
        description="Share cached answers (and identical requests in flight) between clients (API keys, "
        "JWT subjects, addresses); off: each client has its own, so a hit reveals nothing about others.",
    )


class RedisSettings(BaseModel):
    """The Redis that replicas share, and how long any use of it may wait (cache, rate limits, quotas)."""

    model_config = _FROZEN

    url: SecretStr | None = Field(
        None,
        description="Redis shared by replicas for the result cache, rate limits and token quotas (each may "
        "name its own with cache.redis_url / guard.redis_url); unset: all in-process.",
    )
    timeout_s: float = Field(
        0.25, gt=0, description="Longest any Redis command may take before Redis counts as down."
    )
    backoff_s: float = Field(
        2.0,
        ge=0,
        description="After a Redis failure, how long to serve without it (cache off, limits and quotas not "
        "enforced) before one request tries it again.",
    )
    max_connections: int = Field(
        64, ge=1, description="Connections to one Redis URL, shared by its uses; beyond it commands queue."
    )


class BatchSettings(BaseModel):
    """OpenAI's Batch API: uploaded files, the durable queue of their lines, and the share of the engine
    that batch work may take from live requests."""

    model_config = _FROZEN

    enabled: bool = Field(True, description="Serve /v1/files and /v1/batches and run batch lines.")
    dir: Path | None = Field(
        None,
        description="Where uploaded and result files live (with a Redis queue: a volume every replica "
        "mounts at this path), and the embedded queue's SQLite database; default: "
        "~/.cache/glimpse/batches.",
    )
    max_file_bytes: int = Field(
        100 * 1024 * 1024, gt=0, description="Largest file one upload may be (413 beyond it, unread)."
    )
    max_lines_per_batch: int = Field(
        50_000, ge=1, description="Most request lines in one batch's input file (400 beyond it)."
    )
    max_active_batches_per_key: int = Field(
        10, ge=1, description="Batches one caller may have unfinished at once (429 beyond it)."
    )
    max_in_flight: int = Field(4, ge=1, description="Most batch lines generating at once on this replica.")
    capacity_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Share of the engine's running batch (max_batch_size) batch lines may hold; a line "
        "starts only while a place in it is free, so live requests are never queued behind batch work.",
    )
    visibility_timeout_s: float = Field(
        300.0,
        gt=0,
        description="A line claimed by a replica that stops renewing its claim (it died) is queued again "
        "after this long; a live replica renews it every third of it.",
    )
    poll_interval_s: float = Field(
        0.5, gt=0, description="How often an idle batch worker looks for queued lines."
    )
    file_retention_s: int = Field(
        30 * 24 * 3600,
        gt=0,
        description="Files (uploads and results) are deleted this long after they were created; a file's "
        "expires_at says when.",
    )


class QueueSettings(BaseModel):
    """Where the Batch API keeps its line queue and its batch and file records."""

    model_config = _FROZEN

    redis_url: SecretStr | None = Field(
        None,
        description="Redis shared by replicas for the batch queue (a Redis Stream per batch, one consumer "
        "group for every replica) and the batch and file records; unset: SQLite in batch.dir (one "
        "machine). Never falls back to the cache's Redis, which may evict: give this one persistence "
        "(appendonly yes) and maxmemory-policy noeviction, or queued lines can be lost.",
    )
    key_prefix: str = Field(
        "glimpse:batch",
        min_length=1,
        description="Prefix of every key the queue writes, so deployments can share one Redis.",
    )
    timeout_s: float = Field(
        5.0,
        gt=0,
        description="Longest one queue command may take; beyond it the request fails with 503 and the "
        "worker tries again on its next pass.",
    )


class ObsSettings(BaseModel):
    model_config = _FROZEN

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    log_json: bool | None = Field(
        None,
        description="One JSON object per log line (true) or human-readable lines (false); default: "
        "human-readable on a terminal, JSON otherwise.",
    )
    metrics_enabled: bool = Field(True, description="Serve Prometheus metrics at /metrics.")


class Settings(BaseSettings):
    """Everything Glimpse can be told, from ``GLIMPSE_*`` env vars (nested with ``__``)."""

    model_config = SettingsConfigDict(
        env_prefix="GLIMPSE_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    server: ServerSettings = Field(default_factory=ServerSettings, description="HTTP server.")
    engine: EngineSettings = Field(default_factory=EngineSettings, description="Model and scheduling.")
    upstream: UpstreamSettings = Field(
        default_factory=UpstreamSettings, description="Upstream servers (engine 'upstream')."
    )
    media: MediaSettings = Field(default_factory=MediaSettings, description="Image intake limits.")
    guard: GuardSettings = Field(
        default_factory=GuardSettings, description="Auth, rate limits, prompt guard."
    )
    cache: CacheSettings = Field(default_factory=CacheSettings, description="Result cache.")
    redis: RedisSettings = Field(default_factory=RedisSettings, description="Shared Redis.")
    obs: ObsSettings = Field(default_factory=ObsSettings, description="Logs and metrics.")
    batch: BatchSettings = Field(default_factory=BatchSettings, description="Batch API and its queue.")
    queue: QueueSettings = Field(default_factory=QueueSettings, description="Batch queue shared by replicas.")

    @model_validator(mode="before")
    @classmethod
    def _moved_settings(cls, data: Any) -> Any:
        """Accept the names settings had before they moved section (env vars, flags, mappings)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for (old_section, old_name), (new_section, new_name) in MOVED_SETTINGS.items():
            section = data.get(old_section)
            if not isinstance(section, dict) or old_name not in section:
                continue
            section = dict(section)
            value = section.pop(old_name)
            if isinstance(value, str) and value.lstrip().startswith("["):
                # The environment source decodes JSON only for fields it knows as lists.
                value = json.loads(value)
            data[old_section] = section
            target = data.get(new_section)
            if target is None:
                target = {}
            if isinstance(target, dict):
                data[new_section] = {new_name: value, **target}  # the new name wins over the old
        return data

    def redis_url_for(self, use: Literal["cache", "guard"]) -> str | None:
        """The Redis URL one use talks to: its own if set, else the shared one (None: in-process).

        The guard falls back to the cache's URL last, as it did before the shared one existed.
        """
        candidates: tuple[SecretStr | None, ...]
        if use == "cache":
            candidates = (self.cache.redis_url, self.redis.url)
        else:
            candidates = (self.guard.redis_url, self.redis.url, self.cache.redis_url)
        for url in candidates:
            if url is not None:
                return url.get_secret_value()
        return None


#: Settings that moved, old (section, name) -> new; the old environment variables still work.
MOVED_SETTINGS: dict[tuple[str, str], tuple[str, str]] = {
    ("engine", "upstreams"): ("upstream", "urls"),
    ("engine", "upstream_api_key"): ("upstream", "api_key"),
    ("engine", "upstream_connect_timeout_s"): ("upstream", "connect_timeout_s"),
    ("engine", "upstream_read_timeout_s"): ("upstream", "read_timeout_s"),
    ("engine", "upstream_health_interval_s"): ("upstream", "health_interval_s"),
    ("engine", "upstream_failure_threshold"): ("upstream", "failure_threshold"),
    ("engine", "upstream_cooldown_s"): ("upstream", "cooldown_s"),
    ("cache", "redis_timeout_s"): ("redis", "timeout_s"),
    ("cache", "redis_backoff_s"): ("redis", "backoff_s"),
}
