"""The ``glimpse`` command: serve, ask, make-tiny-model, train-tiny, finetune, settings (and bench / batch).

This is the only place that turns command-line flags into a ``Settings``; flags
override ``GLIMPSE_*`` environment variables, which override the defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from glimpse import __version__
from glimpse.config import DEFAULT_MODEL, TINY_MODEL, Settings
from glimpse.errors import GlimpseError, ModelLoadError

__all__ = ["build_parser", "main", "settings_from_args"]

_console = Console(stderr=True, highlight=False)

_TINY_BANNER = (
    "[bold yellow]" + "!" * 72 + "\n"
    "  Serving Glimpse's TINY test model: a real GLM-4.6V architecture, about 1 M parameters,\n"
    "  trained only to answer questions about pictures of coloured shapes. It is NOT GLM-4.6V:\n"
    "  it exists to try and test the service offline; other questions get nonsense.\n"
    "  For real answers: glimpse serve --model zai-org/GLM-4.6V-Flash (or a local copy).\n" + "!" * 72 + "[/]"
)


def _add_serve(sub: Any) -> None:
    p = sub.add_parser("serve", help="Start the HTTP service.", description="Start the HTTP service.")
    p.add_argument(
        "--model", help=f"Hugging Face id, local directory, or '{TINY_MODEL}' (default {DEFAULT_MODEL})."
    )
    p.add_argument("--host", help="Address to bind (default 127.0.0.1).")
    p.add_argument("--port", type=int, help="Port (default 8080).")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="Where the model runs (default auto).")
    p.add_argument("--dtype", choices=["auto", "bfloat16", "float16", "float32"], help="Weight dtype.")
    _add_quantization_flag(p)
    p.add_argument(
        "--kv-cache-dtype",
        choices=["auto", "fp8"],
        help="What the KV cache stores: the model's dtype (auto), or fp8 (GPUs of compute capability 8.9+).",
    )
    p.add_argument(
        "--engine", choices=["hf", "upstream"], help="In-process transformers, or upstream servers."
    )
    p.add_argument(
        "--upstream", action="append", help="Base URL of an OpenAI-compatible server (repeatable)."
    )
    p.add_argument("--served-model-name", help="Model name shown by /v1/models and accepted in requests.")
    p.add_argument("--max-batch-size", type=int, help="Most sequences decoded together.")
    p.add_argument("--max-queue", type=int, help="Most requests waiting; beyond it 503 + Retry-After.")
    p.add_argument(
        "--lora",
        action="append",
        metavar="NAME=PATH",
        help="Serve the LoRA adapter in folder PATH as model NAME (repeatable).",
    )
    p.add_argument(
        "--enable-lora",
        action="store_true",
        help="Serve LoRA adapters, even with none given (run-time loading).",
    )
    p.add_argument("--max-loras", type=int, help="LoRA adapters held in the model at once (default 4).")
    p.add_argument("--max-lora-rank", type=int, help="Highest LoRA rank accepted (default 64).")
    p.add_argument("--no-warmup", action="store_true", help="Skip the warm-up generation at start-up.")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="Log level.")
    p.set_defaults(func=_serve)


def _add_quantization_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quantization",
        choices=["none", "int8", "int4", "fp8"],
        help="Weight-only quantization of the language model (torchao), done while loading (default none).",
    )


def _add_quantize(sub: Any) -> None:
    p = sub.add_parser(
        "quantize",
        help="Write a quantized copy of a model that glimpse serve --model loads directly.",
        description="Load MODEL with --quantization applied (as glimpse serve would) and write it, with its "
        "processor, tokenizer and chat template, to OUT.",
    )
    p.add_argument("model", help=f"Hugging Face id, local directory, or '{TINY_MODEL}'.")
    p.add_argument("out", type=Path, help="Folder to write (new or empty).")
    _add_quantization_flag(p)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="Where to quantize (default auto).")
    p.add_argument("--dtype", choices=["auto", "bfloat16", "float16", "float32"], help="Unquantized dtype.")
    p.set_defaults(func=_quantize)


def _add_ask(sub: Any) -> None:
    from glimpse.client._args import positive_float

    p = sub.add_parser("ask", help="Ask a running server about an image.")
    p.add_argument("image", type=Path, help="Image file (JPEG, PNG or WebP).")
    p.add_argument("question", help="The question.")
    p.add_argument("--url", default="http://127.0.0.1:8080", help="Server base URL.")
    p.add_argument("--stream", action="store_true", help="Print the answer as it is generated.")
    p.add_argument("--max-tokens", type=int, default=None, help="Most tokens in the answer.")
    p.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="0 for greedy; unset: the model's recommended setting (greedy for the tiny model).",
    )
    p.add_argument("--api-key", default=None, help="API key, when the server requires one.")
    p.add_argument("--timeout", type=positive_float, default=300.0, help="Seconds to wait for the answer.")
    p.set_defaults(func=_ask)


def _add_make_tiny(sub: Any) -> None:
    p = sub.add_parser("make-tiny-model", help="Write the tiny random-weight GLM-4.6V test model.")
    p.add_argument("directory", type=Path, help="Directory to write (replaced if it exists).")
    p.add_argument(
        "--full-size",
        action="store_true",
        help="Real GLM-4.6V-Flash sizes (about 10 B parameters, 20 GB), random weights: for GPU benchmarks.",
    )
    p.set_defaults(func=_make_tiny)


def _add_train_tiny(sub: Any) -> None:
    p = sub.add_parser(
        "train-tiny",
        help="Train the tiny GLM-4.6V test model on the shapes task (the one --model tiny serves).",
        description="Train the tiny GLM-4.6V test model from scratch on generated pictures of coloured "
        "shapes, print the held-out accuracy table and write the checkpoint with MANIFEST.json.",
    )
    p.add_argument("directory", type=Path, help="Directory to write (replaced if it holds a tiny model).")
    p.add_argument("--config", type=Path, help="JSON file of training settings (see TrainConfig).")
    p.add_argument("--seed", type=int, help="Random seed (default 0).")
    p.add_argument("--samples", type=int, help="Training conversations generated.")
    p.add_argument("--epochs", type=int, help="Passes over them.")
    p.add_argument("--threads", type=int, help="torch threads (default 2; the weights depend on it).")
    p.set_defaults(func=_train_tiny)


def _add_settings(sub: Any) -> None:
    p = sub.add_parser("settings", help="List every setting with its GLIMPSE_* variable and default.")
    p.set_defaults(func=_settings_table)


def _add_audit(sub: Any) -> None:
    from glimpse.guard.audit_cli import register_audit

    register_audit(sub, Settings)


def _add_finetune(sub: Any) -> None:
    from glimpse.finetune.command import register_finetune

    register_finetune(sub)


def _add_client_commands(sub: Any) -> None:
    try:
        from glimpse.client import register_batch, register_bench
    except ImportError:  # the client package is optional in a stripped-down install
        return
    register_bench(sub)
    register_batch(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glimpse", description="Serve vision-language models at high concurrency."
    )
    parser.add_argument("--version", action="version", version=f"glimpse {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    adders = (
        _add_serve,
        _add_quantize,
        _add_ask,
        _add_make_tiny,
        _add_train_tiny,
        _add_finetune,
        _add_settings,
        _add_audit,
    )
    for add in (*adders, _add_client_commands):
        add(sub)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Environment first, then flags on top (pydantic-settings merges nested values)."""
    engine: dict[str, Any] = {}
    server: dict[str, Any] = {}
    obs: dict[str, Any] = {}
    upstream: dict[str, Any] = {}
    pairs: Sequence[tuple[dict[str, Any], str, str]] = (
        (engine, "model", "model"),
        (engine, "device", "device"),
        (engine, "dtype", "dtype"),
        (engine, "quantization", "quantization"),
        (engine, "kv_cache_dtype", "kv_cache_dtype"),
        (engine, "engine", "kind"),
        (engine, "served_model_name", "served_model_name"),
        (engine, "max_batch_size", "max_batch_size"),
        (engine, "max_queue", "max_queue"),
        (engine, "max_loras", "max_loras"),
        (engine, "max_lora_rank", "max_lora_rank"),
        (server, "host", "host"),
        (server, "port", "port"),
        (obs, "log_level", "log_level"),
    )
    for target, flag, field in pairs:
        value = getattr(args, flag, None)
        if value is not None:
            target[field] = value
    if getattr(args, "upstream", None):
        upstream["urls"] = tuple(args.upstream)
        engine.setdefault("kind", "upstream")
    if getattr(args, "no_warmup", False):
        engine["warmup"] = False
    if getattr(args, "lora", None):
        engine["lora_modules"] = tuple(args.lora)
    if getattr(args, "enable_lora", False):
        engine["enable_lora"] = True
    return Settings(engine=engine, upstream=upstream, server=server, obs=obs)


