"""An embedded PostgreSQL server kept in the daemon's data directory.

When no ``database.url`` is configured, gatewayd runs its own PostgreSQL so a fresh
install needs no database server. The binaries are the ones bundled in the ``pgserver``
wheel (falling back to ``pg_ctl`` on ``PATH``); we run ``initdb`` and ``postgres``
ourselves rather than using ``pgserver.get_server``, which registers ``atexit`` hooks
and keeps its own lock directory.

The server is a child of the daemon that dies with it (see
:mod:`gatewayd.store.postmaster`); :meth:`EmbeddedPostgres.supervise` restarts it
when it dies on its own, and a server left running on the data directory by an
earlier, killed daemon is stopped at start.

Layout under ``data_dir``::

    pg/            the cluster (PGDATA); created by initdb, kept across restarts
    pg.password    random password of the ``gatewayd`` role (0600, never logged)
    pg.port        the port of the last start, reused when free
    pg.lock        flock held while this process owns the server

The server listens on 127.0.0.1 only (no Unix socket) and requires the password
(scram-sha-256). PostgreSQL refuses to run as root, so when we are root the server
runs as an unprivileged system user (the owner of an existing cluster, else
``gatewayd-postgres``, created on first use; see :mod:`gatewayd.store.embedded_os`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import IO

import psycopg
import structlog
import trio

from gatewayd.errors import StoreUnavailable
from gatewayd.store import postmaster
from gatewayd.store.db import map_exceptions
from gatewayd.store.embedded_os import (
    RunAs,
    choose_run_as,
    ephemeral_port,
    grant_traverse,
    port_free,
    postmaster_state,
    read_postmaster_pid,
    run_program,
    try_lock,
    write_private,
)

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
_STOP_TIMEOUT = 60.0  # for the fast shutdown; then immediate
# Restarts after the server died: the first soon, doubling while it keeps dying.
_RESTART_DELAY_MIN = 0.2
_RESTART_DELAY_MAX = 5.0
_STABLE_AFTER = 30.0  # a server that ran this long died "for the first time" again
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


class EmbeddedPostgres:
    """A PostgreSQL cluster in ``data_dir / "pg"``, started and stopped by this object.

    :meth:`start` and :meth:`stop` block and may be called from any thread; from Trio
    use :func:`open_embedded_postgres`, which also runs :meth:`supervise`.
    """

    def __init__(self, data_dir: Path, *, port: int = 0) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.pgdata = self.data_dir / "pg"
        self._password_file = self.data_dir / "pg.password"
        self._port_file = self.data_dir / "pg.port"
        self._lock_path = self.data_dir / "pg.lock"
        self._configured_port = port
        self._bin = find_postgres_bin()
        self._run_as: RunAs | None = None
        self._lock_file: IO[bytes] | None = None
        self._started = False
        self._stopping = False  # set while stop() runs: supervise() must not restart
        self._proc: subprocess.Popen[bytes] | None = None
        self._proc_started_at = 0.0
        self._port: int | None = None
        self._dsn: str | None = None

    def __repr__(self) -> str:
        # Never the DSN: it carries the password.
        return f"EmbeddedPostgres(data_dir={str(self.data_dir)!r}, port={self._port})"

    @property
    def running(self) -> bool:
        """True while the server this object started is alive."""
        return self._started and self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The pid of the postmaster this object started (None when stopped)."""
        return self._proc.pid if self._started and self._proc is not None else None

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
        gatewayd uses this data directory. A server of this cluster left running by
        a process that no longer holds the data directory (a killed daemon) is
        stopped first.
        """
        if self._started:
            return self.dsn
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._acquire_lock()
        try:
            self._run_as = choose_run_as(self.pgdata, SYSTEM_USER)
            if self._run_as is not None:
                grant_traverse(self.data_dir, self._run_as)
                grant_traverse(self._bin, self._run_as)
            if not (self.pgdata / "PG_VERSION").exists():
                self._initdb()
            password = self._read_password()
            self._clear_leftover()
            self._started = True
            self._stopping = False
            self._start_server()
            self._dsn = f"postgresql://{ROLE}:{password}@{HOST}:{self._port}/{DATABASE}"
            self._ensure_database(password)
        except BaseException:
            self.stop()
            raise
        logger.info(
            "gatewayd.db.embedded.started",
            data_dir=str(self.data_dir),
            port=self._port,
            pid=self.pid,
            bin=str(self._bin),
        )
        return self._dsn

    def _acquire_lock(self) -> None:
        # The flock marks "a gatewayd owns this cluster". The kernel drops it when the
        # process dies, so a crashed run never leaves it behind.
        lock_file = try_lock(self._lock_path)
        if lock_file is None:
            raise StoreUnavailable(
                f"the embedded PostgreSQL in {self.data_dir} is already running: "
                "another gatewayd process is using this data directory",
                details={"reason": "already_running", "data_dir": str(self.data_dir)},
            )
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
        # The first start's silent part (seconds on a small VPS): say what is happening.
        logger.info("gatewayd.db.embedded.initializing", data_dir=str(self.data_dir))
        if scratch.exists():
            shutil.rmtree(scratch)
        scratch.mkdir(mode=0o700)
        password = secrets.token_urlsafe(32)  # URL-safe: goes into the DSN verbatim
        pwfile = self.data_dir / f".pg.initdb-pw.{secrets.token_hex(8)}"
        try:
            write_private(pwfile, password + "\n")
            if self._run_as is not None:
                os.chown(scratch, self._run_as.uid, self._run_as.gid)
                os.chown(pwfile, self._run_as.uid, self._run_as.gid)
            args = ["-D", str(scratch), "-U", ROLE, f"--pwfile={pwfile}", *_INITDB_OPTIONS]
            self._run("initdb", args, timeout=_START_TIMEOUT)
        finally:
            pwfile.unlink(missing_ok=True)
        # The password file goes in place before the cluster: a crash in between
        # leaves no cluster and the next start runs initdb again with a new password.
        write_private(self._password_file, password + "\n")
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

    def _clear_leftover(self) -> None:
        """Stop a live server of this cluster; remove the pid file of a dead one."""
        pid = read_postmaster_pid(self.pgdata)
        if pid is None:
            return
        state = postmaster_state(pid, self.pgdata)
        if state == "running":
            # We hold the flock, so no gatewayd owns this server: it was left by a
            # daemon killed before it could stop it (or started by hand). Its data is
            # ours, so it is stopped, never refused.
            logger.warning("gatewayd.db.embedded.leftover_found", pid=pid)
            if not postmaster.stop_leftover(pid, self.pgdata):
                raise StoreUnavailable(
                    f"a PostgreSQL server (pid {pid}) left running on {self.pgdata} "
                    "did not stop, even with SIGKILL",
                    details={"reason": "leftover_running", "pid": pid},
                )
            logger.warning("gatewayd.db.embedded.leftover_stopped", pid=pid)
            state = postmaster_state(pid, self.pgdata)
        # We hold the flock and the recorded pid is not a postmaster of this cluster,
        # so nothing can be using the file; left in place, PostgreSQL would refuse to
        # start when the pid is a zombie or another process of the same user.
        # (Backends orphaned by a killed postmaster are still detected by PostgreSQL
        # through its shared memory segment; _spawn waits for them.)
        if (self.pgdata / "postmaster.pid").exists():
            (self.pgdata / "postmaster.pid").unlink(missing_ok=True)
            logger.info("gatewayd.db.embedded.stale_pid_removed", pid=pid, state=state)

    def _start_server(self) -> None:
        attempts = 1 if self._configured_port else 3
        for attempt in range(1, attempts + 1):
            port = self._configured_port or self._pick_port()
            try:
                self._spawn(port)
            except _PortInUse:
                if attempt == attempts:
                    raise StoreUnavailable(
                        f"the embedded PostgreSQL cannot listen on {HOST}:{port}: "
                        "the port is in use"
                    ) from None
                # Another program took the port between our probe and postgres' bind.
                continue
            self._port = port
            with contextlib.suppress(OSError):
                self._port_file.write_text(f"{port}\n")
            return

    def _pick_port(self) -> int:
        with contextlib.suppress(OSError, ValueError):
            last = int(self._port_file.read_text().strip())
            if port_free(HOST, last):
                return last
        return ephemeral_port(HOST)

    def _spawn(self, port: int) -> None:
        """Start postgres on ``port`` as our child and wait until it is ready."""
        args = ["-D", str(self.pgdata), "-p", str(port)]
        for name, value in _SERVER_SETTINGS.items():
            args += ["-c", f"{name}={value}"]
        deadline = time.monotonic() + _LEFTOVER_WAIT
        while True:
            output = postmaster.ServerOutput(self.pgdata)
            try:
                proc = postmaster.spawn(
                    self._bin / "postgres", args, run_as=self._run_as, output=output.startup_log
                )
            except (OSError, subprocess.SubprocessError) as exc:
                raise StoreUnavailable(f"cannot run postgres: {exc}") from exc
            try:
                postmaster.wait_ready(proc, self.pgdata, output=output, timeout=_START_TIMEOUT)
            except postmaster.Exited as exc:
                if "could not bind" in exc.output or "Address already in use" in exc.output:
                    raise _PortInUse from exc
                if "is still in use" in exc.output and time.monotonic() < deadline:
                    time.sleep(0.2)  # orphaned backends of a killed server are exiting
                    continue
                raise StoreUnavailable(
                    f"the embedded PostgreSQL did not start: {exc.output.strip()[-2000:]}"
                ) from exc
            except TimeoutError as exc:
                raise StoreUnavailable(f"the embedded PostgreSQL did not start: {exc}") from exc
            except BaseException:
                postmaster.stop_child(proc, fast_timeout=0.0)  # e.g. KeyboardInterrupt
                raise
            self._proc = proc
            self._proc_started_at = time.monotonic()
            return

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
        proc = self._proc
        self._stopping = True
        try:
            if proc is not None and proc.poll() is None:
                # Fast shutdown; if it does not finish in time, immediate (crash-safe:
                # the next start replays the WAL).
                if not postmaster.stop_child(proc, fast_timeout=_STOP_TIMEOUT):
                    logger.warning("gatewayd.db.embedded.stop_immediate", pid=proc.pid)
            logger.info("gatewayd.db.embedded.stopped", data_dir=str(self.data_dir))
        finally:
            self._started = False
            self._proc = None
            self._release_lock()

    # -- supervision -----------------------------------------------------------------

    async def supervise(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Restart the server whenever it dies, on the same port, until cancelled.

        Run it while the server is started (:func:`open_embedded_postgres` does).
        Returns when :meth:`stop` stops the server; a failed restart is logged and
        tried again, so the daemon waits out the outage instead of exiting.
        """
        delay = _RESTART_DELAY_MIN
        task_status.started()
        while True:
            proc = self._proc
            if proc is None or self._stopping:
                return
            returncode = await postmaster.wait_exit(proc)
            if self._stopping or self._proc is not proc:
                continue  # stopped (and maybe started again) by a caller meanwhile
            uptime = time.monotonic() - self._proc_started_at
            delay = _RESTART_DELAY_MIN if uptime >= _STABLE_AFTER else delay
            logger.error(
                "gatewayd.db.embedded.died", pid=proc.pid, returncode=returncode, restart_in=delay
            )
            while True:
                await trio.sleep(delay)
                delay = min(delay * 2, _RESTART_DELAY_MAX)
                if self._stopping or not self._started:
                    return
                try:
                    # Not abandoned on cancel: a half-started server must be seen by stop().
                    await trio.to_thread.run_sync(self._restart)
                except StoreUnavailable as exc:
                    logger.error(
                        "gatewayd.db.embedded.restart_failed", error=exc.message, retry_in=delay
                    )
                    continue
                break
            logger.warning(
                "gatewayd.db.embedded.restarted", pid=self.pid, port=self._port, after=returncode
            )

    def _restart(self) -> None:
        port = self._port
        if not self._started or self._stopping or port is None:
            raise StoreUnavailable("the embedded PostgreSQL was stopped")
        # The pid file names our dead postmaster: gone, like one of a killed daemon.
        self._clear_leftover()
        try:
            self._spawn(port)  # the same port: the DSN every pool holds names it
        except _PortInUse:
            raise StoreUnavailable(
                f"the embedded PostgreSQL cannot listen on {HOST}:{port} again: the port is in use"
            ) from None

    # -- subprocesses ----------------------------------------------------------------

    def _run(self, program: str, args: Sequence[str], *, timeout: float) -> None:
        """Run a PostgreSQL program as the server's account; StoreUnavailable on failure."""
        run_program(self._bin / program, args, run_as=self._run_as, timeout=timeout)


@contextlib.asynccontextmanager
async def open_embedded_postgres(
    data_dir: Path, *, port: int = 0
) -> AsyncIterator[EmbeddedPostgres]:
    """Run an embedded PostgreSQL for the duration of the block.

    Starting happens in a worker thread; while the block runs, :meth:`supervise`
    restarts the server if it dies. The server is stopped on exit, also when the
    block is cancelled.
    """
    server = EmbeddedPostgres(data_dir, port=port)
    try:
        # Not abandoned on cancel: a half-started server must be seen by stop().
        await trio.to_thread.run_sync(server.start)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.supervise)
            try:
                yield server
            finally:
                nursery.cancel_scope.cancel()
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
