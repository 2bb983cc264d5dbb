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
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TypeVar, TypeVarTuple

import attrs
import psycopg
import psycopg.conninfo
import structlog
import trio
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool

from gatewayd.errors import Conflict, StoreError, StoreUnavailable

__all__ = [
    "Connection",
    "Database",
    "DatabaseStatistics",
    "describe_dsn",
    "map_exceptions",
    "open_database",
]

logger = structlog.get_logger()

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

Connection = psycopg.Connection[TupleRow]
"""What a function passed to :meth:`Database.run` receives."""

# Detect a dead peer (a VPS whose database host vanished) in about a minute instead of
# the kernel's two hours; only applied where the DSN does not say otherwise.
_CONNECTION_DEFAULTS: dict[str, str | int] = {
    "application_name": "gatewayd",
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


@contextmanager
def map_exceptions() -> Iterator[None]:
    """Translate psycopg (and pool) exceptions into the project's store errors."""
    try:
        yield
    except psycopg.IntegrityError as exc:  # unique, foreign key, check, not-null
        raise Conflict(_message(exc), details=_details(exc)) from exc
    except psycopg.OperationalError as exc:  # includes PoolTimeout and PoolClosed
        raise StoreUnavailable(_message(exc), details=_details(exc)) from exc
    except psycopg.Error as exc:
        raise StoreError(_message(exc), details=_details(exc)) from exc


def _message(exc: psycopg.Error) -> str:
    # The primary message only: the DETAIL line may quote row values.
    primary = exc.diag.message_primary if isinstance(exc, psycopg.DatabaseError) else None
    return primary or str(exc).strip().split("\n", 1)[0] or type(exc).__name__


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
    """A connection pool usable from Trio. Obtain one with :func:`open_database`."""

    def __init__(self, pool: ConnectionPool[Connection], dsn: str, max_size: int) -> None:
        self._pool = pool
        self._dsn = dsn
        self._limiter = trio.CapacityLimiter(max_size)

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

    async def run(self, fn: Callable[[Connection, *Ts], T], *args: *Ts) -> T:
        """Run ``fn(conn, *args)`` in a worker thread inside one transaction.

        Committed when ``fn`` returns, rolled back when it raises. Cancellation waits
        for ``fn`` to finish: a transaction is never abandoned halfway.
        """

        def work() -> T:
            with map_exceptions(), self._pool.connection() as conn, conn.transaction():
                return fn(conn, *args)

        return await trio.to_thread.run_sync(work, limiter=self._limiter)

    async def run_autocommit(self, fn: Callable[[Connection, *Ts], T], *args: *Ts) -> T:
        """Run ``fn(conn, *args)`` in a worker thread on a connection in autocommit mode.

        For work that manages its own transactions or needs session state across them
        (migrations under an advisory lock, leases). ``fn`` must leave no session state
        behind: the connection goes back to the pool.
        """

        def work() -> T:
            with map_exceptions(), self._pool.connection() as conn:
                conn.autocommit = True  # the pool's reset callback turns it off again
                return fn(conn, *args)

        return await trio.to_thread.run_sync(work, limiter=self._limiter)

    # The timeout is a parameter (not the caller's cancel scope) because the worker
    # thread needs it too: it bounds the wait for a pool connection.
    async def ping(self, timeout: float) -> bool:  # noqa: ASYNC109
        """True if ``SELECT 1`` succeeds within ``timeout`` seconds.

        A hung database never hangs the caller: on timeout the worker thread is
        abandoned (it finishes, and frees its thread slot, whenever the database
        answers or the connection dies).
        """

        def work() -> str | None:
            try:
                with self._pool.connection(timeout=timeout) as conn:
                    conn.execute("SELECT 1")
            except psycopg.Error as exc:
                return _message(exc)
            return None

        with trio.move_on_after(timeout):
            error = await trio.to_thread.run_sync(
                work, limiter=self._limiter, abandon_on_cancel=True
            )
            if error is None:
                return True
            logger.warning("gatewayd.db.ping_failed", error=error)
            return False
        logger.warning("gatewayd.db.ping_timeout", timeout=timeout)
        return False

    def statistics(self) -> DatabaseStatistics:
        """Current pool and thread usage (cheap; safe to call from Trio)."""
        stats = self._pool.get_stats()
        return DatabaseStatistics(
            pool_size=stats.get("pool_size", 0),
            pool_available=stats.get("pool_available", 0),
            requests_waiting=stats.get("requests_waiting", 0),
            threads_busy=self._limiter.borrowed_tokens,
            threads_max=int(self._limiter.total_tokens),
        )


def _reset(conn: Connection) -> None:
    # Called by the pool on every returned connection, in idle state.
    conn.autocommit = False


@asynccontextmanager
async def open_database(
    dsn: str, *, min_size: int = 1, max_size: int = 10, connect_timeout: float = 5.0
) -> AsyncIterator[Database]:
    """Open a pool on ``dsn`` for the duration of the block.

    Raises StoreUnavailable if ``min_size`` connections cannot be made within
    ``connect_timeout`` seconds. The pool is closed on exit, also when cancelled.
    """
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    kwargs = {k: v for k, v in _CONNECTION_DEFAULTS.items() if k not in params}
    # libpq takes whole seconds and treats anything below 2 as 2.
    kwargs.setdefault("connect_timeout", max(2, math.ceil(connect_timeout)))
    pool: ConnectionPool[Connection] = ConnectionPool(
        dsn,
        kwargs=kwargs,
        min_size=min_size,
        max_size=max_size,
        open=False,
        name="gatewayd",
        timeout=connect_timeout,  # how long a caller waits for a connection
        check=ConnectionPool.check_connection,  # drop connections a DB restart killed
        reset=_reset,
    )

    where = describe_dsn(dsn)

    def open_pool() -> None:
        try:
            with map_exceptions():
                pool.open(wait=True, timeout=connect_timeout)
        except StoreUnavailable as exc:
            # The pool only says "initialization incomplete"; the reason (refused,
            # bad password, ...) is in its log records.
            raise StoreUnavailable(
                f"cannot connect to PostgreSQL at {where.get('host', '')}:"
                f"{where.get('port', '')}/{where.get('dbname', '')} "
                f"within {connect_timeout:g} s",
                details=where,
            ) from exc

    def close_pool() -> None:
        pool.close(timeout=5.0)

    opened = False
    try:
        await trio.to_thread.run_sync(open_pool)
        opened = True
        logger.info("gatewayd.db.opened", max_size=max_size, **where)
        yield Database(pool, dsn, max_size)
    finally:
        # Also after a failed open: the pool's background workers must stop.
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(close_pool)
        if opened:
            logger.info("gatewayd.db.closed", **where)
