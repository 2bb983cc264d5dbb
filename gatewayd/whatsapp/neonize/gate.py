"""The one process-wide gate every neonize call goes through, and the thread limiters.

neonize's Go shim keeps three process-global Go maps without a lock (docs/neonize.md,
"Process-global Go maps and the gate"): a connect-start or a stop writes them, every other
export reads them, and a read racing a write aborts the whole process (SIGABRT, not
catchable). So:

* ``GATE.exclusive()`` wraps connect-start (until Go has registered the client) and ``Stop``;
* ``GATE.shared()`` wraps every other call (sends, lookups, logout, …);
* ``SESSION_LIMITER`` (unbounded) carries the thread that sits in ``connect()`` for a whole
  session, ``FFI_LIMITER`` (bounded) the short calls, so sessions never starve sends and
  neither takes trio's default limiter.

Exceptions from neonize are translated here, at the adapter edge, by ``map_exceptions``.
``final_exit`` ends the process without waiting for the non-daemon threads neonize leaves behind.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import NoReturn

import attrs
import trio

from gatewayd.errors import NotConnected, WhatsAppError

FFI_CALL_THREADS = 32
"""At most this many short neonize calls (send, mark read, lookups) run at once."""

SESSION_LIMITER = trio.CapacityLimiter(math.inf)
"""One token per live session thread, held for the session's whole life."""

FFI_LIMITER = trio.CapacityLimiter(FFI_CALL_THREADS)
"""Short, blocking neonize calls."""


