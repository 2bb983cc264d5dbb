"""Schema migrations: numbered SQL files, applied in order, recorded in a table.

Files are ``sql/NNN_name.up.sql`` and ``sql/NNN_name.down.sql``; numbers start at 001
and have no gaps. The wheel ships them as ``gatewayd/sql`` (hatch force-include); in
a source checkout they are read from the top-level ``sql/``.

Each migration runs in its own transaction together with its row in
``gatewayd_schema_migrations``, so a failed migration leaves neither a trace nor a
record. A whole run holds a PostgreSQL advisory lock on its connection: two processes
never migrate at once, and the second one, once it gets the lock, finds nothing to do.
A migration therefore cannot use statements that refuse a transaction block (such as
``CREATE INDEX CONCURRENTLY``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

import attrs
import psycopg
import structlog
import trio

from gatewayd.errors import StoreError
from gatewayd.store.db import Connection, Database

__all__ = [
    "LOCK_KEY",
    "MIGRATIONS_TABLE",
    "Migration",
    "MigrationStatus",
    "apply_down",
    "apply_up",
    "describe_status",
    "discover_migrations",
    "migrate_down",
    "migrate_up",
    "migration_status",
    "migrations_dir",
    "read_status",
    "summary",
]

logger = structlog.get_logger()

MIGRATIONS_TABLE = "gatewayd_schema_migrations"
# The advisory lock key of a migration run: the first 8 bytes of
# sha256(b"gatewayd.schema_migrations") as a signed bigint. Fixed forever, so every
# gatewayd version excludes every other.
LOCK_KEY = -1767144439799647435

_LOCK_POLL = 0.1  # seconds between attempts while another process migrates
_FILE_RE = re.compile(r"^(?P<version>\d{3})_(?P<name>[a-z0-9][a-z0-9_]*)\.(?P<kind>up|down)\.sql$")


@attrs.frozen
class Migration:
    """One numbered migration and its SQL in both directions."""

    version: int
    name: str
    up_sql: str = attrs.field(repr=False)
    down_sql: str = attrs.field(repr=False)


@attrs.frozen
class MigrationStatus:
    """Whether a migration is applied, and since when."""

    version: int
    name: str
    applied_at: datetime | None

    @property
    def applied(self) -> bool:
        return self.applied_at is not None


def migrations_dir() -> Traversable:
    """Where the migrations of this installation are."""
    packaged = files("gatewayd") / "sql"  # wheel: force-included next to the code
    if packaged.is_dir():
        return packaged
    # Source checkout or editable install: the repository's top-level sql/.
    return Path(__file__).resolve().parents[2] / "sql"


def discover_migrations(directory: Traversable | None = None) -> list[Migration]:
    """Read and validate the migrations in ``directory`` (default: :func:`migrations_dir`).

    Raises StoreError when a file name is malformed, a pair is incomplete, a number
    is used twice, or the numbers do not run 1, 2, 3, ... without a gap.
    """
    directory = migrations_dir() if directory is None else directory
    if not directory.is_dir():
        raise StoreError(f"migrations directory {directory} does not exist")
    found: dict[int, dict[str, tuple[str, str]]] = {}  # version -> kind -> (name, sql)
    names: dict[int, set[str]] = {}
    for entry in directory.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE_RE.match(entry.name)
        if match is None:
            raise StoreError(
                f"migration file {entry.name!r} is not named NNN_name.up.sql / NNN_name.down.sql"
            )
        version, name, kind = int(match["version"]), match["name"], match["kind"]
        names.setdefault(version, set()).add(name)
        found.setdefault(version, {})[kind] = (name, entry.read_text(encoding="utf-8"))
    migrations = []
    for version in sorted(found):
        if len(names[version]) > 1:
            raise StoreError(
                f"migration number {version:03d} is used twice: {sorted(names[version])}"
            )
        pair = found[version]
        for kind in ("up", "down"):
            if kind not in pair:
                (name, _) = next(iter(pair.values()))
                raise StoreError(f"migration {version:03d}_{name} has no .{kind}.sql file")
        migrations.append(
            Migration(version, pair["up"][0], up_sql=pair["up"][1], down_sql=pair["down"][1])
        )
    _check_sequence(migrations, where=str(directory))
    return migrations


def _check_sequence(migrations: Sequence[Migration], *, where: str = "the given list") -> None:
    if not migrations:
        raise StoreError(f"no migrations found in {where}")
    versions = [m.version for m in migrations]
    expected = list(range(1, len(migrations) + 1))
    if versions != expected:
        raise StoreError(
            f"migration numbers in {where} must run 1..{len(migrations)} without gaps or "
            f"duplicates, got {[f'{v:03d}' for v in versions]}"
        )


# -- async API ---------------------------------------------------------------------------


async def migrate_up(
    db: Database, target: int | None = None, *, migrations: Sequence[Migration] | None = None
) -> list[Migration]:
    """Apply pending migrations up to ``target`` (default: all); return those applied.

    Waits (cancellably) while another process migrates the same database.
    """
    chosen = _chosen(migrations)
    return await db.run_autocommit(apply_up, chosen, target, trio.from_thread.check_cancelled)


async def migrate_down(
    db: Database, steps: int = 1, *, migrations: Sequence[Migration] | None = None
) -> list[Migration]:
    """Revert the ``steps`` most recent migrations; return those reverted, newest first."""
    chosen = _chosen(migrations)
    return await db.run_autocommit(apply_down, chosen, steps, trio.from_thread.check_cancelled)


async def migration_status(
    db: Database, *, migrations: Sequence[Migration] | None = None
) -> list[MigrationStatus]:
    """Every known migration (and any applied one this version does not know), in order."""
    return await db.run(read_status, _chosen(migrations))


def _chosen(migrations: Sequence[Migration] | None) -> list[Migration]:
    if migrations is None:
        return discover_migrations()
    chosen = sorted(migrations, key=lambda m: m.version)
    _check_sequence(chosen)
    return chosen


# -- sync core: runs in a worker thread on one connection in autocommit mode -------------


def apply_up(
    conn: Connection,
    migrations: Sequence[Migration],
    target: int | None = None,
    checkpoint: Callable[[], None] | None = None,
) -> list[Migration]:
    """Apply pending migrations (up to ``target``) on ``conn``, which must be in autocommit.

    ``checkpoint`` is called while waiting for the lock; it may raise to give up.
    """
    if target is not None and target < 0:
        raise ValueError(f"target must be >= 0, got {target}")
    applied_now: list[Migration] = []
    with _migration_lock(conn, checkpoint):
        _ensure_table(conn)
        applied = _applied(conn)
        known = {m.version: m for m in migrations}
        unknown = sorted(set(applied) - set(known))
        if unknown:
            raise StoreError(
                f"the database has migration(s) {unknown} that this gatewayd does not know: "
                "the schema is newer than this version of gatewayd"
            )
        for m in migrations:
            if m.version in applied or (target is not None and m.version > target):
                continue
            started = time.monotonic()
            with conn.transaction():
                conn.execute(m.up_sql.encode())  # bytes: no parameter parsing, many statements
                conn.execute(
                    f"INSERT INTO {MIGRATIONS_TABLE} (version, name) VALUES (%s, %s)",
                    (m.version, m.name),
                )
            logger.info(
                "gatewayd.db.migrations.applied",
                version=m.version,
                name=m.name,
                duration_ms=round((time.monotonic() - started) * 1000),
            )
            applied_now.append(m)
    return applied_now


def apply_down(
    conn: Connection,
    migrations: Sequence[Migration],
    steps: int = 1,
    checkpoint: Callable[[], None] | None = None,
) -> list[Migration]:
    """Revert the ``steps`` most recent migrations on ``conn`` (in autocommit)."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    reverted: list[Migration] = []
    with _migration_lock(conn, checkpoint):
        _ensure_table(conn)
        known = {m.version: m for m in migrations}
        for version in sorted(_applied(conn), reverse=True)[:steps]:
            m = known.get(version)
            if m is None:
                raise StoreError(
                    f"cannot revert migration {version}: this gatewayd does not know it"
                )
            with conn.transaction():
                conn.execute(m.down_sql.encode())
                conn.execute(f"DELETE FROM {MIGRATIONS_TABLE} WHERE version = %s", (version,))
            logger.info("gatewayd.db.migrations.reverted", version=m.version, name=m.name)
            reverted.append(m)
    return reverted


