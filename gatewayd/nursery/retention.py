"""Message retention: every hour, delete the messages older than
``analytics.retention_days`` (0 keeps them for ever), ``analytics.retention_batch`` rows per
transaction with a pause after each batch, so a large backlog never holds locks long nor
starves the inbound writer. The hourly rollups (sql/009_analytics) keep counting what is
deleted, so analytics and the session counts do not change.

Both settings are read on every round, so a SIGHUP changes them without a restart. A round
that finds the database down waits for it (gatewayd/store/retry.py) and carries on.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import structlog
import trio

from gatewayd.config import Config
from gatewayd.errors import StoreError
from gatewayd.store import analytics as analytics_store
from gatewayd.store.db import Database
from gatewayd.store.retry import wait_for_database

log = structlog.get_logger()

#: Seconds between two rounds.
INTERVAL = 3600.0
#: Seconds between two batches of one round: other writers get the table in between.
PAUSE = 1.0


async def run_retention(
    db: Database,
    settings: Callable[[], Config],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a round at once, then every ``INTERVAL`` seconds, for ever."""
    task_status.started()
    # Rounds start on a fixed schedule (start + k × interval), like gatewayd/nursery/cleanup.py.
    deadline = trio.current_time()
    while True:
        try:
            await retention_round(db, settings)
        except StoreError as exc:  # not an outage (waited out): a failed statement
            log.error("gatewayd.retention.failed", error=exc.message)
        deadline = max(deadline + INTERVAL, trio.current_time())
        await trio.sleep_until(deadline)


async def retention_round(db: Database, settings: Callable[[], Config]) -> int:
    """Delete the messages past retention, batch after batch until none is left; how many."""
    deleted = 0
    while True:
        analytics = settings().analytics
        if analytics.retention_days <= 0:
            break
        older_than = datetime.now(UTC) - timedelta(days=analytics.retention_days)
        batch = analytics.retention_batch
        n = await wait_for_database(
            db, functools.partial(analytics_store.delete_old_messages, db, older_than, batch)
        )
        deleted += n
        if n < batch:
            break
        await trio.sleep(PAUSE)
    if deleted:
        log.info("gatewayd.retention.deleted", count=deleted)
    return deleted
