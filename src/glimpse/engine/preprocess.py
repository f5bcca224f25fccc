"""Where a request's model inputs are built: chat template, image processor, tokenizer.

The processor (resize, normalise, patchify, tokenise) is Python-heavy work. In
threads of the server process it competes with the engine thread, whose decode
steps are many short Python calls, for the interpreter lock and for cores:
``bench/preprocess_overlap.py`` measured decode steps 1.9–4.8× slower while
threads preprocessed 1024² images flat out, 1.05–1.24× with one worker process.
So by default it runs in worker processes (``ProcessPreprocessor``), each with its
own interpreter and one torch thread; ``preprocess_workers = 0`` keeps it in
threads of this process (``ThreadPreprocessor``), as before.

Large arrays cross through shared memory: with ``torch.multiprocessing`` imported,
the pickler behind the pool's queues moves a tensor's storage to shared memory and
sends a file descriptor, so neither a request's pixels (a decoded image, sent as a
uint8 tensor) nor its ``pixel_values`` (tens of MB for a large image) are copied
through the pipe under this process's interpreter lock. Small tensors travel
inline, which costs less than passing a descriptor. Where ``/dev/shm`` has too
little room (Docker gives 64 MB unless told otherwise, and writing past a full one
can kill the writer with SIGBUS), results travel as pickled arrays instead: slower.

No await here can hang (issue 12): every exception in a worker becomes the
``GlimpseError`` the request would have seen from a thread; a worker that dies
fails the requests it held with ``EngineRequestError`` and the pool is rebuilt for
the next one; at close, work not yet started fails with ``EngineDead``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import multiprocessing
import os
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import BrokenExecutor, Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from glimpse.cpu_share import nice_this_process
from glimpse.engine.prompt_tokens import PromptEncoder, TemplateMessage
from glimpse.engine.protocol import GenerationRequest, ImagePart
from glimpse.errors import EngineDead, EngineRequestError, GlimpseError, InvalidRequest
from glimpse.media.memory import set_mmap_threshold
from glimpse.media.threads import contained, run_in_executor

__all__ = [
    "PREPARE_FAILED",
    "Preprocessor",
    "ProcessPreprocessor",
    "ThreadPreprocessor",
    "build_inputs",
    "chat_messages",
    "preprocess_threads",
    "resolve_preprocess_workers",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

PREPARE_FAILED = "Preparing this request for the model failed unexpectedly; see the server log."
_SHUTTING_DOWN = "The server is shutting down."
_SHM_DIR = "/dev/shm"  # noqa: S108 - where POSIX shared memory lives on Linux; only its free space is read
#: Room left free in /dev/shm beyond a result's own size, for everything else that uses it.
_SHM_HEADROOM_BYTES = 64 * 2**20
#: Tensors smaller than this travel inline: a descriptor's hand-over costs more than the copy.
_INLINE_BYTES = 2**20
#: Image modes sent as an array of pixels (``Image.fromarray`` rebuilds them exactly).
_ARRAY_MODES = frozenset({"RGB", "RGBA", "L"})


def chat_messages(request: GenerationRequest) -> tuple[list[TemplateMessage], list[Any]]:
    """Messages in the processor's chat-template shape, and the images in order.

    A ``tool`` message's content is a string, which every GLM template renders as the
    tool's output; an assistant's calls carry their arguments as a mapping, which
    templates iterate (vLLM hands them over the same way).
    """
    messages: list[TemplateMessage] = []
    images: list[Any] = []
    for message in request.messages:
        if message.role == "tool":
            messages.append({"role": "tool", "content": message.text, "tool_call_id": message.tool_call_id})
            continue
        content: list[dict[str, Any]] = []
        for part in message.content:
            if isinstance(part, ImagePart):
                content.append({"type": "image"})
                images.append(part.image)
            else:
                content.append({"type": "text", "text": part.text})
        rendered: TemplateMessage = {"role": message.role, "content": content}
        if message.tool_calls:
            rendered["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": json.loads(c.arguments)},
                }
                for c in message.tool_calls
            ]
        messages.append(rendered)
    return messages, images


def build_inputs(
    encoder: PromptEncoder,
    messages: Sequence[TemplateMessage],
    images: Sequence[Any],
    template_kwargs: Mapping[str, Any],
) -> dict[str, Any]:
    """The model inputs of one conversation; what the processor refuses is the client's error."""
    try:
        # Client text is encoded as plain text: control tokens come only from the template.
        inputs = encoder.encode(messages, images, template_kwargs)
        from glimpse.engine.batching.image_keys import IMAGE_KEYS, image_keys

        keys = image_keys(inputs)
        if keys is not None:  # hashed here, off the engine thread, for the prefix cache
            inputs[IMAGE_KEYS] = keys
        return inputs
    except GlimpseError:
        raise
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(f"The model's processor could not prepare this request: {exc}") from exc


