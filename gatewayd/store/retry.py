"""Background work that must not fail because the database is briefly away.

HTTP requests fail fast with 503 while PostgreSQL is down; work nobody waits for (storing a
received message, recording a status or a send) waits for the database instead and then
carries on, so an outage delays it but loses nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from gatewayd.errors import StoreUnavailable
from gatewayd.store.db import Database

__all__ = ["wait_for_database"]

log = structlog.get_logger()

T = TypeVar("T")


async def wait_for_database(db: Database, call: Callable[[], Awaitable[T]]) -> T:
    """``await call()``, again and again while it fails with StoreUnavailable."""
    while True:
        try:
            return await call()
        except StoreUnavailable:
            log.warning("gatewayd.db.waiting")
            await db.wait_available()
