"""`gatewayd migrate up|down [N]|status` against a real database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gatewayd.store.migrations import discover_migrations


def migrate(tmp_path: Path, pg_dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "gatewayd.toml"
    config.write_text(f'[database]\nurl = "{pg_dsn}"\n')
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
    assert result.stdout.count("pending") == len(shipped)
    result = migrate(tmp_path, pg_dsn, "up")
    assert result.returncode == 0, result.stderr
    assert sum(line.startswith("applied") for line in result.stdout.splitlines()) == len(shipped)
    assert "pending" not in result.stdout
    result = migrate(tmp_path, pg_dsn, "down", str(len(shipped)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("reverted") == len(shipped)
    assert result.stdout.count("pending") == len(shipped)


def test_migrate_reports_an_unreachable_database(tmp_path: Path) -> None:
    """An unreachable server is a one-line error and exit code 1, not a traceback."""
    result = migrate(tmp_path, "postgresql://nobody:x@127.0.0.1:1/none", "status")
    assert result.returncode == 1
    assert "cannot connect" in result.stderr and "Traceback" not in result.stderr
