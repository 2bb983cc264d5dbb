"""PostgreSQL access for Trio: psycopg's sync pool driven through worker threads.

psycopg's async API runs on asyncio only, so the store uses the blocking
``psycopg_pool.ConnectionPool`` and reaches it exclusively through
``trio.to_thread.run_sync``, with a ``trio.CapacityLimiter`` as large as the pool: a
worker thread never waits inside the pool for a connection that another thread holds,
and Trio never blocks.

Store modules pass a plain function ``fn(conn, *args)`` to :meth:`Database.run`; it
runs in a thread, inside a transaction, and whatever it returns comes back. psycopg's
exceptions are translated by :func:`map_exceptions` at this edge, so nothing above
``gatewayd.store`` sees psycopg.

A circuit breaker makes an outage cheap for callers: once the server is found
unreachable, calls fail at once with StoreUnavailable until a probe reconnects, and
:meth:`Database.wait_available` lets background work wait for that moment instead of
failing (see :mod:`gatewayd.store.pool` for the pool generations it swaps).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar, TypeVarTuple

import attrs
import psycopg
import psycopg.conninfo
import structlog
import trio
from psycopg_pool import PoolClosed, PoolTimeout

from gatewayd.errors import Conflict, StoreError, StoreUnavailable
from gatewayd.store.native import NativeConnections, Result
from gatewayd.store.pool import Connection, Pool, PoolSpec, borrow
from gatewayd.store.pool import error_message as _message

__all__ = [
    "Connection",
    "Database",
    "DatabaseStatistics",
    "Result",
    "UNAVAILABLE",
    "describe_dsn",
    "is_outage",
    "map_exceptions",
    "open_database",
]

logger = structlog.get_logger()

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

_PROBE_INTERVAL = 0.25  # while the breaker is open: how often to try the server

#: What callers (and HTTP clients) are told; PostgreSQL's own wording goes to the log.
UNAVAILABLE = "the database is unavailable"
_FAILED = "the database could not complete the operation"
_CONFLICT = "the change conflicts with existing data"


@contextmanager
def map_exceptions() -> Iterator[None]:
    """Translate psycopg (and pool) exceptions into the project's store errors.

    The messages are ours, since HTTP renders them and PostgreSQL's text may quote
    stored values; its primary message is logged, and attached as an exception note
    (shown in tracebacks, never in ``.message``). Conflict and StoreError keep the
    SQLSTATE, constraint and table names as details.
    """
    try:
        yield
    except psycopg.IntegrityError as exc:  # unique, foreign key, check, not-null
        logger.info("gatewayd.db.conflict", error=_message(exc), **_details(exc))
        raise _noted(Conflict(_CONFLICT, details=_details(exc)), exc) from exc
    except psycopg.OperationalError as exc:  # includes PoolTimeout and PoolClosed
        if _permanent(exc):
            logger.error("gatewayd.db.failed", error=_message(exc), **_details(exc))
            raise _noted(StoreError(_FAILED, details=_details(exc)), exc) from exc
        logger.warning("gatewayd.db.unavailable", error=_message(exc), sqlstate=exc.sqlstate)
        raise _noted(StoreUnavailable(UNAVAILABLE), exc) from exc
    except psycopg.Error as exc:
        logger.error("gatewayd.db.failed", error=_message(exc), **_details(exc))
        raise _noted(StoreError(_FAILED, details=_details(exc)), exc) from exc


def _noted(error: StoreError, exc: psycopg.Error) -> StoreError:
    error.add_note(f"PostgreSQL: {_message(exc)}")
    return error


def _permanent(exc: psycopg.OperationalError) -> bool:
    """OperationalErrors that retrying the same statement cannot fix: a program limit
    (class 54: an index row too large, too many columns) or a resource the statement itself
    exhausts (class 53: out of memory or disk), except too many connections (53300)."""
    state = exc.sqlstate or ""
    return state.startswith("54") or (state.startswith("53") and state != "53300")


def is_outage(exc: BaseException | None) -> bool:
    """Whether ``exc`` (a psycopg error) means the server cannot be reached.

    Connection failures and lost connections (no SQLSTATE, class 08), the server
    shutting down or starting up (57P01-57P03), and a pool that could not hand out
    a connection. Deadlocks, lock and statement timeouts are OperationalErrors too,
    but the server is there: they do not open the breaker.
    """
    if isinstance(exc, PoolTimeout | PoolClosed):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")


def _details(exc: psycopg.Error) -> dict[str, str | None]:
    return {
        "sqlstate": exc.sqlstate,
        "constraint": exc.diag.constraint_name,
        "table": exc.diag.table_name,
    }


def describe_dsn(dsn: str) -> dict[str, str]:
    """Host, port, database and user of ``dsn`` — safe to log (no password)."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        return {}
    return {k: str(params[k]) for k in ("host", "port", "dbname", "user") if k in params}


