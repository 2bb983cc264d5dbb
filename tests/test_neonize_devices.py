"""A linked account's name never stops the daemon: the device list is exact for any name.

Go's ``GetAllDevices`` answers ``jid,push_name,business_name,initialized`` records joined by
``|\\x01|`` and writes the names raw, so neonize's own ``get_all_devices_from_db`` (which splits
on ",") raises on a device named "Smith, John". The devices below are written into the real
``whatsmeow`` schema, created by neonize's real library in the embedded PostgreSQL.
"""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import psycopg
import pytest
import trio
from psycopg import sql

from gatewayd.errors import StoreUnavailable
from gatewayd.store import agents as agents_store
from gatewayd.store.db import Database
from gatewayd.whatsapp.neonize.backend import open_neonize_backend, upgrade_whatsmeow_schema
from gatewayd.whatsapp.neonize.env import import_neonize
from tests.daemon import Daemon
from tests.test_daemon import write_config
from tests.test_neonize_stress import fake_device

import_neonize()  # first, so neonize's import-time pipe leak is cleaned up (see neonize_env)

ODD = "628111000333:4@s.whatsapp.net"
PLAIN = "628111000444:2@s.whatsapp.net"
PUSH_NAME = 'Smith, John "JJ"\nsecond line, |\x01| still the name'
BUSINESS_NAME = 'Smith, Jones & Co., "Ltd"\r\n,true|\x01|'


def _store_odd_devices(dsn: str, schema: str = "whatsmeow") -> None:
    """Two devices; one whose push and business names contain commas, quotes and newlines."""
    fake_device(dsn, schema, ODD)
    fake_device(dsn, schema, PLAIN)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "UPDATE {}.whatsmeow_device SET push_name = %s, business_name = %s WHERE jid = %s"
            ).format(sql.Identifier(schema)),
            (PUSH_NAME, BUSINESS_NAME, ODD),
        )


async def test_odd_names_neither_fail_the_store_nor_hide_a_device(pg_dsn: str) -> None:
    """A store holding names with commas, quotes and newlines opens and lists every device."""
    from neonize.client import ClientFactory

    async with open_neonize_backend(pg_dsn, embedded=True, idle_session_timeout="1s") as backend:
        url = backend.store.url
    _store_odd_devices(pg_dsn)
    # The defect: neonize's own reader cannot parse Go's answer for this store.
    with pytest.raises(ValueError):
        await trio.to_thread.run_sync(ClientFactory.get_all_devices_from_db, url)
    async with open_neonize_backend(pg_dsn, embedded=True, idle_session_timeout="1s") as backend:
        assert await backend.known_devices() == {ODD, PLAIN}
        assert await backend.device_known(ODD)


async def test_an_unreachable_store_is_store_unavailable_without_its_password() -> None:
    """Go's "error:" answer is the only failure: StoreUnavailable, its reason, no password."""
    url = "postgres://someone:pa%2Fss-word-7@127.0.0.1:1/nowhere?sslmode=disable"
    with pytest.raises(StoreUnavailable) as info:
        await trio.to_thread.run_sync(upgrade_whatsmeow_schema, url, "whatsmeow")
    assert "connection refused" in info.value.message
    assert "pa/ss-word-7" not in info.value.message and "pa%2Fss" not in info.value.message
    assert info.value.details == {"schema": "whatsmeow"}


async def test_daemon_starts_and_resumes_a_device_with_an_odd_name(
    pg_dsn: str, database: Database, tmp_path: Path
) -> None:
    """`gatewayd run` (neonize) starts with that device stored and its agent tries to connect it."""
    async with open_neonize_backend(pg_dsn, embedded=False):
        pass  # the real library creates its schema, as a first daemon start would
    _store_odd_devices(pg_dsn)
    record = await agents_store.create_agent(
        database, agent_id="smith", name="Smith", user_id="u-1", api_key="k" * 32
    )
    await agents_store.set_device(database, record.id, device_jid=ODD, phone_number="628111000333")
    config = tmp_path / "gatewayd.toml"
    write_config(config, pg_dsn)
    async with trio.open_nursery() as nursery:
        daemon = await Daemon.start(
            nursery,
            ["--config", str(config), "--whatsapp", "neonize"],
            {"NEONIZE_BOT_TAG": "off"},
        )
        # Offline, the resume reaches Go with that JID and fails at the DNS lookup.
        status = await daemon.wait_for("gatewayd.agent.status", timeout=60)
        while status.get("status") != "disconnected":
            index = daemon.lines.index(status) + 1
            status = await daemon.wait_for("gatewayd.agent.status", after=index, timeout=60)
        assert status["agentId"] == "smith" and "web.whatsapp.com" in status["reason"]
        async with httpx.AsyncClient(base_url=daemon.base_url) as http:
            assert (await http.get("/health")).status_code in (200, 503)
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0
    # Still stored: the daemon never took it for a logged-out device.
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute("SELECT device_jid FROM agents WHERE agent_id = 'smith'").fetchone()
        assert row == (ODD,)
        jids = conn.execute("SELECT jid FROM whatsmeow.whatsmeow_device").fetchall()
        assert {j for (j,) in jids} == {ODD, PLAIN}
    # One log stream: everything the daemon wrote is a JSON line (Go's prints included).
    assert [line for line in daemon.raw if line.strip() and not line.startswith("{")] == []
