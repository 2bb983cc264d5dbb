"""``gatewayd backup`` / ``gatewayd restore`` (docs/backup.md) with real processes and a real
PostgreSQL: the simulated network as its own process (``gatewayd simnet --state``), so the
phone side of every linked device outlives the wiped database, the daemon as a subprocess,
the CLI commands as subprocesses, and whatsmeow's device store created by neonize's real
library."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
import trio
from psycopg import sql
from psycopg.rows import dict_row
from starlette.applications import Starlette
from starlette.routing import Route

from gatewayd.backup import Server, find_pg_tools, open_server
from gatewayd.config import Config
from gatewayd.errors import StoreUnavailable
from gatewayd.store.embedded import EmbeddedPostgres
from gatewayd.whatsapp.neonize.backend import open_neonize_backend
from gatewayd.whatsapp.neonize.env import import_neonize
from tests.daemon import ROOT, Daemon
from tests.loopback import serve_app
from tests.test_api_v1 import basic, bearer
from tests.test_crash import start_echo_ai
from tests.test_neonize_stress import fake_device
from tests.test_simnet import link_agent, start_simnet, stop, wait_line, write_daemon_config
from tests.test_webhooks import Receiver

import_neonize()  # first, so neonize's import-time pipe leak is cleaned up (see neonize_env)


@pytest.fixture(autouse=True)
def neonize_logger_levels() -> Iterator[None]:
    """Opening neonize's backend sets its loggers' levels for the process; put them back, so
    that tests after these see logging as configured (tests/test_log.py)."""
    loggers = [logging.getLogger(name) for name in ("neonize", "whatsmeow", "Whatsmeow")]
    levels = [logger.level for logger in loggers]
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


CUSTOMER = "6281111111111"
DEVICE = "628111000777:3@s.whatsapp.net"


# --------------------------------------------------------------------------- helpers


def gatewayd(*args: str, umask: int | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m gatewayd ARGS`` with JSON logs (on stderr for these commands)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAYD_", "DB_", "PG"))} | {
        "GATEWAYD_LOG_FORMAT": "json"
    }

    def set_umask() -> None:
        if umask is not None:
            os.umask(umask)

    return subprocess.run(
        [sys.executable, "-m", "gatewayd", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=str(ROOT),
        preexec_fn=set_umask,
    )


async def cli(*args: str, umask: int | None = None) -> subprocess.CompletedProcess[str]:
    return await trio.to_thread.run_sync(lambda: gatewayd(*args, umask=umask))


def said(result: subprocess.CompletedProcess[str]) -> str:
    """What the command told the operator: stdout and the non-log lines of stderr."""
    plain = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    return result.stdout + "\n".join(plain)


def query(dsn: str, text: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(text.encode(), params).fetchall()


def contents(dsn: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table (gatewayd's and whatsmeow's), sorted: what a restore must
    bring back exactly."""
    out: dict[str, list[dict[str, Any]]] = {}
    with psycopg.connect(dsn) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_schema IN ('public', 'whatsmeow') AND table_type = 'BASE TABLE'"
        ).fetchall()
        for schema, table in tables:
            query = sql.SQL("SELECT * FROM {}.{}").format(
                sql.Identifier(schema), sql.Identifier(table)
            )
            rows = conn.cursor(row_factory=dict_row).execute(query).fetchall()
            out[f"{schema}.{table}"] = sorted(rows, key=repr)
    return out


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as archive:
        return {m.name: archive.extractfile(m).read() for m in archive}  # type: ignore[union-attr]


def rewrite(path: Path, target: Path, **changed: bytes) -> None:
    """A copy of the backup at ``path`` with some members' bytes replaced."""
    with tarfile.open(target, "w", format=tarfile.GNU_FORMAT) as out:
        for name, data in members(path).items():
            data = changed.get(name.replace(".", "_"), data)
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            out.addfile(info, io.BytesIO(data))


