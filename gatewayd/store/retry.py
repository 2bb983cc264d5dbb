"""Background work that must not fail because the database is briefly away.

HTTP requests fail fast with 503 while PostgreSQL is down; work nobody waits for (storing a
received message, recording a status or a send) waits for the database instead and then
carries on, so an outage delays it but loses nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
import trio

from gatewayd.errors import StoreUnavailable
from gatewayd.nursery.backoff import Backoff
from gatewayd.store.db import Database

__all__ = ["after_unavailable", "wait_for_database"]

log = structlog.get_logger()

T = TypeVar("T")


async def wait_for_database(db: Database, call: Callable[[], Awaitable[T]]) -> T:
    """``await call()``, again and again while it fails with StoreUnavailable.

    During an outage it waits for the database to be back; a transient failure that is not
    an outage (a statement or lock timeout) is retried after a growing pause instead.
    """
    backoff: Backoff | None = None
    while True:
        try:
            return await call()
        except StoreUnavailable:
            if not db.available:
                log.warning("gatewayd.db.waiting")
                await db.wait_available()
                continue
            backoff = backoff or Backoff(0.1, 5.0)
            await trio.sleep(backoff.next())


async def after_unavailable(db: Database, pause: float = 0.5) -> None:
    """After a StoreUnavailable: wait for the database if it is down, else pause a little."""
    if db.available:
        await trio.sleep(pause)
    else:
        await db.wait_available()
