"""``gatewayd backup`` and ``gatewayd restore``: everything gatewayd keeps, in one private file.

A backup is the whole database gatewayd uses (its tables, and whatsmeow's device store in
the schema ``whatsmeow``: the WhatsApp device keys) dumped by ``pg_dump`` in one snapshot,
plus the generated auth secret when there is one (``auth.secret``: without it, PINs and
login tokens made before the backup stop working). docs/backup.md says what it holds and
how to use it. The file is an uncompressed tar, readable with ``tar``:

    database.pgdump   pg_dump's custom-format archive (compressed; ``pg_restore`` reads it)
    auth.secret       the kept auth secret, when the config sets no ``auth.jwt_secret``
    manifest.json     what was dumped: schema version, tables and their row counts (in the
                      dump's snapshot), the dump's size and sha256; last, since it records them

The file is created mode 0600 and filled under a temporary name next to it, then renamed:
no moment exists at which another user could read it, and a failed backup leaves no file.

A restore goes only into an empty database (or an empty data directory, for the embedded
PostgreSQL) and in one transaction: ``pg_restore`` turns the archive into SQL, which is fed
to ``psql`` after a ``BEGIN``; the ``COMMIT`` is sent only when ``pg_restore`` finished
cleanly and every table holds the row count the manifest recorded. Anything else closes
the session and PostgreSQL rolls everything back. Objects are restored without their old
owners (the target's role owns them), so a backup of the embedded PostgreSQL restores into
a server with other role names and back; on the embedded PostgreSQL the device store is
then handed to the role neonize connects as (gatewayd/whatsapp/neonize/store.py).

``pg_dump`` must be as new as the server it dumps, and ``pg_restore`` as new as the
``pg_dump`` that wrote the archive: the tools are chosen among the pgserver wheel's
(gatewayd/store/embedded.py ``find_postgres_bin``), the distribution's
(``/usr/lib/postgresql/N/bin``) and those on ``PATH``, preferring the server's major version.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal

import attrs
import psycopg
import psycopg.conninfo
import structlog
from psycopg import sql

from gatewayd import __version__
from gatewayd.config import Config
from gatewayd.errors import GatewayError, StoreError, StoreUnavailable
from gatewayd.store.embedded import DATABASE, HOST, ROLE, EmbeddedPostgres, find_postgres_bin
from gatewayd.store.embedded_os import program_env
from gatewayd.store.migrations import MIGRATIONS_TABLE, discover_migrations
from gatewayd.store.pool import error_message
from gatewayd.usecases.tokens import secret_path

__all__ = [
    "BackupSummary",
    "Refused",
    "RestoreSummary",
    "Server",
    "connect",
    "embedded_cluster_exists",
    "find_pg_tools",
    "open_server",
    "restore_backup",
    "take_backup",
]

logger = structlog.get_logger()

FORMAT = "gatewayd-backup"
FORMAT_VERSION = 1
DUMP_MEMBER = "database.pgdump"
SECRET_MEMBER = "auth.secret"
MANIFEST_MEMBER = "manifest.json"
#: Where neonize keeps whatsmeow's tables (gatewayd/whatsapp/neonize/backend.py).
WHATSMEOW_SCHEMA = "whatsmeow"

_BLOCK = tarfile.BLOCKSIZE
_CHUNK = 1 << 20
_LOCK_WAIT = "60s"  # pg_dump gives up when a table stays locked (a migration) this long
_SYSTEM_SCHEMAS = ("pg_catalog", "information_schema")


class Refused(GatewayError):
    """Nothing was done: the target or the file is not one the command may use."""


# -- reaching the database ------------------------------------------------------------------


@attrs.frozen
class Server:
    """The database a command works on, and how to name it to an operator."""

    dsn: str = attrs.field(repr=False)  # carries the password
    embedded: bool
    where: str


def embedded_cluster_exists(config: Config) -> bool:
    """Whether the embedded PostgreSQL of ``config`` has been created (initdb ran)."""
    return (Path(config.database.data_dir) / "pg" / "PG_VERSION").exists()


@contextlib.contextmanager
def open_server(
    config: Config, *, daemon_running: Literal["use", "refuse"], create: bool
) -> Iterator[Server]:
    """The configured server, or the embedded one: started for the block when no daemon runs
    on the data directory, reached where the running daemon keeps it (``daemon_running="use"``)
    or refused (``"refuse"``). ``create``: initialise an embedded cluster that does not exist
    yet (else Refused)."""
    if config.database.url:
        yield Server(config.database.url, embedded=False, where=_describe(config.database.url))
        return
    data_dir = Path(config.database.data_dir)
    where = f"the embedded PostgreSQL in {data_dir}"
    if not create and not embedded_cluster_exists(config):
        raise Refused(
            f"there is no embedded database in {data_dir} (database.data_dir): nothing to read; "
            "pass the daemon's --config, or set database.url"
        )
    server = EmbeddedPostgres(data_dir, port=config.database.embedded_port)
    try:
        dsn: str | None = server.start()
    except StoreUnavailable as exc:
        if not (isinstance(exc.details, dict) and exc.details.get("reason") == "already_running"):
            raise
        if daemon_running == "refuse":
            raise Refused(
                f"a gatewayd is running on {data_dir}: stop it first (systemctl stop gatewayd)"
            ) from None
        dsn = None
    if dsn is None:  # the daemon's server: reached, not started (nor stopped) here
        yield Server(_running_dsn(data_dir), embedded=True, where=f"{where} (daemon running)")
        return
    try:
        yield Server(dsn, embedded=True, where=where)
    finally:
        server.stop()


def _running_dsn(data_dir: Path) -> str:
    """The DSN of the embedded server a running daemon started on ``data_dir``."""
    try:
        password = (data_dir / "pg.password").read_text().strip()
        # postmaster.pid: pid, data directory, start time, port, … (the running server's own)
        lines = (data_dir / "pg" / "postmaster.pid").read_text().splitlines()
        port = int(lines[3])
    except (OSError, IndexError, ValueError) as exc:
        raise StoreUnavailable(
            f"a gatewayd is running on {data_dir}, but its PostgreSQL cannot be reached: {exc}"
        ) from None
    return f"postgresql://{ROLE}:{password}@{HOST}:{port}/{DATABASE}"


def _describe(dsn: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    host, port = params.get("host", "localhost"), params.get("port", "5432")
    return f"database {params.get('dbname', '?')} on {host}:{port}"


def connect(dsn: str) -> psycopg.Connection[Any]:
    """A connection for a CLI command; StoreUnavailable naming why it failed (never the DSN)."""
    try:
        return psycopg.connect(dsn, connect_timeout=10, application_name="gatewayd backup")
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(f"cannot connect to the database: {error_message(exc)}") from None


def _split_dsn(dsn: str) -> tuple[str, dict[str, str]]:
    """``dsn`` without its password (for a command line) and the environment carrying it."""
    params = {k: str(v) for k, v in psycopg.conninfo.conninfo_to_dict(dsn).items() if v is not None}
    password = params.pop("password", None)
    params.setdefault("application_name", "gatewayd backup")
    env = program_env(None)  # ours, without PG* settings that could redirect the tools
    if password is not None:
        env["PGPASSWORD"] = password
    return psycopg.conninfo.make_conninfo(**params), env


# -- the PostgreSQL tools --------------------------------------------------------------------


@attrs.frozen
class PgTools:
    """A directory holding pg_dump, pg_restore and psql of one PostgreSQL version."""

    bin: Path
    major: int
    version: str

    def path(self, program: str) -> str:
        return str(self.bin / program)


_VERSION_RE = re.compile(r"\(PostgreSQL\) (\d+)(?:\.(\d+))?")


def _candidate_dirs() -> list[Path]:
    """Where the tools may be: PATH first (the operator's choice), then the pgserver wheel's,
    then the distribution's versioned directories, newest first."""
    dirs: list[Path] = []
    on_path = shutil.which("pg_dump")
    if on_path is not None:
        dirs.append(Path(on_path).parent)
    with contextlib.suppress(StoreUnavailable):
        dirs.append(find_postgres_bin())
    for pattern in ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin"):
        dirs += sorted(Path("/").glob(pattern.lstrip("/")), reverse=True)
    unique: list[Path] = []
    for d in dirs:
        if d not in unique and all((d / p).is_file() for p in ("pg_dump", "pg_restore", "psql")):
            unique.append(d)
    return unique


def _tools_in(directory: Path) -> PgTools | None:
    try:
        out = subprocess.run(
            [str(directory / "pg_dump"), "--version"],
            capture_output=True, text=True, timeout=30, env=program_env(None), check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION_RE.search(out)
    if match is None:
        return None
    return PgTools(directory, int(match[1]), ".".join(g for g in match.groups() if g))


def find_pg_tools(server_major: int, *, at_least: int = 0) -> PgTools:
    """The tools for a server of ``server_major``, at least version ``at_least``: the same
    major as the server when there is one, else the oldest newer one (pg_dump refuses a
    server newer than itself; pg_restore an archive written by a newer pg_dump)."""
    found = [t for t in map(_tools_in, _candidate_dirs()) if t is not None]
    need = max(server_major, at_least)
    usable = sorted((t for t in found if t.major >= need), key=lambda t: t.major)
    if not usable:
        seen = ", ".join(f"{t.version} in {t.bin}" for t in found) or "none"
        raise StoreUnavailable(
            f"no pg_dump/pg_restore/psql of PostgreSQL {need} or newer (found: {seen}): install "
            f"the PostgreSQL {need} client programs (Debian: postgresql-client-{need}) and put "
            "their directory first on PATH"
        )
    exact = [t for t in usable if t.major == server_major]
    return (exact or usable)[0]


def _server_major(conn: psycopg.Connection[Any]) -> int:
    return conn.info.server_version // 10000


# -- backup ----------------------------------------------------------------------------------


@attrs.frozen
class BackupSummary:
    path: Path
    bytes: int
    schema_version: int
    tables: int
    messages: int
    devices: int
    auth_secret: str
    where: str


def take_backup(config: Config, path: Path) -> BackupSummary:
    """Write a backup of the database of ``config`` to ``path`` (replaced when it exists).

    Blocking. Works while a daemon runs: the dump is one consistent snapshot.
    """
    path = path.absolute()
    if not path.parent.is_dir():
        raise Refused(f"{path.parent} is not a directory")
    if path.is_dir():
        raise Refused(f"{path} is a directory: name the backup file")
    secret_text, secret_state = _read_kept_secret(config)
    with open_server(config, daemon_running="use", create=False) as server:
        conn = connect(server.dsn)
        with conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            # Counted in the snapshot pg_dump dumps, so the manifest describes exactly it.
            snapshot = str(_scalar(conn, "SELECT pg_export_snapshot()"))
            migrations = _applied_migrations(conn, server.where)
            tables = _table_counts(conn)
            tools = find_pg_tools(_server_major(conn))
            manifest: dict[str, Any] = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "gatewayd_version": __version__,
                "source": "embedded" if server.embedded else "external",
                "database": conn.info.dbname,
                "server_version": conn.info.parameter_status("server_version") or "",
                "pg_dump_version": tools.version,
                "pg_dump_major": tools.major,
                "schema_version": max((v for v, _ in migrations), default=0),
                "migrations": [f"{v:03d}_{n}" for v, n in migrations],
                "tables": [[schema, table, rows] for (schema, table), rows in tables.items()],
                "auth_secret": secret_state,
            }
            dumped = _write_archive(path, tools, server.dsn, snapshot, manifest, secret_text)
    summary = BackupSummary(
        path=path,
        bytes=dumped,
        schema_version=manifest["schema_version"],
        tables=len(tables),
        messages=tables.get(("public", "messages"), 0),
        devices=tables.get((WHATSMEOW_SCHEMA, "whatsmeow_device"), 0),
        auth_secret=secret_state,
        where=server.where,
    )
    logger.info(
        "gatewayd.backup.written",
        path=str(path),
        bytes=dumped,
        schema_version=summary.schema_version,
        tables=summary.tables,
        source=manifest["source"],
        pg_dump=tools.version,
    )
    return summary


def _read_kept_secret(config: Config) -> tuple[bytes | None, str]:
    """The kept auth secret's text and what the manifest says of it (kept/configured/none)."""
    if config.auth.jwt_secret:
        return None, "configured"  # in the config or environment: not the backup's to keep
    try:
        return secret_path(config.auth, config.database.data_dir).read_bytes(), "kept"
    except FileNotFoundError:
        return None, "none"
    except OSError as exc:
        raise Refused(f"cannot read the auth secret to back it up: {exc}") from None


def _scalar(conn: psycopg.Connection[Any], query: str, *params: object) -> object:
    row = conn.execute(query.encode(), params).fetchone()
    return None if row is None else row[0]


def _applied_migrations(conn: psycopg.Connection[Any], where: str) -> list[tuple[int, str]]:
    if _scalar(conn, "SELECT to_regclass(%s)", f"public.{MIGRATIONS_TABLE}") is None:
        raise Refused(
            f"{where} holds no gatewayd data (no {MIGRATIONS_TABLE} table): nothing to back up"
        )
    rows = conn.execute(f"SELECT version, name FROM public.{MIGRATIONS_TABLE} ORDER BY version")
    return [(int(v), str(n)) for v, n in rows.fetchall()]


def _user_tables(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind = 'r' AND n.nspname <> ALL(%s)"
        " AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp\\_%%'"
        " ORDER BY 1, 2",
        (list(_SYSTEM_SCHEMAS),),
    ).fetchall()
    return [(str(s), str(t)) for s, t in rows]


def _table_counts(conn: psycopg.Connection[Any]) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    for schema, table in _user_tables(conn):
        query = sql.SQL("SELECT count(*) FROM ONLY {}.{}").format(
            sql.Identifier(schema), sql.Identifier(table)
        )
        row = conn.execute(query).fetchone()
        counts[(schema, table)] = int(row[0]) if row else 0
    return counts


def _write_archive(
    path: Path,
    tools: PgTools,
    dsn: str,
    snapshot: str,
    manifest: dict[str, Any],
    secret_text: bytes | None,
) -> int:
    """Dump into a new 0600 file beside ``path``, add the members, rename it over ``path``."""
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    # O_EXCL and the mode at creation: the file is never readable by anyone else, whatever
    # the umask, and never someone else's file or symlink.
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            # The dump's header goes in once its size is known: a block is kept for it.
            out.write(bytes(_BLOCK))
            size, digest = _dump_into(out, tools, dsn, snapshot)
            out.write(bytes(-size % _BLOCK))
            end = out.tell()
            out.seek(0)
            out.write(_header(DUMP_MEMBER, size))
            out.seek(end)
            manifest["dump"] = {"member": DUMP_MEMBER, "bytes": size, "sha256": digest}
            if secret_text is not None:
                _add_member(out, SECRET_MEMBER, secret_text)
            _add_member(out, MANIFEST_MEMBER, json.dumps(manifest, indent=2).encode() + b"\n")
            out.write(bytes(2 * _BLOCK))  # the end-of-archive marker
            out.flush()
            os.fsync(out.fileno())
            written = out.tell()
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return written


def _dump_into(out: IO[bytes], tools: PgTools, dsn: str, snapshot: str) -> tuple[int, str]:
    """Run pg_dump with its archive streamed into ``out``; (bytes, sha256 hex)."""
    conninfo, env = _split_dsn(dsn)
    args = [
        tools.path("pg_dump"),
        "--format=custom",
        "--no-password",
        f"--snapshot={snapshot}",
        f"--lock-wait-timeout={_LOCK_WAIT}",
        f"--dbname={conninfo}",
    ]
    digest = hashlib.sha256()
    size = 0
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors, env=env,
            cwd="/",
        )  # fmt: skip
        assert proc.stdout is not None
        try:
            while chunk := proc.stdout.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            returncode = proc.wait()
        finally:
            _end(proc)
        if returncode != 0:
            raise StoreError(f"pg_dump failed: {_tail(errors)}")
    return size, digest.hexdigest()


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o600, int(time.time())
    header = info.tobuf(format=tarfile.GNU_FORMAT, encoding="utf-8", errors="strict")
    if len(header) != _BLOCK:  # short names and GNU's base-256 sizes: always one block
        raise AssertionError(f"tar header of {name!r} is {len(header)} bytes")
    return header