@contextmanager
def new_database(pg_server: EmbeddedPostgres, *, own_role: bool = False) -> Iterator[str]:
    """An empty database on the test server; its DSN. With ``own_role``, owned by a new role
    that is no superuser (as `createuser` and `createdb -O` make it), which the DSN names.
    Dropped afterwards."""
    name = f"restore_{uuid.uuid4().hex}"
    url = urlsplit(pg_server.dsn)
    netloc = url.netloc
    with psycopg.connect(pg_server.dsn, autocommit=True) as admin:
        owner = sql.SQL("")
        if own_role:
            password = uuid.uuid4().hex
            admin.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(name), sql.Literal(password)
                )
            )
            owner = sql.SQL(" OWNER {}").format(sql.Identifier(name))
            netloc = f"{name}:{password}@{url.hostname}:{url.port}"
        admin.execute(sql.SQL("CREATE DATABASE {}{}").format(sql.Identifier(name), owner))
    try:
        yield url._replace(netloc=netloc, path=f"/{name}").geturl()
    finally:
        with psycopg.connect(pg_server.dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
            if own_role:
                admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def config_for(tmp_path: Path, dsn: str, name: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f'[database]\nurl = "{dsn}"\ndata_dir = "{tmp_path / name}"\n\n[log]\nformat = "json"\n'
    )
    return path


async def add_device_store(dsn: str, *, embedded: bool) -> None:
    """whatsmeow's schema and tables, made by neonize's library, and one linked device."""
    async with open_neonize_backend(dsn, embedded=embedded, idle_session_timeout="1s"):
        pass
    await trio.to_thread.run_sync(fake_device, dsn, "whatsmeow", DEVICE)


async def known_devices(dsn: str, *, embedded: bool) -> frozenset[str]:
    """The devices neonize finds when it opens the store as it does at a daemon's start."""
    async with open_neonize_backend(dsn, embedded=embedded, idle_session_timeout="1s") as backend:
        return await backend.known_devices()


async def wait_quiet(dsn: str, inbound: int, deliveries: int) -> None:
    """Until ``inbound`` messages are handled and ``deliveries`` webhooks delivered."""
    handled = "SELECT count(*) FROM messages WHERE direction = 'inbound' AND handled_at IS NOT NULL"
    delivered = "SELECT count(*) FROM webhook_deliveries WHERE status = 'delivered'"
    with trio.fail_after(60):
        while True:
            done = await trio.to_thread.run_sync(query, dsn, handled)
            sent = await trio.to_thread.run_sync(query, dsn, delivered)
            if done[0][0] >= inbound and sent[0][0] >= deliveries:
                return
            await trio.sleep(0.1)


#: The daemon's settings: the echo AI, no send pacing, quick webhook polling.
ROUND_CONFIG = """
[ai]
backend_url = "{ai_url}"

[agents]
send_rate_per_minute = 1000000.0
send_burst = 100000

[webhooks]
timeout = 2.0
poll_interval = 0.1
allow_private_urls = true

[auth]
requests_per_minute = 100000
"""

#: Columns a daemon's start writes (agent ids, users and devices are compared, not these).
RUNTIME_WRITES = {
    "public.agents": ("agent_id", "name", "user_id", "api_key", "device_jid", "webhook_url"),
    "public.api_keys": ("id", "user_id", "key_hash", "prefix", "name", "is_active", "created_at"),
    "public.agent_status_history": (),
}


def project(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> list[tuple[Any, ...]]:
    return sorted((tuple(row[c] for c in columns) for row in rows), key=repr)


def statuses(daemon: Daemon, agent_id: str) -> list[str]:
    return [
        line["status"] for line in daemon.events("gatewayd.agent.status")
        if line.get("agentId") == agent_id
    ]  # fmt: skip


@contextmanager
def server_of(config: Path) -> Iterator[Server]:
    with open_server(Config.from_toml(config, {}), daemon_running="use", create=False) as server:
        yield server


# --------------------------------------------------------------------------- the whole round


async def test_backup_wipe_restore_and_the_agents_resume(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Linked agents (one of the agents API, one /api/v1 session with a webhook) send and
    receive; a /api/v1 user has an API key; whatsmeow's store holds a device. The backup is
    taken from the running daemon's embedded PostgreSQL; the data directory is wiped and the
    backup restored; the daemon starts and the agents are connected again without a new QR,
    with their history, the user, the old key and login, and the analytics as they were."""
    ai = await start_echo_ai(nursery)
    receiver = Receiver()
    receiver.url = await serve_app(
        nursery, Starlette(routes=[Route("/{path:path}", receiver.handle, methods=["POST"])])
    )
    started: list[Daemon] = []  # killed if the test fails halfway
    try:
        simnet = await start_simnet(nursery, tmp_path / "net.json")
        started.append(simnet)
        config = tmp_path / "gatewayd.toml"
        # No URL: the embedded PostgreSQL, in tmp_path / "data".
        write_daemon_config(config, "", simnet.base_url, ROUND_CONFIG.format(ai_url=ai.url))
        data_dir = tmp_path / "data"
        daemon = await Daemon.start(nursery, ["--config", str(config)])
        started.append(daemon)
        async with (
            httpx.AsyncClient(base_url=simnet.base_url, timeout=30) as sim,
            httpx.AsyncClient(base_url=daemon.base_url, timeout=30) as api,
        ):
            await link_agent(daemon, api, sim, "alpha", "628123450021")
            made = await api.post("/api/v1/auth/generate-pin")
            assert made.status_code == 201, made.text
            pin = made.json()["data"]["pin"]
            token = (await api.post("/api/v1/auth/login", headers=basic(pin))).json()["data"][
                "token"
            ]
            key = (
                await api.post("/api/v1/keys", json={"name": "ops"}, headers=bearer(token))
            ).json()
            key = key["data"]["key"]
            session = await api.post(
                "/api/v1/sessions",
                json={"session_name": "beta", "webhook_url": f"{receiver.url}/hook"},
                headers=bearer(key),
            )
            assert session.status_code == 201, session.text
            beta = session.json()["data"]["session_id"]
            assert (
                await api.post(f"/api/v1/sessions/{beta}/start", headers=bearer(key))
            ).is_success
            assert (
                await sim.post(f"/_sim/agents/{beta}/scan", json={"phone": "628123450022"})
            ).is_success
            await wait_line(daemon, "gatewayd.agent.status", agentId=beta, status="connected")
            for agent in ("alpha", beta):  # linked by QR: what a resume must not need again
                assert "awaiting_qr" in statuses(daemon, agent), statuses(daemon, agent)

            # Traffic both ways: replies from the AI, webhooks, a send through the API.
            for n in range(3):
                r = await sim.post(
                    "/_sim/agents/alpha/inject", json={"from": CUSTOMER, "text": f"a{n}"}
                )
                assert r.status_code == 200, r.text
            for n in range(2):
                r = await sim.post(
                    f"/_sim/agents/{beta}/inject", json={"from": CUSTOMER, "text": f"b{n}"}
                )
                assert r.status_code == 200, r.text
            sent = await api.post(
                f"/api/v1/sessions/{beta}/send",
                json={"to": CUSTOMER, "type": "text", "content": "from the API"},
                headers=bearer(key),
            )
            assert sent.status_code == 200, sent.text
            with server_of(config) as running:
                await add_device_store(running.dsn, embedded=True)
                await wait_quiet(running.dsn, inbound=5, deliveries=2)
                before = await trio.to_thread.run_sync(contents, running.dsn)
            history = (
                await api.get(f"/api/v1/sessions/{beta}/messages", headers=bearer(key))
            ).json()
            overview = (await api.get("/api/v1/analytics/overview", headers=bearer(key))).json()
            assert overview["data"]["total_messages_today"] >= 2

            # Backed up while the daemon runs, with a umask that would make any file public.
            backup = tmp_path / "gatewayd.backup"
            result = await cli("backup", str(backup), "--config", str(config), umask=0)
            assert result.returncode == 0, result.stderr
            assert stat.S_IMODE(backup.stat().st_mode) == 0o600
            assert "device keys" in said(result) and "1 WhatsApp device" in said(result)
            assert set(members(backup)) == {"database.pgdump", "auth.secret", "manifest.json"}

            await stop(daemon)
            shutil.rmtree(data_dir)
            result = await cli("restore", str(backup), "--config", str(config))
            assert result.returncode == 0, result.stderr
            assert "every row count as in the backup" in said(result)
            assert stat.S_IMODE((data_dir / "auth.secret").stat().st_mode) == 0o600
            # A second restore finds the database in use: refused, nothing touched.
            again = await cli("restore", str(backup), "--config", str(config))
            assert again.returncode == 2 and "is not empty" in said(again), again.stderr

        daemon = await Daemon.start(nursery, ["--config", str(config)])
        started.append(daemon)
        async with (
            httpx.AsyncClient(base_url=simnet.base_url, timeout=30) as sim,
            httpx.AsyncClient(base_url=daemon.base_url, timeout=30) as api,
        ):
            await wait_line(daemon, "gatewayd.agent.status", agentId="alpha", status="connected")
            await wait_line(daemon, "gatewayd.agent.status", agentId=beta, status="connected")
            for agent in ("alpha", beta):  # resumed with their devices: no QR was asked for
                assert (await sim.get(f"/_sim/agents/{agent}/qr")).json()["data"] is None
                assert statuses(daemon, agent)[-1] == "connected"
                assert not {"awaiting_qr", "qr"} & set(statuses(daemon, agent)), statuses(
                    daemon, agent
                )

            with server_of(config) as running:
                after = await trio.to_thread.run_sync(contents, running.dsn)
                assert await known_devices(running.dsn, embedded=True) == {DEVICE}
            for table, columns in RUNTIME_WRITES.items():
                # The restart itself writes these columns (statuses, connection stretches, key
                # use) and the status history; the rest of each row is as backed up.
                assert project(after.pop(table), columns) == project(before.pop(table), columns)
            assert after == before

            # The old key, the old login and the PIN work; history and analytics are intact.
            listed = await api.get("/api/v1/sessions", headers=bearer(key))
            assert listed.status_code == 200, listed.text
            assert [s["session_id"] for s in listed.json()["data"]] == [beta]
            assert (await api.get("/api/v1/sessions", headers=bearer(token))).status_code == 200
            assert (await api.post("/api/v1/auth/login", headers=basic(pin))).status_code == 200
            got = await api.get(f"/api/v1/sessions/{beta}/messages", headers=bearer(key))
            assert got.json() == history
            again = (await api.get("/api/v1/analytics/overview", headers=bearer(key))).json()
            assert {k: v for k, v in again["data"].items() if k != "active_sessions"} == {
                k: v for k, v in overview["data"].items() if k != "active_sessions"
            }
            # And it goes on: a new message is stored and answered.
            r = await sim.post(
                "/_sim/agents/alpha/inject", json={"from": CUSTOMER, "text": "after"}
            )
            assert r.status_code == 200, r.text
            with trio.fail_after(30):
                while "after" not in {text for _, text in ai.calls}:
                    await trio.sleep(0.05)
        await stop(daemon)
        await stop(simnet)
    finally:
        for process in started:
            process.kill()


# --------------------------------------------------------------------------- external server


async def test_an_external_database_round_trip_and_the_refusals(
    tmp_path: Path, pg_dsn: str, pg_server: EmbeddedPostgres
) -> None:
    """From and into a PostgreSQL server (database.url): the file is 0600; a restore into a
    database that holds anything is refused with exit code 2 and changes nothing; into an
    empty one, as a role that only owns that database, it brings back every row, whatsmeow's
    included, owned by that role."""
    config = config_for(tmp_path, pg_dsn, "source")
    assert (await cli("migrate", "up", "--config", str(config))).returncode == 0
    await add_device_store(pg_dsn, embedded=False)
    await trio.to_thread.run_sync(
        query,
        pg_dsn,
        "WITH a AS (INSERT INTO agents (agent_id, name, user_id, api_key, device_jid)"
        " VALUES ('ext', 'Ext', 'u1', 'k1', %s) RETURNING id)"
        " INSERT INTO messages (agent_id, direction, chat_jid, text, status)"
        " SELECT id, 'inbound', '628@s.whatsapp.net', 'kept', 'received' FROM a RETURNING id",
        DEVICE,
    )
    before = await trio.to_thread.run_sync(contents, pg_dsn)

    backup = tmp_path / "ext.backup"
    result = await cli("backup", str(backup), "--config", str(config), umask=0)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert "no auth secret (none generated yet)" in said(result)
    assert not (tmp_path / "source").exists()  # external: no data directory made

    refused = await cli("restore", str(backup), "--config", str(config))
    assert refused.returncode == 2, refused.stderr
    assert "is not empty (public.agent_status_history" in said(refused)
    assert await trio.to_thread.run_sync(contents, pg_dsn) == before

    with new_database(pg_server, own_role=True) as target_dsn:
        target = config_for(tmp_path, target_dsn, "target")
        result = await cli("restore", str(backup), "--config", str(target))
        assert result.returncode == 0, result.stderr
        assert await trio.to_thread.run_sync(contents, target_dsn) == before
        owners = await trio.to_thread.run_sync(
            query,
            target_dsn,
            "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class"
            " WHERE relnamespace = 'whatsmeow'::regnamespace",
        )
        assert owners == [(urlsplit(target_dsn).username,)]
        assert await known_devices(target_dsn, embedded=False) == {DEVICE}
        status = await cli("migrate", "status", "--config", str(target))
        assert "schema version 009: up to date" in status.stdout


async def test_a_restore_that_fails_midway_leaves_nothing(
    tmp_path: Path, pg_dsn: str, pg_server: EmbeddedPostgres
) -> None:
    """A dump cut short (pg_restore fails in the middle of the data) and a dump whose rows
    differ from its manifest (the check before COMMIT fails) both end in exit code 1 and an
    empty database: one transaction, never half a restore."""
    config = config_for(tmp_path, pg_dsn, "source")
    assert (await cli("migrate", "up", "--config", str(config))).returncode == 0
    await trio.to_thread.run_sync(
        query,
        pg_dsn,
        "INSERT INTO users (id) SELECT 'u' || n FROM generate_series(1, 500) n RETURNING id",
    )
    backup = tmp_path / "good.backup"
    assert (await cli("backup", str(backup), "--config", str(config))).returncode == 0
    parts = members(backup)
    manifest = json.loads(parts["manifest.json"])

    # Cut short in its data (the schema before it restores), with a manifest that matches
    # the cut dump: only pg_restore can notice, once the tables exist.
    cut = parts["database.pgdump"][:-300]
    dump = {**manifest["dump"], "bytes": len(cut), "sha256": hashlib.sha256(cut).hexdigest()}
    truncated = json.dumps({**manifest, "dump": dump}).encode()
    rewrite(backup, tmp_path / "cut.backup", database_pgdump=cut, manifest_json=truncated)
    # One row more in the manifest than in the dump: only the check before COMMIT notices.
    tables = [[s, t, n + 1 if t == "users" else n] for s, t, n in manifest["tables"]]
    miscounted = json.dumps({**manifest, "tables": tables}).encode()
    rewrite(backup, tmp_path / "count.backup", manifest_json=miscounted)

    for bad, why in (("cut.backup", "pg_restore"), ("count.backup", "holds 500 rows")):
        with new_database(pg_server) as target_dsn:
            target = config_for(tmp_path, target_dsn, "target")
            result = await cli("restore", str(tmp_path / bad), "--config", str(target))
            assert result.returncode == 1, result.stderr
            assert "nothing was restored" in said(result) and why in said(result), said(result)
            assert await trio.to_thread.run_sync(contents, target_dsn) == {}

    # A file that is not a backup, or whose dump does not match its checksum: refused.
    (tmp_path / "junk.backup").write_bytes(b"not a tar file" * 100)
    damaged = bytearray(parts["database.pgdump"])
    damaged[len(damaged) // 2] ^= 0xFF
    rewrite(backup, tmp_path / "flipped.backup", database_pgdump=bytes(damaged))
    newer = {**manifest, "schema_version": 999}
    rewrite(backup, tmp_path / "newer.backup", manifest_json=json.dumps(newer).encode())
    with new_database(pg_server) as target_dsn:
        target = config_for(tmp_path, target_dsn, "target")
        for bad, why in (
            ("junk.backup", "is not a gatewayd backup"),
            ("flipped.backup", "does not match the checksum"),
            ("newer.backup", "by a newer gatewayd"),
            ("missing.backup", "does not exist"),
        ):
            result = await cli("restore", str(tmp_path / bad), "--config", str(target))
            assert result.returncode == 2 and why in said(result), (bad, said(result))
        assert await trio.to_thread.run_sync(contents, target_dsn) == {}


async def test_backup_refuses_what_holds_no_gatewayd_data(tmp_path: Path, pg_dsn: str) -> None:
    """A database without gatewayd's tables, or an embedded data directory that does not
    exist, is exit code 2 and writes no file (nor creates the directory)."""
    empty = config_for(tmp_path, pg_dsn, "empty")
    result = await cli("backup", str(tmp_path / "x.backup"), "--config", str(empty))
    assert result.returncode == 2 and "holds no gatewayd data" in said(result), said(result)
    embedded = config_for(tmp_path, "", "nowhere")
    result = await cli("backup", str(tmp_path / "y.backup"), "--config", str(embedded))
    assert result.returncode == 2 and "there is no embedded database" in said(result)
    assert not (tmp_path / "nowhere").exists()
    assert sorted(p.name for p in tmp_path.glob("*.backup*")) == []


def test_the_tools_match_the_server() -> None:
    """pg_dump of the server's major version when one is installed, else the oldest newer one;
    none at all is a clear error naming what was found."""
    assert find_pg_tools(16).major == 16  # the pgserver wheel's
    assert find_pg_tools(14).major >= 14
    if Path("/usr/lib/postgresql/15/bin/pg_dump").exists():
        assert find_pg_tools(15).major == 15
        assert find_pg_tools(15, at_least=16).major == 16  # an archive of pg_dump 16
    with pytest.raises(StoreUnavailable, match="PostgreSQL 99 or newer"):
        find_pg_tools(99)
