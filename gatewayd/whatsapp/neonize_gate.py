"""The one process-wide gate every neonize call goes through, and the thread limiters.

neonize's Go shim keeps three process-global Go maps without a lock (NEONIZE.md §1): a
connect-start or a stop writes them, every other export reads them, and a read racing a write
aborts the whole process (SIGABRT, not catchable). So:

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
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import NoReturn

import trio

from gatewayd.errors import NotConnected, WhatsAppError

FFI_CALL_THREADS = 32
"""At most this many short neonize calls (send, mark read, lookups) run at once."""

SESSION_LIMITER = trio.CapacityLimiter(math.inf)
"""One token per live session thread, held for the session's whole life."""

FFI_LIMITER = trio.CapacityLimiter(FFI_CALL_THREADS)
"""Short, blocking neonize calls."""


class FfiGate:
    """A fair reader/writer gate: many ``shared`` holders, or one ``exclusive`` holder.

    Fair because a writer takes the turnstile first and keeps it while it waits for the readers
    inside to leave, so a stream of readers cannot starve a connect or a stop. It is a Trio
    object: the calls it guards run in worker threads while the task holding the gate waits.
    """

    def __init__(self) -> None:
        self._turnstile = trio.Lock()
        self._readers = 0
        self._no_readers = trio.Event()
        self._no_readers.set()
        self.exclusive_entries = 0  # for tests and statistics

    @property
    def readers(self) -> int:
        """How many shared holders are inside right now."""
        return self._readers

    @asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        """Hold the gate together with other readers."""
        async with self._turnstile:
            self._readers += 1
            if self._readers == 1:
                self._no_readers = trio.Event()
        try:
            yield
        finally:
            self._readers -= 1
            if self._readers == 0:
                self._no_readers.set()

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Hold the gate alone: no reader and no other writer is inside until this exits."""
        async with self._turnstile:
            await self._no_readers.wait()
            self.exclusive_entries += 1
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

    A session stuck in the QR phase or in ``FetchMe`` never returns (NEONIZE.md §1), and the
    interpreter would wait for it forever at exit. Call this after ``trio.run`` has returned.
    """
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
