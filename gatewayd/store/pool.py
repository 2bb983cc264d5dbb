"""One generation of psycopg's connection pool, and fast failure when the server is gone.

:class:`~gatewayd.store.db.Database` replaces its pool whole when the server comes
back after an outage (psycopg_pool's own reconnection backs off from 1 s, doubling),
so a pool here is made, opened and closed as a unit: :class:`PoolSpec` says how,
:class:`Pool` is one of them with the :class:`Health` record of its connection
attempts, and :func:`borrow` lends a connection, giving up as soon as those attempts
fail instead of at the end of the pool's timeout. Blocking: worker threads only.
"""

from __future__ import annotations

import math
import select
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, Self

import attrs
import psycopg
import psycopg.conninfo
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool, PoolTimeout

__all__ = [
    "Connection",
    "Health",
    "Pool",
    "PoolSpec",
    "borrow",
    "ended_by_server",
    "error_message",
]

Connection = psycopg.Connection[TupleRow]
"""What a function passed to :meth:`~gatewayd.store.db.Database.run` receives."""

# Detect a dead peer (a VPS whose database host vanished) in about a minute instead of
# the kernel's two hours; only applied where the DSN does not say otherwise.
_CONNECTION_DEFAULTS: dict[str, str | int] = {
    "application_name": "gatewayd",
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}

#: How often a caller waiting for a pool connection looks at the pool's health.
WAIT_SLICE = 0.1
#: A connection idle for longer is checked (an empty query) before it is lent again.
CHECK_AFTER_IDLE = 1.0


def error_message(exc: psycopg.Error) -> str:
    """PostgreSQL's primary message (for the log: never for clients)."""
    # The primary message only: the DETAIL line may quote row values.
    primary = exc.diag.message_primary if isinstance(exc, psycopg.DatabaseError) else None
    return primary or str(exc).strip().split("\n", 1)[0] or type(exc).__name__


class Health:
    """How a pool's own connection attempts went; written by its worker threads."""

    def __init__(self) -> None:
        self.failed_at = 0.0
        self.succeeded_at = 0.0
        self.error = ""  # PostgreSQL's words: for the log only

    def failing(self) -> bool:
        """The pool's last connection attempt failed, and none succeeded since."""
        return self.failed_at > self.succeeded_at


def _reporting_class(health: Health) -> type[Connection]:
    """A connection class that records each connection attempt in ``health``."""

    class ReportingConnection(psycopg.Connection[TupleRow]):
        #: time.monotonic() when it was last given back (0: never lent).
        returned_at = 0.0

        @classmethod
        def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
            try:
                conn = super().connect(conninfo, **kwargs)
            except psycopg.OperationalError as exc:
                health.error = error_message(exc)
                health.failed_at = time.monotonic()
                raise
            health.succeeded_at = time.monotonic()
            return conn

    return ReportingConnection


@attrs.frozen(eq=False)
class Pool:
    """One generation of the pool, with the record of its connection attempts."""

    pool: ConnectionPool[Connection]
    health: Health


def _check_if_idle(conn: Connection) -> None:
    """The pool's check of a connection it is about to lend: an empty query, to drop one a
    database restart or ``pg_terminate_backend`` killed; but for a connection given back
    less than ``CHECK_AFTER_IDLE`` s ago, only if the server has sent something since (a
    server ending a session says so, or at least closes the socket: it becomes readable;
    an idle session otherwise gets nothing, as gatewayd never LISTENs). Checking every
    connection cost a round trip per store call, a good part of each under load
    (docs/benchmarks.md)."""
    idle = time.monotonic() - getattr(conn, "returned_at", 0.0)
    if idle > CHECK_AFTER_IDLE or ended_by_server(conn):
        ConnectionPool.check_connection(conn)


def ended_by_server(conn: Connection) -> bool:
    """The server has sent something to an idle session: it is ending it (a restart,
    ``pg_terminate_backend``), since gatewayd never LISTENs."""
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    return bool(poller.poll(0))


@attrs.frozen
class PoolSpec:
    """Everything needed to make (and remake) the pool of one DSN."""

    dsn: str
    kwargs: dict[str, str | int]
    min_size: int
    max_size: int
    connect_timeout: float

    @classmethod
    def for_dsn(cls, dsn: str, *, min_size: int, max_size: int, connect_timeout: float) -> PoolSpec:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
        kwargs = {k: v for k, v in _CONNECTION_DEFAULTS.items() if k not in params}
        # libpq takes whole seconds and treats anything below 2 as 2.
        kwargs.setdefault("connect_timeout", max(2, math.ceil(connect_timeout)))
        return cls(dsn, kwargs, min_size, max_size, connect_timeout)

    def new(self) -> Pool:
        """A pool not yet opened."""
        health = Health()
        pool: ConnectionPool[Connection] = ConnectionPool(
            self.dsn,
            connection_class=_reporting_class(health),
            kwargs=self.kwargs,
            min_size=self.min_size,
            max_size=self.max_size,
            open=False,
            name="gatewayd",
            timeout=self.connect_timeout,  # how long a caller waits for a connection
            # No ``reset``: with one, psycopg_pool hands every returned connection to its
            # worker thread first (a thread switch per call); run_autocommit resets its own.
            check=_check_if_idle,
        )
        return Pool(pool, health)

    def connect_autocommit(self) -> Connection:
        """A connection of its own, in autocommit (blocking)."""
        conninfo = psycopg.conninfo.make_conninfo(self.dsn, **self.kwargs)
        return psycopg.Connection.connect(conninfo, autocommit=True)

    def reopen(self) -> Pool | None:
        """A new, open pool if the server answers now; else None, quickly."""
        # A direct connection first: refused at once while the server is down, where
        # opening a pool would wait out its timeout.
        try:
            psycopg.connect(psycopg.conninfo.make_conninfo(self.dsn, **self.kwargs)).close()
        except psycopg.Error:
            return None
        pooled = self.new()
        try:
            pooled.pool.open(wait=True, timeout=self.connect_timeout)
        except psycopg.Error:
            pooled.pool.close()
            return None
        return pooled


@contextmanager
def borrow(pooled: Pool, timeout: float) -> Iterator[Connection]:
    """A connection of ``pooled`` within ``timeout`` s, else PoolTimeout.

    psycopg_pool keeps a caller waiting for its whole timeout while its own attempts
    to connect are refused; looking at the pool's health between short waits turns
    a dead server into an error within about WAIT_SLICE. A server that is merely
    slow to accept connections still gets the whole timeout.
    """
    deadline = time.monotonic() + timeout
    with ExitStack() as stack:
        while True:
            wait = max(min(WAIT_SLICE, deadline - time.monotonic()), 0.001)
            try:
                conn = stack.enter_context(pooled.pool.connection(timeout=wait))
            except PoolTimeout:
                if pooled.health.failing():
                    raise PoolTimeout(f"the pool cannot connect: {pooled.health.error}") from None
                if time.monotonic() >= deadline:
                    raise PoolTimeout(f"no connection within {timeout:g} s") from None
                continue
            break
        try:
            yield conn
        finally:
            conn.returned_at = time.monotonic()  # type: ignore[attr-defined]
