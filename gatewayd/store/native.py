"""Statements run on the Trio thread itself: psycopg's protocol driven by Trio's I/O.

psycopg does all its talking to the server in generators that say what they wait for (the
socket readable or writable) and are handed the answer; its blocking API runs them with
``select``, its asyncio API with asyncio. :func:`drive` runs them with
``trio.lowlevel.wait_readable``/``wait_writable``, so a statement needs no worker thread:
no hand-off there and back, and no wait for the interpreter lock while the Trio thread
runs (under load that wait was most of a statement's time: docs/benchmarks.md).

:class:`NativeConnections` keeps a few autocommit connections for the single statements
of the hot path (a received message, a reply, a round of send changes: see
``Database.execute``); everything else still goes through the pool and a worker thread.
A connection is lent to one task at a time; a statement is never abandoned halfway (the
caller is shielded until the server has answered, as a worker thread would be waited
for), and a connection that broke is closed and replaced by a new one when next needed.

This relies on psycopg's cursor generator (``_execute_gen``), which its own blocking and
asyncio ``execute`` run: docs/psycopg.md says what, and the tests run it on every message.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import psycopg
import trio
from psycopg.abc import PQGen
from psycopg.rows import TupleRow
from psycopg.waiting import Ready, Wait

from gatewayd.store.pool import Connection, ended_by_server

__all__ = ["NativeConnections", "Result", "drive"]


class Result:
    """What a statement returned: its rows (none for a statement without a result) and the
    number of rows it changed."""

    __slots__ = ("rowcount", "rows")

    def __init__(self, rows: list[tuple[Any, ...]], rowcount: int) -> None:
        self.rows = rows
        self.rowcount = rowcount

    @classmethod
    def of(cls, cursor: psycopg.Cursor[TupleRow]) -> Result:
        """What ``cursor`` has received for its statement."""
        return cls(cursor.fetchall() if cursor.description is not None else [], cursor.rowcount)


async def drive(gen: PQGen[Any], fileno: int) -> Any:
    """Run a psycopg protocol generator to its end, waiting with Trio."""
    try:
        state = next(gen)
        while True:
            ready: int
            if state == Wait.R:
                await trio.lowlevel.wait_readable(fileno)
                ready = Ready.R
            elif state == Wait.W:
                await trio.lowlevel.wait_writable(fileno)
                ready = Ready.W
            else:
                ready = await _either(fileno)
            state = gen.send(ready)
    except StopIteration as done:
        return done.value


async def _either(fileno: int) -> int:
    """Wait until the socket is readable or writable (a large write the server answers
    before reading all of it)."""
    ready = 0

    async def wait(waiter: Callable[[int], Any], flag: int, scope: trio.CancelScope) -> None:
        nonlocal ready
        await waiter(fileno)
        ready |= flag
        scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait, trio.lowlevel.wait_readable, Ready.R, nursery.cancel_scope)
        nursery.start_soon(wait, trio.lowlevel.wait_writable, Ready.W, nursery.cancel_scope)
    return ready


class NativeConnections:
    """Up to ``size`` autocommit connections used from the Trio thread; ``connect`` makes one
    (blocking: it is called in a worker thread)."""

    def __init__(self, connect: Callable[[], Connection], size: int) -> None:
        self._connect = connect
        self._idle: list[Connection] = []
        self._slots = trio.Semaphore(size)
        self.size = size

    async def execute(
        self,
        query: str | bytes,
        params: Sequence[Any] | dict[str, Any] | None = None,
        *,
        prepare: bool | None = None,
    ) -> Result:
        """Run one statement (a transaction of its own); psycopg's exceptions as they come.
        ``prepare`` as psycopg's ``execute`` takes it."""
        async with self._slots:
            conn = await self._take()
            try:
                with trio.CancelScope(shield=True):
                    cursor = conn.cursor()
                    gen = cursor._execute_gen(query, params, prepare=prepare)
                    await drive(gen, conn.pgconn.socket)
                return Result.of(cursor)
            finally:
                if conn.closed or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    conn.close()  # broken, or left in a state it must not be lent in
                else:
                    self._idle.append(conn)

    async def _take(self) -> Connection:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and not ended_by_server(conn):
                return conn
            conn.close()
        return await trio.to_thread.run_sync(self._connect)

    def close(self) -> None:
        """Close the idle connections (those lent out are closed when they come back broken,
        or when the process ends); the next statement connects afresh."""
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