def _add_member(out: IO[bytes], name: str, data: bytes) -> None:
    out.write(_header(name, len(data)))
    out.write(data)
    out.write(bytes(-len(data) % _BLOCK))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- restore ---------------------------------------------------------------------------------


@attrs.frozen
class RestoreSummary:
    path: Path
    created_at: str
    schema_version: int
    tables: int
    messages: int
    devices: int
    where: str
    notes: list[str]


def restore_backup(config: Config, path: Path) -> RestoreSummary:
    """Restore the backup at ``path`` into the (empty) database of ``config``. Blocking."""
    manifest = read_manifest(path)
    known = max((m.version for m in discover_migrations()), default=0)
    if manifest["schema_version"] > known:
        raise Refused(
            f"{path} was taken at schema version {manifest['schema_version']:03d} by a newer "
            f"gatewayd ({manifest.get('gatewayd_version', '?')}); this one knows up to "
            f"{known:03d}: restore it with that version or newer"
        )
    tables = [(str(s), str(t), int(n)) for s, t, n in manifest["tables"]]
    notes: list[str] = []
    with open_server(config, daemon_running="refuse", create=True) as server:
        conn = connect(server.dsn)
        with conn:
            _check_empty(conn, server.where)
            major = _server_major(conn)
            check = _verification_sql(conn, tables, embedded=server.embedded)
        tools = find_pg_tools(major, at_least=int(manifest["pg_dump_major"]))
        written_secret = _restore_secret(config, path, manifest, notes)
        try:
            with tarfile.open(path, "r:") as archive:
                dump = archive.extractfile(manifest["dump"]["member"])
                if dump is None:
                    raise Refused(f"{path} is damaged: its dump is missing")
                _pipe_restore(dump, tools, server.dsn, check)
        except BaseException:
            if written_secret is not None:
                written_secret.unlink(missing_ok=True)
            raise
        _analyze(server.dsn)
    summary = RestoreSummary(
        path=path,
        created_at=str(manifest["created_at"]),
        schema_version=int(manifest["schema_version"]),
        tables=len(tables),
        messages=next((n for s, t, n in tables if (s, t) == ("public", "messages")), 0),
        devices=next(
            (n for s, t, n in tables if (s, t) == (WHATSMEOW_SCHEMA, "whatsmeow_device")), 0
        ),
        where=server.where,
        notes=notes,
    )
    logger.info(
        "gatewayd.backup.restored",
        path=str(path),
        schema_version=summary.schema_version,
        tables=summary.tables,
        pg_restore=tools.version,
    )
    return summary


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the backup at ``path``, its dump's checksum verified; Refused when it
    is not a gatewayd backup or is damaged."""
    try:
        with tarfile.open(path, "r:") as archive:
            member = archive.extractfile(MANIFEST_MEMBER)
            if member is None:
                raise KeyError(MANIFEST_MEMBER)
            manifest: dict[str, Any] = json.loads(member.read())
            if manifest.get("format") != FORMAT:
                raise ValueError("not a gatewayd backup manifest")
            if manifest.get("format_version") != FORMAT_VERSION:
                raise Refused(
                    f"{path} is a backup of format {manifest.get('format_version')}; this "
                    f"gatewayd reads format {FORMAT_VERSION}"
                )
            _check_manifest(manifest)
            expected = manifest["dump"]
            dump = archive.extractfile(expected["member"])
            if dump is None:
                raise KeyError(expected["member"])
            digest, size = hashlib.sha256(), 0
            while chunk := dump.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except FileNotFoundError:
        raise Refused(f"{path} does not exist") from None
    except IsADirectoryError:
        raise Refused(f"{path} is a directory, not a backup file") from None
    except PermissionError as exc:
        raise Refused(f"cannot read {path}: {exc.strerror}") from None
    except (tarfile.TarError, KeyError, ValueError, TypeError, EOFError) as exc:
        raise Refused(f"{path} is not a gatewayd backup, or is damaged ({exc})") from None
    if size != expected["bytes"] or digest.hexdigest() != expected["sha256"]:
        raise Refused(
            f"{path} is damaged: its dump does not match the checksum it was written with"
        )
    return manifest


def _check_manifest(manifest: dict[str, Any]) -> None:
    """ValueError unless the manifest has what a restore reads, of the right types."""
    for key, kind in (
        ("created_at", str),
        ("schema_version", int),
        ("pg_dump_major", int),
        ("tables", list),
        ("dump", dict),
    ):
        if not isinstance(manifest.get(key), kind):
            raise ValueError(f"the manifest has no valid {key!r}")
    for entry in manifest["tables"]:
        if not (
            isinstance(entry, list)
            and len(entry) == 3
            and all(isinstance(x, str) for x in entry[:2])
            and isinstance(entry[2], int)
        ):
            raise ValueError(f"the manifest lists an odd table: {entry!r}")
    dump = manifest["dump"]
    if not (
        isinstance(dump.get("member"), str)
        and isinstance(dump.get("bytes"), int)
        and isinstance(dump.get("sha256"), str)
    ):
        raise ValueError("the manifest does not describe its dump")


def _check_empty(conn: psycopg.Connection[Any], where: str) -> None:
    """Refused unless the database holds no tables, sequences, views, functions or schemas
    of its own (a fresh database from CREATE DATABASE, or a new embedded cluster). What an
    extension installed in the template brought does not count."""
    own = (
        " AND n.nspname <> ALL(%(system)s) AND n.nspname NOT LIKE 'pg\\_%%'"
        " AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.objid = {} AND d.deptype = 'e')"
    )
    rows = conn.execute(
        "SELECT n.nspname || '.' || c.relname FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')" + own.format("c.oid") + " UNION ALL"
        " SELECT n.nspname || '.' || p.proname || '()' FROM pg_catalog.pg_proc p"
        " JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE true"
        + own.format("p.oid")
        + " UNION ALL SELECT 'schema ' || n.nspname FROM pg_catalog.pg_namespace n"
        " WHERE n.nspname <> 'public'" + own.format("n.oid") + " ORDER BY 1",
        {"system": list(_SYSTEM_SCHEMAS)},
    ).fetchall()
    if rows:
        names = [str(r[0]) for r in rows]
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise Refused(
            f"{where} is not empty ({shown}): restore writes only into an empty database; "
            "create a new one (or, for the embedded PostgreSQL, move the data directory away)"
        )


def _restore_secret(
    config: Config, path: Path, manifest: dict[str, Any], notes: list[str]
) -> Path | None:
    """Put the backup's kept auth secret in place when the target keeps none; the file
    written (to remove if the restore fails), or None."""
    state = manifest.get("auth_secret")
    if state == "configured" and not config.auth.jwt_secret:
        notes.append(
            "the backup was taken with auth.jwt_secret (JWT_SECRET) set: set the same secret "
            "here, or PINs and logins made before the backup will not work"
        )
    if state != "kept":
        return None
    if config.auth.jwt_secret:
        notes.append(
            "auth.jwt_secret is set, so the backup's kept secret was not restored: PINs made "
            "before the backup work only if that is the same secret"
        )
        return None
    with tarfile.open(path, "r:") as archive:
        member = archive.extractfile(SECRET_MEMBER)
        if member is None:
            raise Refused(f"{path} is damaged: its manifest lists an auth secret it does not hold")
        secret = member.read()
    target = secret_path(config.auth, config.database.data_dir)
    try:
        if target.read_bytes() == secret:
            return None
        raise Refused(
            f"{target} holds another auth secret than the backup: move it away (the restored "
            "PINs and logins need the backup's), or restore into a fresh data directory"
        )
    except FileNotFoundError:
        pass
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secret)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, target)  # never over a secret that appeared meanwhile
    except FileExistsError:
        raise Refused(f"{target} appeared while restoring: restore again") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _verification_sql(
    conn: psycopg.Connection[Any], tables: Sequence[tuple[str, str, int]], *, embedded: bool
) -> bytes:
    """What runs after the restored SQL, in its transaction, before the COMMIT: on the
    embedded PostgreSQL the device store goes to neonize's role; then every table's row count
    is compared with the manifest's, and a difference raises (so nothing is committed)."""
    parts: list[sql.Composable] = []
    if embedded:
        role = sql.Literal(f"{ROLE}_whatsmeow")  # prepare_store's role for the embedded server
        parts.append(
            sql.SQL(
                """
DO $gatewayd_owner$
DECLARE
    role_name text := {role};
    obj record;
BEGIN
    IF pg_catalog.to_regnamespace({schema}) IS NULL THEN
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = role_name) THEN
        -- Its password and settings are set by the daemon at start (prepare_store).
        EXECUTE pg_catalog.format('CREATE ROLE %I LOGIN', role_name);
    END IF;
    EXECUTE pg_catalog.format('ALTER SCHEMA %I OWNER TO %I', {schema}, role_name);
    FOR obj IN
        SELECT c.oid::pg_catalog.regclass AS name, c.relkind::text AS kind
        FROM pg_catalog.pg_class c
        WHERE c.relnamespace = pg_catalog.to_regnamespace({schema})
        AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
        AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.classid =
            'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = c.oid AND d.deptype IN ('a', 'i'))
    LOOP
        EXECUTE pg_catalog.format('ALTER %s %s OWNER TO %I',
            CASE obj.kind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
                WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
            obj.name, role_name);
    END LOOP;
    FOR obj IN
        SELECT p.oid::pg_catalog.regprocedure AS name FROM pg_catalog.pg_proc p
        WHERE p.pronamespace = pg_catalog.to_regnamespace({schema})
    LOOP
        EXECUTE pg_catalog.format('ALTER ROUTINE %s OWNER TO %I', obj.name, role_name);
    END LOOP;
END
$gatewayd_owner$;
"""
            ).format(role=role, schema=sql.Literal(WHATSMEOW_SCHEMA))
        )
    expected = json.dumps([[s, t, n] for s, t, n in tables])
    parts.append(
        sql.SQL(
            """
DO $gatewayd_check$
DECLARE
    t record;
    found bigint;
BEGIN
    FOR t IN
        SELECT e->>0 AS nsp, e->>1 AS rel, (e->>2)::bigint AS n
        FROM pg_catalog.jsonb_array_elements({expected}::jsonb) AS e
    LOOP
        IF pg_catalog.to_regclass(pg_catalog.format('%I.%I', t.nsp, t.rel)) IS NULL THEN
            RAISE EXCEPTION 'gatewayd restore: table %.% of the backup was not restored',
                t.nsp, t.rel;
        END IF;
        EXECUTE pg_catalog.format('SELECT count(*) FROM ONLY %I.%I', t.nsp, t.rel) INTO found;
        IF found <> t.n THEN
            RAISE EXCEPTION 'gatewayd restore: table %.% holds % rows, the backup %',
                t.nsp, t.rel, found, t.n;
        END IF;
    END LOOP;
END
$gatewayd_check$;
"""
        ).format(expected=sql.Literal(expected))
    )
    text = sql.SQL("").join(parts).as_string(conn)
    if text.count("$gatewayd_check$") != 2 or text.count("$gatewayd_owner$") not in (0, 2):
        raise Refused("the backup's table names cannot be checked safely")  # a name with a tag
    return text.encode()