def _configure_logging(settings: Settings, *, background: bool = False) -> Callable[[], None]:
    """Set up logging; returns what writes out the records still queued (call it at exit)."""
    try:
        from glimpse.obs import configure_logging
    except ImportError:
        logging.basicConfig(level=settings.obs.log_level)
        return lambda: None
    listener = configure_logging(settings.obs, background=background)
    return (lambda: None) if listener is None else listener.stop


def _freeze_heap() -> None:
    """Once the model is loaded, leave everything alive then out of the garbage collector's walks.

    The model, its processor and the libraries are hundreds of thousands of long-lived
    objects. Every full collection walked them all: about 0.3 s on the tiny model with two
    cores, with the event loop stopped, so some requests (refusals included) waited that
    long. ``gc.freeze`` moves them to a generation that collections skip.
    """
    gc.collect()
    gc.freeze()


def _serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    flush_logs = _configure_logging(settings, background=True)
    try:
        return _run_server(settings)
    finally:
        flush_logs()


def _run_server(settings: Settings) -> int:
    import uvicorn

    from glimpse.api.app import create_app
    from glimpse.cpu_share import ThreadNicer
    from glimpse.engine.loader import check_model_available

    if settings.engine.kind == "hf":
        check_model_available(settings.engine)
        if settings.engine.model == TINY_MODEL:
            _console.print(_TINY_BANNER)
    fatal: list[BaseException] = []
    server: uvicorn.Server | None = None

    def on_fatal(exc: BaseException) -> None:
        fatal.append(exc)
        if server is not None:
            server.should_exit = True

    if settings.engine.kind == "upstream":
        from glimpse.engine.factory import build_engine

        # Validates the upstream URLs before the server starts.
        build_engine(settings.engine, settings.upstream)
    sys.setswitchinterval(settings.server.switch_interval_ms / 1000)
    ThreadNicer(settings.server.worker_nice).start()
    app = create_app(settings, on_fatal=on_fatal, on_ready=_freeze_heap)

    class DrainingServer(uvicorn.Server):
        """On SIGTERM/SIGINT, start the drain (/readyz and requests arriving from now on get 503),
        then let uvicorn stop accepting connections and finish every request that arrived before.
        """

        def handle_exit(self, sig: int, frame: Any) -> None:
            state = getattr(app.state, "glimpse", None)
            if state is not None:
                state.start_draining()
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn re-raises a captured SIGTERM after shutdown, so the process would
            # die by the signal; a drain that completed is a clean exit (status 0).
            with super().capture_signals():
                yield
                getattr(self, "_captured_signals", []).clear()

    from glimpse.api.h11_shed import SheddingH11Protocol

    class Protocol(SheddingH11Protocol):
        head_timeout_s = settings.server.header_timeout_s
        shedder = getattr(app, "shedder", None)

    config = uvicorn.Config(
        app,
        http=Protocol,
        host=settings.server.host,
        port=settings.server.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.server.graceful_timeout_s),
    )
    server = DrainingServer(config)
    _console.print(
        f"Glimpse {__version__}: model [bold]{escape(settings.engine.model)}[/] on "
        f"http://{settings.server.host}:{settings.server.port}  (web page at /, API at /v1)"
    )
    server.run()
    if fatal:
        raise fatal[0]
    return 0