def resolve_preprocess_workers(setting: int | None, device: str, cores: int | None = None) -> int:
    """Worker processes for preprocessing (0: threads in this process).

    On a CPU the model's torch threads take every core but one, so one process is
    all the spare room there is; a GPU leaves the cores to preprocessing, one for
    the event loop and the engine thread.
    """
    if setting is not None:
        return setting
    if device != "cuda":
        return 1
    return max(1, min(4, (cores if cores is not None else os.cpu_count() or 1) - 1))


def preprocess_threads(cores: int | None = None) -> int:
    """Threads when preprocessing stays in this process: one per core, at most 8 (as before)."""
    return min(8, cores if cores is not None else os.cpu_count() or 2)


class Preprocessor(Protocol):
    """Builds model inputs off the event loop; ``close`` ends it for good."""

    async def encode(
        self,
        messages: Sequence[TemplateMessage],
        images: Sequence[Any],
        template_kwargs: Mapping[str, Any],
    ) -> dict[str, Any]: ...

    async def close(self, timeout_s: float) -> None: ...


async def _shut_down_aware(closed: Callable[[], bool], work: Awaitable[T]) -> T:
    """Await ``work``; if closing cancelled it (not this task), the request fails with ``EngineDead``.

    A pool shut down with ``cancel_futures`` cancels what it had not started, and the
    awaiter would see a bare ``CancelledError``, as if its own request had been cancelled.
    """
    try:
        return await work
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if closed() and task is not None and not task.cancelling():
            raise EngineDead(_SHUTTING_DOWN) from None
        raise


class ThreadPreprocessor:
    """Preprocessing in threads of this process (``preprocess_workers = 0``): no start-up, no copies."""

    def __init__(self, processor: Any, threads: int) -> None:
        self._encoder = PromptEncoder(processor)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="glimpse-preprocess")
        self._closed = False
        logger.info("preprocessing in %d threads of the server process", threads)

    async def encode(
        self,
        messages: Sequence[TemplateMessage],
        images: Sequence[Any],
        template_kwargs: Mapping[str, Any],
    ) -> dict[str, Any]:
        if self._closed:
            raise EngineDead(_SHUTTING_DOWN)
        work = functools.partial(build_inputs, self._encoder, messages, images, template_kwargs)
        safe = contained(work, error=EngineRequestError, message=PREPARE_FAILED)
        return await _shut_down_aware(lambda: self._closed, run_in_executor(self._pool, safe))

    async def close(self, timeout_s: float) -> None:
        """Cancel what has not started; threads still running finish on their own (not waited for)."""
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)


# -- the worker side: module-level, so a spawned process finds it by name ------------------

_worker_encoder: PromptEncoder | None = None


