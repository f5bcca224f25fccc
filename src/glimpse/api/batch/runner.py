"""The batch worker: takes queued lines and answers each through the live chat pipeline.

It runs in the server, started and stopped with the app's lifespan, and fills only the
engine capacity live requests leave free: a line starts only while the engine's running
batch has a free place (never into its queue), and batch lines never hold more than
``capacity_share`` of those places nor more than ``max_in_flight`` at once. Live requests
are admitted as before; they are never queued behind batch work.

Each line is a non-streamed chat completion run by ``api.openai.chat.complete_chat``,
as the line's submitter (quota, audit record, cache partition): the same validation,
guard, cache and engine as ``/v1/chat/completions``. Its output is stored with the
line marked done in one step (``BatchStore.complete``). A line the engine could not
take for now (overloaded, not ready, shutting down) goes back to the queue unanswered.
Claims are renewed while lines run; on shutdown the lines still running are cancelled
and put back, so a restart (or another replica) answers them. Each pass also closes
the batches with nothing left to run (or past their window), and once a minute the
files past their retention are deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from glimpse.api.context import RequestContext
from glimpse.api.openai.chat import complete_chat
from glimpse.api.security import record_audit
from glimpse.api.state import AppState
from glimpse.batches import BatchStore, ClaimedLine, LineOutcome, error_message, new_id, response_line
from glimpse.config import BatchSettings
from glimpse.errors import ClientDisconnected, EngineDead, GlimpseError, NotReady, Overloaded
from glimpse.guard import AuditLog

from .adapter import chat_request, principal_from_json

__all__ = ["BatchRunner"]

logger = logging.getLogger(__name__)

#: Failures that say nothing about the line: it is queued again, not answered.
_TRANSIENT = (Overloaded, NotReady, EngineDead, ClientDisconnected)
#: The route name batch lines carry in the audit trail.
AUDIT_ROUTE = "/v1/batches"
#: How often a worker deletes the files past their retention (every replica does; any may).
_PURGE_EVERY_S = 60.0


class _Requeue(Exception):  # noqa: N818 - a signal between two methods, never raised to a caller
    """The line could not run now; put it back."""


class _Never:
    """The watcher of a batch line: nobody can hang up on it (shutdown cancels the line instead)."""

    async def disconnected(self) -> None:
        await asyncio.Event().wait()


class BatchRunner:
    """One replica's batch worker (see the module's docstring)."""

    def __init__(self, store: BatchStore, state: AppState, settings: BatchSettings, audit: AuditLog) -> None:
        self.store = store
        self.state = state
        self.settings = settings
        self.audit = audit
        self.worker_id = new_id("worker-")
        #: Each running line and its request (``first_event_at``: whether the engine holds it yet).
        self._running: dict[asyncio.Task[None], tuple[ClaimedLine, RequestContext]] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._purged = self._renewed = time.monotonic() - _PURGE_EVERY_S

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        self._loop_task = asyncio.create_task(self._loop(), name="batch-runner")

    async def stop(self) -> None:
        """Cancel the lines still running and put them back in the queue, unanswered."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        lines = self._lines()
        for task in self._running:
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        if not lines:
            return
        try:
            await self.store.release(self.worker_id, lines)
        except NotReady as exc:
            logger.warning(
                "batch lines not returned at shutdown (%s); another worker takes them after the "
                "visibility timeout",
                exc.message,
                extra={"lines": len(lines)},
            )
            return
        self.state.metrics.batch_lines.labels(result="requeued").inc(len(lines))
        logger.info("batch lines returned to the queue at shutdown", extra={"lines": len(lines)})

    def room(self) -> int:
        """How many more lines may start now (0 while the engine is full, loading or draining)."""
        state = self.state
        if state.draining:
            return 0
        health = state.engine.health()
        if not health.ready:
            return 0
        held = len(self._running)
        room = self.settings.max_in_flight - held
        load = state.admission.load(state)
        if load is not None:
            # Shares and free places are of the running batch, not of the engine's queue too: a
            # line admitted beyond the free slots would sit in the queue ahead of the live
            # requests that come next, and a share of slots + queue could take every slot.
            share = max(1, int(load.slots * self.settings.capacity_share))
            # Lines in the engine are counted by it and by ``held``; the ones claimed and not yet
            # there (no first event) by ``held`` only, so the engine's count gets them added. The
            # engine may run work the admission never saw (an upstream's other callers) and its
            # count may lag (the engine process pushes it): the larger sum bounds what is taken.
            pending = sum(1 for _, context in self._running.values() if context.first_event_at is None)
            taken = max(load.busy + pending, load.live + held)
            room = min(room, share - held, load.slots - taken)
        return max(0, room)

    async def _purge(self) -> None:
        """Delete the files older than the retention setting."""
        purged = await self.store.purge_files(int(time.time()) - self.settings.file_retention_s)
        if purged:
            logger.info("batch files past their retention deleted", extra={"files": purged})

    async def _pass(self) -> None:
        """One look at the queue: purge (now and then), finalize, claim what fits, renew claims."""
        now = time.monotonic()
        if now - self._purged >= _PURGE_EVERY_S:
            self._purged = now
            await self._purge()
        await self.store.finalize_ready()
        room = self.room()
        if room > 0:
            held = {(line.batch_id, line.index) for line in self._lines()}
            for line in await self.store.claim(self.worker_id, room, self.settings.visibility_timeout_s):
                if (line.batch_id, line.index) not in held:  # retaken after a stall: runs once
                    context = RequestContext(
                        new_id("batch_req_"),
                        arrived_at=time.monotonic(),
                        route_path=AUDIT_ROUTE,
                        principal=principal_from_json(line.principal),
                    )
                    self._running[asyncio.create_task(self._run(line, context))] = (line, context)
        if self._running and time.monotonic() - self._renewed >= self.settings.visibility_timeout_s / 3:
            await self.store.renew(self.worker_id, self._lines(), self.settings.visibility_timeout_s)
            self._renewed = time.monotonic()

    async def _loop(self) -> None:
        store_down = False
        while True:
            try:
                await self._pass()
                if store_down:
                    logger.info("batch store reachable again; batch work resumes")
                    store_down = False
            except NotReady as exc:  # the shared queue is down: said once, retried every pass
                if not store_down:
                    logger.warning("batch work paused: %s", exc.message)
                    store_down = True
            except Exception:  # a store that fails now may work on the next pass; lines stay queued
                logger.exception("batch worker pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval_s)
            self._wake.clear()

    def _lines(self) -> list[ClaimedLine]:
        return [line for line, _ in self._running.values()]

    async def _run(self, line: ClaimedLine, context: RequestContext) -> None:
        metrics = self.state.metrics
        metrics.batch_lines_in_flight.inc()
        started = time.perf_counter()
        wake = True
        try:
            try:
                outcome = await self._answer(line, context)
            except _Requeue:
                await self.store.release(self.worker_id, [line])
                metrics.batch_lines.labels(result="requeued").inc()
                wake = False  # the engine is full or stopping: look again at the next poll, not at once
                return
            if await self.store.complete(self.worker_id, line, outcome):
                metrics.batch_lines.labels(result="failed" if outcome.failed else "completed").inc()
                metrics.batch_line_duration.observe(time.perf_counter() - started)
        except asyncio.CancelledError:
            raise
        except Exception:  # the claim lapses and the line is run again
            logger.exception("batch line could not be stored")
        finally:
            metrics.batch_lines_in_flight.dec()
            self._running.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
            if wake:
                self._wake.set()

    async def _answer(self, line: ClaimedLine, context: RequestContext) -> LineOutcome:
        """The line's output-file entry; ``_Requeue`` when it could not run for reasons of the server's."""
        state = self.state
        request_id = context.request_id
        status, started = 500, time.perf_counter()
        try:
            if context.principal is not None:
                await state.quota.check(context.principal)
            body, _ = await complete_chat(chat_request(line.body), state, context, _Never())
            status = 200
            return LineOutcome(response_line(line.custom_id, request_id, 200, body), failed=False)
        except _TRANSIENT as exc:
            status = int(exc.status_code)
            raise _Requeue from exc
        except GlimpseError as exc:
            status = int(exc.status_code)
            error = response_line(line.custom_id, request_id, status, error_message(exc))
            return LineOutcome(error, failed=True)
        except asyncio.CancelledError:
            status = ClientDisconnected.status_code  # stopped with the server; queued again
            raise
        except Exception:  # noqa: BLE001 - a bug answers this line with a 500, never loops on it
            logger.exception("batch line failed", extra={"batch_id": line.batch_id})
            body = error_message(GlimpseError("The server hit an internal error."))
            return LineOutcome(response_line(line.custom_id, request_id, 500, body), failed=True)
        finally:
            record_audit(self.audit, context, None, AUDIT_ROUTE, status, time.perf_counter() - started)