def _quantize(args: argparse.Namespace) -> int:
    from glimpse.engine.loader import check_runtime_installed
    from glimpse.engine.quantized_checkpoint import write_quantized

    settings = settings_from_args(args)
    _configure_logging(settings)
    check_runtime_installed()
    directory = write_quantized(settings.engine, args.out)
    _console.print(
        f"Wrote {escape(settings.engine.model)} quantized ({settings.engine.quantization}) to "
        f"{escape(str(directory))}; serve it with: glimpse serve --model {escape(str(directory))}"
    )
    return 0


def _ask(args: argparse.Namespace) -> int:
    from glimpse.client.ask import ask

    return ask(
        args.url,
        args.image,
        args.question,
        stream=args.stream,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        api_key=args.api_key,
        timeout=args.timeout,
        out=sys.stdout,
    )


def _make_tiny(args: argparse.Namespace) -> int:
    from glimpse.engine.tiny_model import build_full_size_model, build_random_tiny_model

    if args.full_size:
        directory = build_full_size_model(args.directory)
        _console.print(f"Wrote a full-size random-weight GLM-4.6V-Flash model to {escape(str(directory))}")
        return 0
    directory = build_random_tiny_model(args.directory)
    _console.print(f"Wrote the tiny random-weight GLM-4.6V model to {escape(str(directory))}")
    return 0