def _pipe_restore(dump: IO[bytes], tools: PgTools, dsn: str, check: bytes) -> None:
    """pg_restore → SQL → psql inside BEGIN; COMMIT only when all of it went through."""
    conninfo, env = _split_dsn(dsn)
    with tempfile.TemporaryFile() as restore_errors, tempfile.TemporaryFile() as psql_errors:
        restore = subprocess.Popen(
            [tools.path("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error",
             "--file=-"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=restore_errors, env=env,
            cwd="/",
        )  # fmt: skip
        psql = subprocess.Popen(
            [tools.path("psql"), "--no-psqlrc", "--quiet", "--no-password",
             "--set=ON_ERROR_STOP=1", f"--dbname={conninfo}", "--file=-"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=psql_errors, env=env,
            cwd="/",
        )  # fmt: skip
        assert restore.stdin is not None and restore.stdout is not None and psql.stdin is not None
        feed_error: list[BaseException] = []
        feeder = threading.Thread(
            target=_feed, args=(dump, restore.stdin, feed_error), name="gatewayd-restore-feed"
        )
        feeder.start()
        committed = False
        try:
            try:
                psql.stdin.write(b"BEGIN;\n")
                while chunk := restore.stdout.read(_CHUNK):
                    psql.stdin.write(chunk)
                restored = restore.wait() == 0
                feeder.join()
                if restored and not feed_error:
                    psql.stdin.write(check + b"\nCOMMIT;\n")
                    psql.stdin.close()
                    committed = psql.wait() == 0
            except BrokenPipeError:
                # psql stopped at an error (ON_ERROR_STOP): let it finish saying which.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    psql.wait(timeout=10)
            if not committed:
                psql_failed = psql.poll() not in (None, 0)
                # Ending the session without COMMIT rolls everything back.
                _end(psql)
                _end(restore)
                feeder.join()
                message = (_tail(psql_errors) if psql_failed else "") or _tail(restore_errors)
                if not message:
                    message = str(feed_error[0]) if feed_error else "pg_restore or psql stopped"
                raise StoreError(f"the restore failed, nothing was restored: {message}")
        finally:
            _end(psql)
            _end(restore)
            feeder.join()


def _feed(source: IO[bytes], sink: IO[bytes], errors: list[BaseException]) -> None:
    try:
        while chunk := source.read(_CHUNK):
            sink.write(chunk)
    except BrokenPipeError:
        pass  # pg_restore stopped: its exit code and message tell why
    except BaseException as exc:  # noqa: BLE001 - reported by the caller
        errors.append(exc)
    finally:
        with contextlib.suppress(OSError):
            sink.close()


def _analyze(dsn: str) -> None:
    """Fresh planner statistics: pg_restore leaves none. A failure only costs speed."""
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute("ANALYZE")
    except psycopg.Error as exc:
        logger.warning("gatewayd.backup.analyze_failed", error=error_message(exc))


def _end(proc: subprocess.Popen[bytes]) -> None:
    """Kill ``proc`` if it still runs, and reap it."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def _tail(errors: IO[bytes]) -> str:
    errors.seek(0)
    text = errors.read().decode("utf-8", "replace").strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return " / ".join(lines[-5:])[-2000:]
