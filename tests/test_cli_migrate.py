"""`gatewayd migrate up|down [N]|status` against a real database, and what status tells an
operator before an upgrade."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import trio

from gatewayd.store.db import open_database
from gatewayd.store.embedded import EmbeddedPostgres
from gatewayd.store.migrations import MIGRATIONS_TABLE, discover_migrations, migrate_up, summary


def migrate(tmp_path: Path, pg_dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "gatewayd.toml"
    config.write_text(f'[database]\nurl = "{pg_dsn}"\n')
    return run_cli(config, *args)


def run_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatewayd", "migrate", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=_environ_without_db_overrides(),
    )


def _environ_without_db_overrides() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("DB_URL", "GATEWAYD_DATABASE_URL")}


def test_migrate_status_up_down(tmp_path: Path, pg_dsn: str) -> None:
    """status lists pending migrations, up applies them, down N reverts N, newest first."""
    shipped = discover_migrations()
    result = migrate(tmp_path, pg_dsn, "status")
    assert result.returncode == 0, result.stderr
    table = [line for line in result.stdout.splitlines() if line[:3].isdigit()]
    assert [line.split()[-1] for line in table] == ["pending"] * len(shipped)
    result = migrate(tmp_path, pg_dsn, "up")
    assert result.returncode == 0, result.stderr
    assert sum(line.startswith("applied") for line in result.stdout.splitlines()) == len(shipped)
    assert "pending" not in result.stdout and "up to date" in result.stdout
    result = migrate(tmp_path, pg_dsn, "down", str(len(shipped)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("reverted") == len(shipped)
    table = [line for line in result.stdout.splitlines() if line[:3].isdigit()]
    assert [line.split()[-1] for line in table] == ["pending"] * len(shipped)


def test_status_says_what_an_upgrade_will_do(tmp_path: Path, pg_dsn: str) -> None:
    """At version 5 of 9: the schema version, then the four pending migrations in the order
    they are applied, each with what it does (its SQL file's leading comment)."""
    shipped = discover_migrations()
    assert migrate(tmp_path, pg_dsn, "up", "5").returncode == 0
    result = migrate(tmp_path, pg_dsn, "status")
    assert result.returncode == 0, result.stderr
    report = result.stdout.splitlines()[len(shipped) :]
    latest = shipped[-1].version
    assert report[0].startswith(
        f"schema version 005, this gatewayd's is {latest:03d}: an upgrade applies "
        f"{latest - 5} migrations, in this order"
    )
    assert report[1:-1] == [f"  {m.version:03d}_{m.name}: {summary(m)}" for m in shipped[5:]]
    assert report[1] == (
        "  006_agent_names: two agents of one user may share a name (agentName is a label, as "
        "in the deployed service; agent_id and id identify an agent)."
    )
    assert "gatewayd backup" in report[-1]


def test_status_of_a_newer_database_says_this_version_cannot_run_on_it(
    tmp_path: Path, pg_dsn: str
) -> None:
    """A migration this gatewayd does not know (a newer one applied it) is named."""
    assert migrate(tmp_path, pg_dsn, "up").returncode == 0
    with psycopg.connect(pg_dsn) as conn:
        conn.execute(f"INSERT INTO {MIGRATIONS_TABLE} (version, name) VALUES (99, 'future')")
    result = migrate(tmp_path, pg_dsn, "status")
    assert result.returncode == 0, result.stderr
    assert "099_future that this gatewayd does not know" in result.stdout
    assert "will not start on it" in result.stdout


def test_status_reads_the_embedded_database_of_a_running_daemon(tmp_path: Path) -> None:
    """With no data directory yet, status says so and creates none; with the embedded
    PostgreSQL held by another process (a running daemon), status reads it through that
    server, while up stays refused."""
    config = tmp_path / "gatewayd.toml"
    config.write_text(f'[database]\ndata_dir = "{tmp_path / "data"}"\n')
    result = run_cli(config, "status")
    assert result.returncode == 0, result.stderr
    shipped = len(discover_migrations())
    assert "no database yet in" in result.stdout
    assert f"applies {shipped} migrations" in result.stdout
    assert not (tmp_path / "data").exists()

    server = EmbeddedPostgres(tmp_path / "data")
    dsn = server.start()
    try:
        trio.run(migrate_to, dsn, 3)
        result = run_cli(config, "status")
        assert result.returncode == 0, result.stderr
        assert "schema version 003, this gatewayd's is" in result.stdout
        result = run_cli(config, "up")
        assert result.returncode == 1 and "already running" in result.stderr
    finally:
        server.stop()


async def migrate_to(dsn: str, version: int) -> None:
    async with open_database(dsn, max_size=1) as db:
        await migrate_up(db, target=version)


def test_migrate_reports_an_unreachable_database(tmp_path: Path) -> None:
    """An unreachable server is a one-line error and exit code 1, not a traceback."""
    result = migrate(tmp_path, "postgresql://nobody:x@127.0.0.1:1/none", "status")
    assert result.returncode == 1
    assert "cannot connect" in result.stderr and "Traceback" not in result.stderr