def _train_tiny(args: argparse.Namespace) -> int:
    import shlex

    from glimpse.engine.tiny_train import TrainingError, load_config, train

    try:
        config = load_config(
            args.config, seed=args.seed, samples=args.samples, epochs=args.epochs, threads=args.threads
        )
        train(args.directory, config, command=shlex.join(["glimpse", *sys.argv[1:]]))
    except TrainingError as exc:
        _console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        return 2
    _console.print(f"Wrote the trained tiny model to {escape(str(args.directory))}")
    return 0


def _settings_table(args: argparse.Namespace) -> int:
    from glimpse.settings_doc import settings_markdown

    sys.stdout.write(settings_markdown())
    return 0


def _settings_errors(exc: Any) -> list[str]:
    """One line per invalid setting, naming the environment variable that sets it."""
    lines = []
    for error in exc.errors():
        path = [str(part) for part in error.get("loc", ())]
        env = "GLIMPSE_" + "__".join(path).upper() if path else "GLIMPSE_*"
        lines.append(f"setting {'.'.join(path) or '?'} ({env} or its flag): {error.get('msg', 'invalid')}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    try:
        return func(args)
    except ValidationError as exc:  # a flag or GLIMPSE_* variable out of range or of the wrong type
        for line in _settings_errors(exc):
            _console.print(f"[bold red]error:[/] {escape(line)}", soft_wrap=True)
        return 2
    except SettingsError as exc:  # a GLIMPSE_* variable that should hold JSON (a list, a mapping)
        _console.print(
            f"[bold red]error:[/] {escape(str(exc))}; list and mapping settings take JSON, "
            """e.g. GLIMPSE_GUARD__API_KEYS='["key1", "key2"]'""",
            soft_wrap=True,
        )
        return 2
    except ModelLoadError as exc:
        _console.print(f"[bold red]error:[/] {escape(exc.message)}", soft_wrap=True)
        return 2
    except GlimpseError as exc:
        _console.print(f"[bold red]error:[/] {escape(exc.message)}", soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        return 130