class FfiGate:
    """A phase-fair reader/writer gate: many ``shared`` holders, or one ``exclusive`` holder.

    Phase-fair (Brandenburg & Anderson's PF reader/writer lock, in Trio's single-threaded
    terms): reader phases and writer phases alternate while both kinds wait.

    * A reader enters at once unless a writer holds the gate or waits for it. Then it waits
      for that one writer phase only: when the writer leaves, every reader waiting is let in
      together, before the next queued writer, however many writers are queued.
    * Writers enter one at a time, in arrival order. The writer at the head of the queue stops
      new readers from entering and waits for the readers inside to leave, so a stream of
      readers cannot starve a connect or a stop either.

    So a send waits for at most the remaining reader phase plus one writer phase, never for
    every queued connect (the strict FIFO turnstile this replaces made it wait for all of
    them: bench/gate.py measures both).

    ``timeout`` (seconds, both methods) bounds the wait to enter, not the time held: past it
    the wait raises ``trio.TooSlowError`` and the gate is left as if the caller had never
    come. ``None`` waits as long as it takes. A writer at the head that gives up lets in the
    readers that were waiting for its phase. It is a Trio object: the calls it guards run in
    worker threads while the task holding the gate waits.
    """

    def __init__(self) -> None:
        self._readers = 0
        self._writer = False  # a writer is inside
        self._writers: deque[_Waiter] = deque()  # waiting writers, in arrival order
        self._batch = _Batch()  # readers waiting for the current writer phase to end
        self.exclusive_entries = 0  # for tests and statistics

    @property
    def readers(self) -> int:
        """How many shared holders are inside right now."""
        return self._readers

    @property
    def writing(self) -> bool:
        """True while an exclusive holder is inside."""
        return self._writer

    @property
    def writers_waiting(self) -> int:
        """How many exclusive callers wait to enter (not counting the one inside)."""
        return len(self._writers)

    @property
    def readers_waiting(self) -> int:
        """How many shared callers wait for the current writer phase to end."""
        return self._batch.count

    # A ``timeout`` parameter, not the caller's own fail_after: that would bound the body too
    # (the Go call), and cancelling a call in Go's thread only abandons it.
    @asynccontextmanager
    async def shared(self, timeout: float | None = None) -> AsyncIterator[None]:  # noqa: ASYNC109
        """Hold the gate together with other readers (waiting at most ``timeout`` s)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._writer or self._writers:
            batch = self._batch
            batch.count += 1
            try:
                with _bounded(timeout):
                    await batch.admitted.wait()
            except BaseException:
                if batch.admitted.is_set():
                    self._release_shared()  # let in just as the wait was cancelled
                else:
                    batch.count -= 1
                raise
        else:
            self._readers += 1
        try:
            yield
        finally:
            self._release_shared()

    @asynccontextmanager
    async def exclusive(self, timeout: float | None = None) -> AsyncIterator[None]:  # noqa: ASYNC109
        """Hold the gate alone: no reader and no other writer is inside until this exits."""
        await trio.lowlevel.checkpoint_if_cancelled()
        waiter = _Waiter()
        self._writers.append(waiter)
        self._dispatch()
        if not waiter.admitted.is_set():
            try:
                with _bounded(timeout):
                    await waiter.admitted.wait()
            except BaseException:
                if waiter.admitted.is_set():
                    self._release_exclusive()
                else:
                    self._abandon(waiter)
                raise
        try:
            yield
        finally:
            self._release_exclusive()

    # ------------------------------------------------------------------ transitions

    def _release_shared(self) -> None:
        self._readers -= 1
        if self._readers == 0:
            self._dispatch()

    def _release_exclusive(self) -> None:
        self._writer = False
        self._admit_readers()  # a reader waits for one writer phase, not for the queue
        self._dispatch()

    def _abandon(self, waiter: _Waiter) -> None:
        """A waiting writer gave up: take it out of the queue, leaving no trace."""
        was_head = self._writers[0] is waiter
        self._writers.remove(waiter)
        if was_head and not self._writer:
            # The readers held back were waiting for this writer's phase, which never comes.
            self._admit_readers()
            self._dispatch()

    def _admit_readers(self) -> None:
        batch = self._batch
        if batch.count:
            self._readers += batch.count
            self._batch = _Batch()
            batch.admitted.set()

    def _dispatch(self) -> None:
        """Let the head writer in if the gate is free (no writer, no reader inside)."""
        if not self._writer and self._readers == 0 and self._writers:
            self._writer = True
            self.exclusive_entries += 1
            self._writers.popleft().admitted.set()


@attrs.define(eq=False)
class _Waiter:
    admitted: trio.Event = attrs.Factory(trio.Event)


@attrs.define(eq=False)
class _Batch:
    """The readers waiting for one writer phase to end: let in together."""

    count: int = 0
    admitted: trio.Event = attrs.Factory(trio.Event)


@contextmanager
def _bounded(timeout: float | None) -> Iterator[None]:
    if timeout is None:
        yield
    else:
        with trio.fail_after(timeout):
            yield


GATE = FfiGate()
"""The gate of this process. There is exactly one: the Go maps are process-global."""


# Errors neonize reports when the Go client is missing or offline. They become NotConnected,
# everything else WhatsAppError.
_NOT_CONNECTED_MARKERS = (
    "client is nil",
    "client not found",
    "not connected",
    "doesn't contain a device jid",
    "not logged in",
)


@contextmanager
def map_exceptions() -> Iterator[None]:
    """Translate neonize's exceptions into the project's WhatsApp errors."""
    from neonize.exc import NeonizeError

    try:
        yield
    except NeonizeError as exc:
        message = str(exc) or type(exc).__name__
        details = {"neonize": type(exc).__name__}
        if any(marker in message.lower() for marker in _NOT_CONNECTED_MARKERS):
            raise NotConnected(message, details=details) from exc
        raise WhatsAppError(message, details=details) from exc
    except FileNotFoundError as exc:
        # neonize shells out to ffmpeg/ffprobe for some media; the adapter avoids those paths,
        # but should one be reached the daemon must not crash.
        raise WhatsAppError(
            f"missing tool: {exc.filename}", details={"missing": exc.filename}
        ) from exc


def neonize_threads() -> list[threading.Thread]:
    """Live non-daemon threads other than the main thread (neonize's session workers)."""
    main = threading.main_thread()
    return [t for t in threading.enumerate() if t is not main and not t.daemon and t.is_alive()]


def final_exit(code: int) -> NoReturn:
    """Flush output and leave the process now, without joining neonize's non-daemon threads.

    A session stuck in the QR phase or in ``FetchMe`` never returns (docs/neonize.md, "Threads,
    callbacks and the QR phase"), and the interpreter would wait for it forever at exit. Call
    this after ``trio.run`` has returned.
    """
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