def _init_worker(source: str, trust_remote_code: bool, nice: int, mmap_threshold_bytes: int) -> None:
    """Once per worker process: one torch thread, the server's niceness and malloc threshold, the
    model's processor.

    The processor is loaded from the model's files, as ``load_model`` loads the
    server's own, so the workers can start while the model loads. Without the
    threshold a worker's RSS grew by about 1.1 GB over its first 80 1024² images and
    stayed there (glibc kept the freed pixel arrays); with it, flat (see ``media.memory``).
    """
    import torch
    import torch.multiprocessing  # noqa: F401 - registers the shared-memory reductions for results
    from transformers import AutoProcessor

    set_mmap_threshold(mmap_threshold_bytes)
    torch.set_num_threads(1)
    nice_this_process(nice)
    global _worker_encoder
    processor = AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
    _worker_encoder = PromptEncoder(processor)


def _ready() -> int:
    return os.getpid()


def _shm_free_bytes() -> int:
    try:
        stats = os.statvfs(_SHM_DIR)
    except OSError:
        return 0
    return stats.f_bavail * stats.f_frsize


class _Pixels:
    """A decoded image on its way to a worker; it pickles as its array of pixels and unpickles as
    the same image. Pickling runs in the pool's feeder thread, off the loop.

    A large image crosses as a uint8 tensor in shared memory; a small one (under
    ``_INLINE_BYTES``) inline, in the pickle's bytes: sharing a tensor passes a file
    descriptor through torch's resource-sharer thread (a connection accepted, the
    descriptor sent, the connection closed, all holding this process's interpreter lock),
    which for a 224x224 picture costs the server far more than copying its 150 kB.
    """

    __slots__ = ("image",)

    def __init__(self, image: Any) -> None:
        self.image = image

    def __reduce__(self) -> tuple[Callable[[Any], Any], tuple[Any]]:
        import numpy as np

        pixels = np.array(self.image)
        if pixels.nbytes < _INLINE_BYTES:
            return _image_from_array, (pixels,)
        import torch

        return _image_from_pixels, (torch.from_numpy(pixels),)


def _image_from_array(pixels: Any) -> Any:
    from PIL import Image

    return Image.fromarray(pixels)


def _image_from_pixels(pixels: Any) -> Any:
    return _image_from_array(pixels.numpy())


def _to_worker(image: Any) -> Any:
    """Plain PIL images as ``_Pixels``; anything else (a subclass, another mode) as it pickles."""
    from PIL import Image

    if type(image) is Image.Image and image.mode in _ARRAY_MODES:
        return _Pixels(image)
    return image


def _for_transfer(inputs: dict[str, Any]) -> dict[str, Any]:
    """Large tensors as they are (shared memory) where /dev/shm has room for them; the rest as arrays."""
    import torch

    large = [v for v in inputs.values() if isinstance(v, torch.Tensor) and v.nbytes >= _INLINE_BYTES]
    needed = sum(t.untyped_storage().nbytes() for t in large)
    share = _shm_free_bytes() >= needed + _SHM_HEADROOM_BYTES
    return {
        k: (v.numpy() if isinstance(v, torch.Tensor) and not (share and v.nbytes >= _INLINE_BYTES) else v)
        for k, v in inputs.items()
    }


