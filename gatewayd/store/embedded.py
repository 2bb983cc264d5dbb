"""An embedded PostgreSQL server kept in the daemon's data directory.

When no ``database.url`` is configured, gatewayd runs its own PostgreSQL so a fresh
install needs no database server. The binaries are the ones bundled in the ``pgserver``
wheel (falling back to ``pg_ctl`` on ``PATH``); we drive ``initdb`` and ``pg_ctl``
ourselves rather than using ``pgserver.get_server``, which registers ``atexit`` hooks
and keeps its own lock directory.

Layout under ``data_dir``::

    pg/            the cluster (PGDATA); created by initdb, kept across restarts
    pg.password    random password of the ``gatewayd`` role (0600, never logged)
    pg.port        the port of the last start, reused when free
    pg.lock        flock held while this process owns the server

The server listens on 127.0.0.1 only (no Unix socket) and requires the password
(scram-sha-256). PostgreSQL refuses to run as root, so when we are root the server
runs as an unprivileged system user (the owner of an existing cluster, else
``gatewayd-postgres``, created on first use).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import importlib.util
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import IO, Any, Literal

import attrs
import psycopg
import structlog
import trio

from gatewayd.errors import StoreUnavailable
from gatewayd.store.db import map_exceptions

__all__ = [
    "DATABASE",
    "ROLE",
    "SYSTEM_USER",
    "EmbeddedPostgres",
    "find_postgres_bin",
    "open_embedded_postgres",
]

logger = structlog.get_logger()

ROLE = "gatewayd"
DATABASE = "gatewayd"
SYSTEM_USER = "gatewayd-postgres"
HOST = "127.0.0.1"

_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 60.0
# Backends orphaned by a killed postmaster exit on their own within a second or two;
# until they do, PostgreSQL refuses to start ("shared memory block still in use").
_LEFTOVER_WAIT = 15.0

_INITDB_OPTIONS = [
    "--auth=scram-sha-256",
    "--encoding=UTF8",
    "--no-locale",  # the C locale exists everywhere; collation is not ours to choose
    "--data-checksums",
    "--no-instructions",
]

# Settings passed on every start (not written into postgresql.conf) so that a newer
# gatewayd applies its own settings to an existing cluster.
_SERVER_SETTINGS: dict[str, str] = {
    "listen_addresses": HOST,
    "unix_socket_directories": "",
    "logging_collector": "on",
    "log_directory": "log",
    "log_filename": "postgresql-%a.log",  # one file per weekday: a week of logs at most
    "log_truncate_on_rotation": "on",
    "log_rotation_age": "1d",
    "log_rotation_size": "0",
}


@attrs.frozen
class _RunAs:
    """The unprivileged account the server runs as when we are root."""

    name: str
    uid: int
    gid: int


class EmbeddedPostgres:
    """A PostgreSQL cluster in ``data_dir / "pg"``, started and stopped by this object.

    The API is blocking; from Trio use :func:`open_embedded_postgres`.
    """

    def __init__(self, data_dir: Path, *, port: int = 0) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.pgdata = self.data_dir / "pg"
        self._password_file = self.data_dir / "pg.password"
        self._port_file = self.data_dir / "pg.port"
        self._lock_path = self.data_dir / "pg.lock"
        self._configured_port = port
        self._bin = find_postgres_bin()
        self._run_as: _RunAs | None = None
        self._lock_file: IO[bytes] | None = None
        self._started = False
        self._pid: int | None = None
        self._port: int | None = None
        self._dsn: str | None = None

    def __repr__(self) -> str:
        # Never the DSN: it carries the password.
        return f"EmbeddedPostgres(data_dir={str(self.data_dir)!r}, port={self._port})"

    @property
    def running(self) -> bool:
        """True while the server this object started is alive."""
        return self._started and self._postmaster_running()

    @property
    def port(self) -> int:
        """The TCP port of the running server."""
        if self._port is None:
            raise RuntimeError("the embedded PostgreSQL has not been started")
        return self._port

    @property
    def dsn(self) -> str:
        """The libpq URL of the ``gatewayd`` database (contains the password)."""
        if self._dsn is None:
            raise RuntimeError("the embedded PostgreSQL has not been started")
        return self._dsn

    # -- start -----------------------------------------------------------------------

    def start(self) -> str:
        """Initialise the cluster if needed, start it, and return its DSN.

        Raises StoreUnavailable when the server cannot start, including when another
        process already runs a server on this data directory.
        """
        if self._started:
            return self.dsn
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._acquire_lock()
        try:
            self._run_as = _choose_run_as(self.pgdata)
            if self._run_as is not None:
                _grant_traverse(self.data_dir, self._run_as)
                _grant_traverse(self._bin, self._run_as)
            if not (self.pgdata / "PG_VERSION").exists():
                self._initdb()
            password = self._read_password()
            self._clear_stale_pidfile()
            self._start_server()
            self._dsn = f"postgresql://{ROLE}:{password}@{HOST}:{self._port}/{DATABASE}"
            self._started = True
            self._ensure_database(password)
        except BaseException:
            self.stop()
            self._release_lock()
            raise
        logger.info(
            "gatewayd.db.embedded.started",
            data_dir=str(self.data_dir),
            port=self._port,
            pid=self._pid,
            bin=str(self._bin),
        )
        return self._dsn

    def _postmaster_running(self) -> bool:
        pid = self._pid
        return pid is not None and _postmaster_state(pid, self.pgdata) == "running"

    def _acquire_lock(self) -> None:
        # The flock marks "a gatewayd owns this cluster". The kernel drops it when the
        # process dies, so a crashed run never leaves it behind.
        lock_file = self._lock_path.open("ab")
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            raise StoreUnavailable(
                f"the embedded PostgreSQL in {self.data_dir} is already running: "
                "another gatewayd process is using this data directory",
                details={"reason": "already_running", "data_dir": str(self.data_dir)},
            ) from None
        self._lock_file = lock_file

    def _release_lock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing the only descriptor releases the flock
            self._lock_file = None

    def _initdb(self) -> None:
        if self.pgdata.exists():
            if any(self.pgdata.iterdir()):
                raise StoreUnavailable(
                    f"{self.pgdata} exists but is not a PostgreSQL cluster (no PG_VERSION); "
                    "move it away to let gatewayd create a new one"
                )
            self.pgdata.rmdir()
        # initdb into a scratch directory renamed at the end, so "pg/ exists" always
        # means "initdb finished"; a run killed halfway leaves only the scratch dir.
        scratch = self.data_dir / "pg.initdb"
        if scratch.exists():
            shutil.rmtree(scratch)
        scratch.mkdir(mode=0o700)
        password = secrets.token_urlsafe(32)  # URL-safe: goes into the DSN verbatim
        pwfile = self.data_dir / f".pg.initdb-pw.{secrets.token_hex(8)}"
        try:
            _write_private(pwfile, password + "\n")
            if self._run_as is not None:
                os.chown(scratch, self._run_as.uid, self._run_as.gid)
                os.chown(pwfile, self._run_as.uid, self._run_as.gid)
            args = ["-D", str(scratch), "-U", ROLE, f"--pwfile={pwfile}", *_INITDB_OPTIONS]
            self._run("initdb", args, timeout=_START_TIMEOUT)
        finally:
            pwfile.unlink(missing_ok=True)
        # The password file goes in place before the cluster: a crash in between
        # leaves no cluster and the next start runs initdb again with a new password.
        _write_private(self._password_file, password + "\n")
        scratch.rename(self.pgdata)
        logger.info("gatewayd.db.embedded.initialized", data_dir=str(self.data_dir))

    def _read_password(self) -> str:
        try:
            return self._password_file.read_text().strip()
        except FileNotFoundError:
            raise StoreUnavailable(
                f"{self._password_file} is missing, so the embedded PostgreSQL cannot be "
                f"reached; restore it, or remove {self.pgdata} to start with a new database"
            ) from None

    def _clear_stale_pidfile(self) -> None:
        """Refuse a live server on this cluster; remove the pid file of a dead one."""
        pid = _read_postmaster_pid(self.pgdata)
        if pid is None:
            return
        state = _postmaster_state(pid, self.pgdata)
        if state == "running":
            raise StoreUnavailable(
                f"a PostgreSQL server (pid {pid}) is already running on {self.pgdata}; "
                "stop it (pg_ctl stop -D ...) before starting gatewayd",
                details={"reason": "already_running", "pid": pid},
            )
        # We hold the flock and the recorded pid is not a postmaster of this cluster,
        # so nothing can be using the file; left in place, PostgreSQL would refuse to
        # start when the pid is a zombie or another process of the same user.
        # (Backends orphaned by a killed postmaster are still detected by PostgreSQL
        # through its shared memory segment; _pg_ctl_start waits for them.)
        (self.pgdata / "postmaster.pid").unlink(missing_ok=True)
        logger.warning("gatewayd.db.embedded.stale_pid_removed", pid=pid, state=state)

    def _start_server(self) -> None:
        attempts = 1 if self._configured_port else 3
        for attempt in range(1, attempts + 1):
            port = self._configured_port or self._pick_port()
            try:
                self._pg_ctl_start(port)
            except _PortInUse:
                if attempt == attempts:
                    raise StoreUnavailable(
                        f"the embedded PostgreSQL cannot listen on {HOST}:{port}: "
                        "the port is in use"
                    ) from None
                # Another program took the port between our probe and postgres' bind.
                continue
            self._port = port
            self._pid = _read_postmaster_pid(self.pgdata)
            with contextlib.suppress(OSError):
                self._port_file.write_text(f"{port}\n")
            return

    def _pick_port(self) -> int:
        with contextlib.suppress(OSError, ValueError):
            last = int(self._port_file.read_text().strip())
            if _port_free(last):
                return last
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
            return port

    def _pg_ctl_start(self, port: int) -> None:
        startup_log = self.pgdata / "startup.log"  # postgres output until its log collector runs
        offset = startup_log.stat().st_size if startup_log.exists() else 0
        options = ["-p", str(port)]
        for name, value in _SERVER_SETTINGS.items():
            options += ["-c", f"{name}={value}"]
        deadline = time.monotonic() + _LEFTOVER_WAIT
        while True:
            try:
                # pg_ctl hands -o to /bin/sh, hence the shell quoting.
                args = ["-l", str(startup_log), "-o", shlex.join(options)]
                self._pg_ctl("start", *args, timeout=_START_TIMEOUT)
                return
            except StoreUnavailable as exc:
                log_tail = _read_from(startup_log, offset)
                if "could not bind" in log_tail or "Address already in use" in log_tail:
                    raise _PortInUse from exc
                if "is still in use" in log_tail and time.monotonic() < deadline:
                    time.sleep(0.2)  # orphaned backends of a killed server are exiting
                    continue
                raise StoreUnavailable(
                    f"the embedded PostgreSQL did not start: {log_tail.strip()[-2000:]}"
                ) from exc

    def _ensure_database(self, password: str) -> None:
        # initdb creates only "postgres"; creating ours on every start (when missing)
        # also covers a first start that was interrupted right after initdb.
        dsn = f"postgresql://{ROLE}:{password}@{HOST}:{self._port}/postgres?connect_timeout=10"
        with map_exceptions(), psycopg.connect(dsn, autocommit=True) as conn:
            query = "SELECT 1 FROM pg_database WHERE datname = %s"
            if conn.execute(query, (DATABASE,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{DATABASE}"')

    # -- stop ------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the server if this object started it (fast shutdown); idempotent."""
        if not self._started:
            return
        pid = self._pid
        try:
            if pid is None or self._postmaster_running():
                try:
                    self._pg_ctl("stop", "-m", "fast", timeout=_STOP_TIMEOUT)
                except StoreUnavailable:
                    # Fast shutdown timed out or pg_ctl failed: fall back to immediate
                    # (crash-safe; the next start replays the WAL).
                    logger.warning("gatewayd.db.embedded.stop_immediate", pid=pid)
                    if pid is not None:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGQUIT)
            logger.info("gatewayd.db.embedded.stopped", data_dir=str(self.data_dir))
        finally:
            self._started = False
            self._pid = None
            self._release_lock()

    # -- subprocesses ----------------------------------------------------------------

    def _pg_ctl(self, action: str, *args: str, timeout: float) -> None:
        wait = ["-w", "-t", str(int(timeout))]  # pg_ctl's own wait, inside ours
        self._run("pg_ctl", [action, "-D", str(self.pgdata), *wait, *args], timeout=timeout + 10)

    def _run(self, program: str, args: Sequence[str], *, timeout: float) -> None:
        """Run a PostgreSQL program as the server's account; StoreUnavailable on failure."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"  # parseable messages, no dependency on installed locales
        extra: dict[str, Any] = {}
        if self._run_as is not None:
            env["HOME"] = "/"
            env["USER"] = env["LOGNAME"] = self._run_as.name
            extra = {"user": self._run_as.uid, "group": self._run_as.gid, "extra_groups": []}
        # A file, not a pipe: the server started by pg_ctl could otherwise inherit the
        # pipe and keep us waiting for EOF.
        with tempfile.TemporaryFile("w+") as output:
            try:
                subprocess.run(
                    [str(self._bin / program), *args],
                    stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                    env=env, cwd="/", timeout=timeout, check=True, **extra,
                )  # fmt: skip
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                output.seek(0)
                message = output.read().strip()[-2000:]
                raise StoreUnavailable(f"{program} failed: {message}") from exc


@contextlib.asynccontextmanager
async def open_embedded_postgres(
    data_dir: Path, *, port: int = 0
) -> AsyncIterator[EmbeddedPostgres]:
    """Run an embedded PostgreSQL for the duration of the block.

    Starting happens in a worker thread; the server is stopped on exit, also when the
    block is cancelled.
    """
    server = EmbeddedPostgres(data_dir, port=port)
    try:
        # Not abandoned on cancel: a half-started server must be seen by stop().
        await trio.to_thread.run_sync(server.start)
        yield server
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(server.stop)


def find_postgres_bin() -> Path:
    """The directory holding pg_ctl, initdb and postgres.

    The pgserver wheel's bundled build (``pgserver/pginstall/bin``, the same path as
    ``pgserver._commands.POSTGRES_BIN_PATH``, found without importing pgserver, whose
    import sets up its own server machinery), else ``pg_ctl`` on PATH.
    """
    spec = importlib.util.find_spec("pgserver")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "pginstall" / "bin"
        if (candidate / "pg_ctl").is_file():
            return candidate
    on_path = shutil.which("pg_ctl")
    if on_path is not None:
        return Path(on_path).resolve().parent  # next to postgres and initdb
    raise StoreUnavailable(
        "no PostgreSQL binaries found: install gatewayd with its pgserver dependency, "
        "put pg_ctl on PATH, or configure database.url"
    )


class _PortInUse(Exception):
    pass


def _choose_run_as(pgdata: Path) -> _RunAs | None:
    """None when we may run postgres ourselves, else the account to run it as."""
    if os.geteuid() != 0:
        return None
    # An existing cluster keeps its owner (e.g. created by a non-root gatewayd).
    with contextlib.suppress(FileNotFoundError, KeyError):
        owner = pgdata.stat().st_uid
        if owner != 0:
            entry = pwd.getpwuid(owner)
            return _RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid)
    entry = _ensure_system_user(SYSTEM_USER)
    return _RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(name)
    # A system account without a home or a login shell: it only ever runs postgres.
    result = subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        entry = pwd.getpwnam(name)  # another process may have created it meanwhile
    except KeyError:
        raise StoreUnavailable(
            f"cannot create the system user {name!r} to run the embedded PostgreSQL "
            f"as (PostgreSQL refuses to run as root): {result.stderr.strip()}"
        ) from None
    logger.info("gatewayd.db.embedded.user_created", user=name)
    return entry


def _grant_traverse(path: Path, run_as: _RunAs) -> None:
    """Let ``run_as`` reach ``path``: add the search (x) bit where it is missing.

    Only search, never read: directory listings stay private (pgserver's helper adds
    r+x for everyone up to /, which we avoid).
    """
    for directory in [path, *path.parents]:
        st = directory.stat()
        if st.st_uid == run_as.uid:
            needed = stat.S_IXUSR
        elif st.st_gid == run_as.gid:
            needed = stat.S_IXGRP
        else:
            needed = stat.S_IXOTH
        if not st.st_mode & needed:
            directory.chmod(stat.S_IMODE(st.st_mode) | needed)
            logger.info("gatewayd.db.embedded.traverse_granted", path=str(directory))


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by its owner only."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_postmaster_pid(pgdata: Path) -> int | None:
    try:
        first = (pgdata / "postmaster.pid").read_text().split("\n", 1)[0].strip()
    except FileNotFoundError:
        return None
    return int(first) if first.isdigit() else None


def _is_zombie(pid: int) -> bool:
    # A killed postmaster may stay a zombie when nothing reaps it (containers whose
    # PID 1 does not wait); it counts as dead.
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat_line.rpartition(")")[2].split()[0] == "Z"


def _postmaster_state(pid: int, pgdata: Path) -> Literal["running", "dead", "other"]:
    """Whether the pid recorded in postmaster.pid is a live server of ``pgdata``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "dead"
    except PermissionError:
        # As PostgreSQL reasons: a postmaster of this cluster runs as the cluster's
        # owner, whom we (root or the owner) may signal.
        return "other"
    if _is_zombie(pid):
        return "dead"
    if not Path("/proc/self/cwd").exists():
        return "running"  # no /proc to tell by: assume the worst
    with contextlib.suppress(OSError):
        # A postmaster changes into its data directory first thing; a different
        # working directory means the pid now belongs to something else.
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        return "running" if cwd == pgdata.resolve() else "other"
    return "dead"  # exited meanwhile


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # PostgreSQL binds with SO_REUSEADDR too, so TIME_WAIT leftovers do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""