@attrs.frozen
class DatabaseStatistics:
    """A snapshot of the pool and its thread limiter."""

    pool_size: int
    pool_available: int
    requests_waiting: int
    threads_busy: int
    threads_max: int


class Database:
    """A connection pool usable from Trio, with a circuit breaker. Use :func:`open_database`.

    When a call finds the server unreachable the breaker opens: until the probe
    (a task of :func:`open_database`) connects again, calls fail at once with
    StoreUnavailable instead of each waiting for the pool, and :meth:`ping` is False.
    On recovery the pool is replaced by a fresh one, so nobody waits out
    psycopg_pool's reconnection backoff.
    """

    def __init__(
        self,
        first: Pool,
        dsn: str,
        max_size: int,
        *,
        timeout: float,
        reopen: Callable[[], Pool | None],
        native: NativeConnections | None = None,
    ) -> None:
        self._current = first
        self._native = native
        self._dsn = dsn
        self._limiter = trio.CapacityLimiter(max_size)
        self._timeout = timeout
        self._reopen = reopen
        self._available = True
        self._down_since = 0.0
        self._back = trio.Event()  # set when the breaker closes again
        self._back.set()
        self._tripped = trio.Event()  # wakes the probe
        self._retired: list[Pool] = []  # replaced pools not closed yet

    def __repr__(self) -> str:
        return f"Database({describe_dsn(self._dsn)})"  # the DSN may hold a password

    @property
    def dsn(self) -> str:
        """The DSN the pool connects with (may contain a password: never log it)."""
        return self._dsn

    @property
    def limiter(self) -> trio.CapacityLimiter:
        """Bounds the worker threads using the pool to the pool's size."""
        return self._limiter

    @property
    def available(self) -> bool:
        """False while the breaker is open (the server was found unreachable)."""
        return self._available

    async def wait_available(self) -> None:
        """Return once the breaker is closed: at once when it is, else on recovery."""
        while not self._available:
            await self._back.wait()

    async def run(self, fn: Callable[[Connection, *Ts], T], *args: *Ts) -> T:
        """Run ``fn(conn, *args)`` in a worker thread inside one transaction.

        Committed when ``fn`` returns, rolled back when it raises. Cancellation waits
        for ``fn`` to finish: a transaction is never abandoned halfway. Raises
        StoreUnavailable at once while the breaker is open.
        """

        def work(pooled: Pool) -> T:
            with map_exceptions(), borrow(pooled, self._timeout) as conn, conn.transaction():
                return fn(conn, *args)

        return await self._call(work)

    async def run_autocommit(self, fn: Callable[[Connection, *Ts], T], *args: *Ts) -> T:
        """Run ``fn(conn, *args)`` in a worker thread on a connection in autocommit mode.

        For work that manages its own transactions or needs session state across them
        (migrations under an advisory lock, leases). ``fn`` must leave no session state
        behind: the connection goes back to the pool. The breaker applies as to
        :meth:`run`.
        """

        def work(pooled: Pool) -> T:
            with map_exceptions(), borrow(pooled, self._timeout) as conn:
                conn.autocommit = True
                try:
                    return fn(conn, *args)
                finally:
                    _autocommit_off(conn)

        return await self._call(work)

    async def execute(
        self,
        query: str | bytes,
        params: Sequence[Any] | dict[str, Any] | None = None,
        *,
        prepare: bool | None = None,
    ) -> Result:
        """Run one statement, a transaction of its own, on the Trio thread (no worker thread:
        gatewayd/store/native.py); its rows and row count. For the hot path's single
        statements. Cancellation waits for the server's answer; the breaker applies as to
        :meth:`run`. ``prepare=False``: never a prepared statement (planned for its
        parameters each time)."""
        if not self._available:
            raise StoreUnavailable(UNAVAILABLE)
        if self._native is None:

            def work(conn: Connection) -> Result:
                return Result.of(conn.execute(query, params, prepare=prepare))

            return await self.run_autocommit(work)
        pooled = self._current
        try:
            with map_exceptions():
                return await self._native.execute(query, params, prepare=prepare)
        except StoreUnavailable as exc:
            if is_outage(exc.__cause__):
                self._trip(pooled)
            raise

    async def _call(self, work: Callable[[Pool], T]) -> T:
        if not self._available:
            raise StoreUnavailable(UNAVAILABLE)
        used: list[Pool] = []

        def in_thread() -> T:
            pooled = self._current  # the pool of now, not of when the call queued
            used.append(pooled)
            if not self._available:  # the breaker opened while we waited for a thread
                raise StoreUnavailable(UNAVAILABLE)
            return work(pooled)

        try:
            return await trio.to_thread.run_sync(in_thread, limiter=self._limiter)
        except StoreUnavailable as exc:
            if used and is_outage(exc.__cause__):
                self._trip(used[0])
            raise

    # The timeout is a parameter (not the caller's cancel scope) because the worker
    # thread needs it too: it bounds the wait for a pool connection.
    async def ping(self, timeout: float) -> bool:  # noqa: ASYNC109
        """True if ``SELECT 1`` succeeds within ``timeout`` s; False at once while the
        breaker is open.

        A hung database never hangs the caller: on timeout the worker thread is
        abandoned (it finishes, and frees its thread slot, whenever the database
        answers or the connection dies).
        """
        if not self._available:
            return False
        pooled = self._current

        def work() -> psycopg.Error | None:
            try:
                with borrow(pooled, timeout) as conn:
                    conn.execute("SELECT 1")
            except psycopg.Error as exc:
                return exc
            return None

        with trio.move_on_after(timeout):
            error = await trio.to_thread.run_sync(
                work, limiter=self._limiter, abandon_on_cancel=True
            )
            if error is None:
                return True
            logger.warning("gatewayd.db.ping_failed", error=_message(error))
            if is_outage(error):
                self._trip(pooled)
            return False
        logger.warning("gatewayd.db.ping_timeout", timeout=timeout)
        return False

    def statistics(self) -> DatabaseStatistics:
        """Current pool and thread usage (cheap; safe to call from Trio)."""
        stats = self._current.pool.get_stats()
        return DatabaseStatistics(
            pool_size=stats.get("pool_size", 0),
            pool_available=stats.get("pool_available", 0),
            requests_waiting=stats.get("requests_waiting", 0),
            threads_busy=self._limiter.borrowed_tokens,
            threads_max=int(self._limiter.total_tokens),
        )

    # -- the breaker -----------------------------------------------------------------

    def _trip(self, pooled: Pool) -> None:
        if pooled is not self._current or not self._available:
            return  # a replaced pool's failure, or already open
        self._available = False
        self._down_since = trio.current_time()
        self._back = trio.Event()
        self._tripped.set()
        logger.error("gatewayd.db.down", error=pooled.health.error or None)

    async def _probe(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """While the breaker is open, try the server every _PROBE_INTERVAL; close it."""
        task_status.started()
        async with trio.open_nursery() as closers:
            while True:
                await self._tripped.wait()
                # Not abandoned on cancel: a pool it opens must be seen and closed.
                fresh = await trio.to_thread.run_sync(self._reopen)
                if fresh is None:
                    await trio.sleep(_PROBE_INTERVAL)
                    continue
                old, self._current = self._current, fresh
                if self._native is not None:
                    self._native.close()  # connections of before the outage: make new ones
                self._retired.append(old)
                self._tripped = trio.Event()
                self._available = True
                self._back.set()
                down_for = trio.current_time() - self._down_since
                logger.warning("gatewayd.db.up", down_for=round(down_for, 3))
                closers.start_soon(self._close_retired, old)

    async def _close_retired(self, pooled: Pool) -> None:
        # Connections still lent out are closed when they come back.
        await trio.to_thread.run_sync(pooled.pool.close)
        self._retired.remove(pooled)

    def _close_all(self) -> None:
        if self._native is not None:
            self._native.close()
        for pooled in [*self._retired, self._current]:
            pooled.pool.close(timeout=5.0)


@asynccontextmanager
async def open_database(
    dsn: str, *, min_size: int = 1, max_size: int = 10, connect_timeout: float = 5.0
) -> AsyncIterator[Database]:
    """Open a pool on ``dsn`` for the duration of the block.

    Raises StoreUnavailable if ``min_size`` connections cannot be made within
    ``connect_timeout`` seconds. While the block runs, a task of its own probes the
    server whenever the breaker is open. The pool is closed on exit, also when
    cancelled.
    """
    # Half the connections (up to four; none below three) run the hot path's statements from
    # the Trio thread (gatewayd/store/native.py); the pool keeps the rest, at least min_size.
    native = min(4, max_size // 2) if max_size >= 3 else 0
    pool_size = max(min_size, max_size - native)
    spec = PoolSpec.for_dsn(
        dsn, min_size=min_size, max_size=pool_size, connect_timeout=connect_timeout
    )
    where = describe_dsn(dsn)

    def open_first(pooled: Pool) -> None:
        try:
            with map_exceptions():
                pooled.pool.open(wait=True, timeout=connect_timeout)
        except StoreUnavailable as exc:
            # The pool only says "initialization incomplete"; the reason (refused,
            # bad password, ...) is in its health record.
            raise StoreUnavailable(
                f"cannot connect to PostgreSQL at {where.get('host', '')}:"
                f"{where.get('port', '')}/{where.get('dbname', '')} "
                f"within {connect_timeout:g} s: {pooled.health.error or 'timed out'}",
                details=where,
            ) from exc

    first = spec.new()
    db: Database | None = None
    try:
        await trio.to_thread.run_sync(open_first, first)
        logger.info("gatewayd.db.opened", max_size=max_size, **where)
        async with trio.open_nursery() as nursery:
            db = Database(
                first,
                dsn,
                pool_size,
                timeout=connect_timeout,
                reopen=spec.reopen,
                native=NativeConnections(spec.connect_autocommit, native) if native else None,
            )
            await nursery.start(db._probe)
            try:
                yield db
            finally:
                nursery.cancel_scope.cancel()
    finally:
        # Also after a failed open: the pool's background workers must stop.
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(first.pool.close if db is None else db._close_all)
        if db is not None:
            logger.info("gatewayd.db.closed", **where)


def _autocommit_off(conn: Connection) -> None:
    """Back to transactions before the connection returns to the pool; one that cannot be
    (broken, or left inside a transaction) is closed, and the pool replaces it."""
    if conn.closed:
        return
    try:
        conn.autocommit = False
    except psycopg.Error:
        conn.close()