def read_status(conn: Connection, migrations: Sequence[Migration]) -> list[MigrationStatus]:
    """The status of each migration; reads only (creates no table)."""
    exists = conn.execute("SELECT to_regclass(%s)", (MIGRATIONS_TABLE,)).fetchone()
    rows = (
        conn.execute(f"SELECT version, name, applied_at FROM {MIGRATIONS_TABLE}").fetchall()
        if exists and exists[0] is not None
        else []
    )
    applied = {version: (name, at) for version, name, at in rows}
    statuses = [
        MigrationStatus(m.version, m.name, applied.get(m.version, (None, None))[1])
        for m in migrations
    ]
    known = {m.version for m in migrations}
    statuses += [
        MigrationStatus(version, name, at)
        for version, (name, at) in applied.items()
        if version not in known
    ]
    return sorted(statuses, key=lambda s: s.version)


@contextmanager
def _migration_lock(conn: Connection, checkpoint: Callable[[], None] | None) -> Iterator[None]:
    # Polling pg_try_advisory_lock instead of blocking in pg_advisory_lock keeps the
    # wait cancellable: checkpoint() raises trio.Cancelled in the worker thread.
    waiting_logged = False
    while not _scalar(conn, "SELECT pg_try_advisory_lock(%s)", LOCK_KEY):
        if not waiting_logged:
            logger.info("gatewayd.db.migrations.waiting_for_lock")
            waiting_logged = True
        if checkpoint is not None:
            checkpoint()
        time.sleep(_LOCK_POLL)
    try:
        yield
    finally:
        try:
            _scalar(conn, "SELECT pg_advisory_unlock(%s)", LOCK_KEY)
        except psycopg.Error:
            # Never hand a connection that may still hold the lock back to the pool:
            # closing it makes the server release the lock and the pool replace it.
            conn.close()


