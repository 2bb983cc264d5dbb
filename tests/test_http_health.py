"""/health's database reading (gatewayd/http/routes_ops.py ``DatabaseHealth``): at most one
ping per interval however often it is asked, shared by concurrent askers, and a database
that stops is reported within the interval.

Real PostgreSQL throughout. The clock is trio's MockClock with autojump off
(``autojump_threshold = inf``): a ping runs in a worker thread, which the virtual clock would
not wait for, so time moves only when the test jumps it.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import attrs
import trio
import trio.testing

from gatewayd.http.routes_ops import HEALTH_INTERVAL, DatabaseHealth, Reading
from gatewayd.store.db import Database, open_database
from gatewayd.store.embedded import EmbeddedPostgres


@attrs.define
class Counted:
    """The real database, with its pings counted."""

    db: Database
    pings: int = 0

    @property
    def available(self) -> bool:
        return self.db.available

    async def ping(self, timeout: float) -> bool:  # noqa: ASYNC109
        self.pings += 1
        return await self.db.ping(timeout)


def health_of(db: Database) -> tuple[DatabaseHealth, Counted]:
    counted = Counted(db)
    return DatabaseHealth(counted, lambda: 2.0), counted


async def read_all(health: DatabaseHealth, askers: int) -> list[Reading]:
    readings: list[Reading] = []

    async def ask() -> None:
        readings.append(await health.read())

    async with trio.open_nursery() as nursery:
        for _ in range(askers):
            nursery.start_soon(ask)
    return readings


async def test_concurrent_askers_share_one_ping(
    database: Database, autojump_clock: trio.testing.MockClock
) -> None:
    """100 requests at once: one ping, one reading for all."""
    autojump_clock.autojump_threshold = math.inf
    health, counted = health_of(database)
    readings = await read_all(health, 100)
    assert counted.pings == 1
    assert len(readings) == 100 and all(r is readings[0] for r in readings)
    assert readings[0].up


async def test_at_most_one_ping_per_interval_however_often_asked(
    database: Database, autojump_clock: trio.testing.MockClock
) -> None:
    """Asked every millisecond for two seconds, the database is pinged once per interval."""
    autojump_clock.autojump_threshold = math.inf
    health, counted = health_of(database)
    for _ in range(2000):
        assert (await health.read()).up
        autojump_clock.jump(0.001)
    assert counted.pings == math.ceil(2.0 / HEALTH_INTERVAL)
    # Within the interval the reading answers; once it is over, the next asker pings.
    before = counted.pings
    autojump_clock.jump(HEALTH_INTERVAL)
    await health.read()
    autojump_clock.jump(HEALTH_INTERVAL / 2)
    await health.read()
    assert counted.pings == before + 1


async def test_a_cancelled_asker_leaves_the_others_a_reading(
    pg_dsn: str, autojump_clock: trio.testing.MockClock
) -> None:
    """The request whose ping another waits for goes away: the other one pings instead."""
    autojump_clock.autojump_threshold = math.inf
    release = threading.Event()
    async with open_database(pg_dsn, min_size=1, max_size=1) as db:
        health, counted = health_of(db)
        readings: list[Reading] = []
        gone = trio.CancelScope()

        async def leaves() -> None:
            with gone:
                await health.read()

        async def stays() -> None:
            readings.append(await health.read())

        try:
            async with trio.open_nursery() as nursery:
                # The pool's one connection is busy: a ping waits for it.
                nursery.start_soon(db.run, lambda conn: release.wait())
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(leaves)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(stays)
                await trio.testing.wait_all_tasks_blocked()
                assert counted.pings == 1  # the second asker waits for the first one's ping
                gone.cancel()
                await trio.testing.wait_all_tasks_blocked()
                assert counted.pings == 2 and readings == []  # it pings now, and waits
                release.set()
        finally:
            release.set()
        assert len(readings) == 1 and readings[0].up


async def test_a_stopped_database_is_reported_within_the_interval(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """PostgreSQL stops: the reading from before answers until its interval is over, then
    the next ping finds it down, and the breaker that ping opened answers at once after."""
    autojump_clock.autojump_threshold = math.inf
    server = EmbeddedPostgres(tmp_path / "pg")
    dsn = await trio.to_thread.run_sync(server.start)
    try:
        async with open_database(dsn, min_size=1, max_size=2) as db:
            health, counted = health_of(db)
            assert (await health.read()).up
            await trio.to_thread.run_sync(server.stop)
            autojump_clock.jump(HEALTH_INTERVAL / 2)
            assert (await health.read()).up  # the bound: not older than the interval
            autojump_clock.jump(HEALTH_INTERVAL / 2)
            down = await health.read()
            assert not down.up
            assert counted.pings == 2
            assert not db.available  # the failed ping opened the breaker
            for _ in range(10):
                assert not (await health.read()).up
            assert counted.pings == 2  # nothing pinged while the breaker is open
    finally:
        await trio.to_thread.run_sync(server.stop)