def _encode_in_worker(
    messages: list[TemplateMessage], images: list[Any], template_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """``build_inputs`` in a worker; raises only ``GlimpseError``s, which cross the process boundary."""

    def encode() -> dict[str, Any]:
        if _worker_encoder is None:  # the initializer failed, yet the process lives on: never expected
            raise RuntimeError("preprocessing worker has no processor")
        return _for_transfer(build_inputs(_worker_encoder, messages, images, template_kwargs))

    return contained(encode, error=EngineRequestError, message=PREPARE_FAILED)()


def _as_tensors(inputs: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch

    return {k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v) for k, v in inputs.items()}


def _stop_processes(executor: ProcessPoolExecutor, timeout_s: float) -> None:
    """Shut ``executor`` down: running work gets ``timeout_s`` to finish, then its workers are killed.

    ``ProcessPoolExecutor`` can only wait for ever (``shutdown(wait=True)``) or not at
    all, and a worker stuck in a processor would then hold the interpreter's exit.
    Its ``_processes`` and ``_executor_manager_thread`` are what Python 3.14's
    ``terminate_workers()`` uses; both are read before ``shutdown`` clears them.
    """
    processes = list((getattr(executor, "_processes", None) or {}).values())
    manager = getattr(executor, "_executor_manager_thread", None)
    executor.shutdown(wait=False, cancel_futures=True)
    if isinstance(manager, threading.Thread):
        manager.join(timeout_s)
    for process in processes:
        if process.is_alive():
            logger.warning("preprocessing worker %s did not finish in %gs; killed", process.pid, timeout_s)
            process.kill()
    if isinstance(manager, threading.Thread):
        manager.join(timeout_s)
    for process in processes:
        process.join(timeout_s)


class ProcessPreprocessor:
    """Preprocessing in ``workers`` spawned processes; ``start`` waits until they can take work.

    Only the event loop's thread calls ``encode``, ``start`` and ``close``, so replacing
    a broken pool needs no lock.
    """

    def __init__(
        self,
        source: str,
        workers: int,
        *,
        trust_remote_code: bool = False,
        nice: int = 0,
        mmap_threshold_bytes: int = 2**20,
    ) -> None:
        """``source``: the model's directory or hub id, as ``load_model`` reads it; ``nice`` and
        ``mmap_threshold_bytes``: ``server.worker_nice`` and ``media.malloc_mmap_threshold_bytes``."""
        import torch.multiprocessing  # noqa: F401 - so the pixels sent to workers go through shared memory

        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._workers = workers
        self._initargs = (source, trust_remote_code, nice, mmap_threshold_bytes)
        self._context = multiprocessing.get_context("spawn")
        self._executor = self._new_executor()
        self._closed = False

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self._workers, mp_context=self._context, initializer=_init_worker, initargs=self._initargs
        )

    async def start(self) -> None:
        """Start the workers and wait until one answers, so a pool that cannot start fails here."""
        pid = await self._run(_ready)
        logger.info("preprocessing in %d worker processes (first ready: pid %d)", self._workers, pid)

    async def encode(
        self,
        messages: Sequence[TemplateMessage],
        images: Sequence[Any],
        template_kwargs: Mapping[str, Any],
    ) -> dict[str, Any]:
        sent = [_to_worker(image) for image in images]
        result = await self._run(_encode_in_worker, list(messages), sent, dict(template_kwargs))
        return _as_tensors(result)

    def _replace(self, broken: Executor) -> ProcessPoolExecutor:
        """A fresh pool instead of ``broken`` (once, however many requests saw it break)."""
        if self._executor is broken:
            logger.warning("a preprocessing worker process died; starting a new pool")
            broken.shutdown(wait=False, cancel_futures=True)
            self._executor = self._new_executor()
        return self._executor

    def _submit(self, func: Callable[..., T], *args: Any) -> tuple[Executor, asyncio.Future[T]]:
        executor: Executor = self._executor
        try:
            try:
                future = executor.submit(func, *args)
            except BrokenExecutor:  # it broke while idle: this request never reached it
                executor = self._replace(executor)
                future = executor.submit(func, *args)
        except Exception as exc:  # noqa: BLE001 - e.g. no process could be started; this request fails
            raise EngineRequestError(PREPARE_FAILED) from exc
        return executor, asyncio.wrap_future(future)

    async def _run(self, func: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise EngineDead(_SHUTTING_DOWN)
        executor, future = self._submit(func, *args)
        try:
            return await _shut_down_aware(lambda: self._closed, future)
        except GlimpseError:
            raise
        except BrokenExecutor as exc:
            if self._closed:
                raise EngineDead(_SHUTTING_DOWN) from exc
            self._replace(executor)
            raise EngineRequestError(PREPARE_FAILED) from exc
        except Exception as exc:  # noqa: BLE001 - e.g. a result that could not be sent back
            raise EngineRequestError(PREPARE_FAILED) from exc

    async def close(self, timeout_s: float) -> None:
        """Fail what has not started with ``EngineDead``; running work gets ``timeout_s`` to finish."""
        self._closed = True
        await asyncio.to_thread(_stop_processes, self._executor, timeout_s)