def _ensure_table(conn: Connection) -> None:
    conn.execute(
        f"""
        CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
            version     integer     PRIMARY KEY,
            name        text        NOT NULL,
            applied_at  timestamptz NOT NULL DEFAULT now()
        )
        """
    )


def _applied(conn: Connection) -> dict[int, str]:
    rows = conn.execute(f"SELECT version, name FROM {MIGRATIONS_TABLE}").fetchall()
    return {version: name for version, name in rows}


# -- what an operator is told ------------------------------------------------------------

_SUMMARY_PREFIX = re.compile(r"^\d{3}_[a-z0-9_]+:\s*")


def summary(migration: Migration) -> str:
    """What the migration does: the first paragraph of its up file's leading comment (up to
    a blank comment line or an indented list)."""
    words: list[str] = []
    for line in migration.up_sql.splitlines():
        if not line.startswith("--"):
            break
        rest = line.removeprefix("--")
        if not rest.strip() or (words and rest.startswith("  ")):
            if words:
                break
            continue
        words.append(rest.strip())
    return _SUMMARY_PREFIX.sub("", " ".join(words)) or "(no description)"


def describe_status(
    statuses: Sequence[MigrationStatus], migrations: Sequence[Migration]
) -> list[str]:
    """``migrate status`` for an operator: one line per migration, then what an upgrade
    would do (the pending migrations, in the order they are applied, and what each does)."""
    lines = [
        f"{s.version:03d} {s.name:<30} {s.applied_at.isoformat() if s.applied_at else 'pending'}"
        for s in statuses
    ]
    known = {m.version: m for m in migrations}
    applied = [s.version for s in statuses if s.applied]
    version = f"{max(applied):03d}" if applied else "none (no gatewayd tables yet)"
    unknown = [s for s in statuses if s.applied and s.version not in known]
    if unknown:
        names = ", ".join(f"{s.version:03d}_{s.name}" for s in unknown)
        lines.append(
            f"schema version {version}: the database has migration(s) {names} that this gatewayd "
            "does not know; a newer gatewayd applied them, and this one will not start on it"
        )
        return lines
    pending = [known[s.version] for s in statuses if not s.applied]
    latest = max(known, default=0)
    if not pending:
        lines.append(f"schema version {version}: up to date with this gatewayd ({latest:03d})")
        return lines
    count = f"{len(pending)} migration{'s' if len(pending) != 1 else ''}"
    lines.append(
        f"schema version {version}, this gatewayd's is {latest:03d}: an upgrade applies {count}, "
        "in this order, each in its own transaction (`gatewayd migrate up`, or the daemon's "
        "next start with database.migrate_on_start):"
    )
    lines += [f"  {m.version:03d}_{m.name}: {summary(m)}" for m in pending]
    lines.append("Take a backup first (`gatewayd backup FILE`, docs/backup.md).")
    return lines


def _scalar(conn: Connection, query: str, *params: object) -> object:
    row = conn.execute(query.encode(), params).fetchone()
    return None if row is None else row[0]
