"""What the embedded PostgreSQL needs from the operating system.

The account the server runs as when gatewayd is root (PostgreSQL refuses to run as
root), the search bits that let that account reach its files, running the PostgreSQL
programs as it, and the checks on processes, ports and the data directory lock that
:class:`~gatewayd.store.embedded.EmbeddedPostgres` relies on. Blocking, like the
manager that calls them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pwd
import secrets
import socket
import stat
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, Literal

import attrs
import structlog

from gatewayd.errors import StoreUnavailable

__all__ = [
    "RunAs",
    "choose_run_as",
    "ensure_system_user",
    "ephemeral_port",
    "grant_traverse",
    "port_free",
    "postmaster_state",
    "program_env",
    "read_from",
    "read_postmaster_pid",
    "run_program",
    "try_lock",
    "write_private",
]

logger = structlog.get_logger()


@attrs.frozen
class RunAs:
    """The unprivileged account the server runs as when we are root."""

    name: str
    uid: int
    gid: int


# -- the server's account ------------------------------------------------------------


def choose_run_as(pgdata: Path, system_user: str) -> RunAs | None:
    """None when we may run postgres ourselves, else the account to run it as.

    As root: the owner of an existing cluster, else ``system_user`` (created if missing).
    """
    if os.geteuid() != 0:
        return None
    # An existing cluster keeps its owner (e.g. created by a non-root gatewayd).
    with contextlib.suppress(FileNotFoundError, KeyError):
        owner = pgdata.stat().st_uid
        if owner != 0:
            entry = pwd.getpwuid(owner)
            return RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid)
    entry = ensure_system_user(system_user)
    return RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid)


def ensure_system_user(name: str) -> pwd.struct_passwd:
    """The passwd entry of system account ``name``, created with ``useradd`` if missing."""
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


def program_env(run_as: RunAs | None) -> dict[str, str]:
    """The environment of a PostgreSQL program: ours, without PG* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"  # parseable messages, no dependency on installed locales
    if run_as is not None:
        env["HOME"] = "/"
        env["USER"] = env["LOGNAME"] = run_as.name
    return env


def run_program(
    executable: Path, args: Sequence[str], *, run_as: RunAs | None, timeout: float
) -> None:
    """Run a PostgreSQL program as ``run_as`` (or ourselves); StoreUnavailable on failure."""
    env = program_env(run_as)
    extra: dict[str, Any] = {}
    if run_as is not None:
        extra = {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}
    # A file, not a pipe: a server started by pg_ctl could otherwise inherit the pipe
    # and keep us waiting for EOF.
    with tempfile.TemporaryFile("w+") as output:
        try:
            subprocess.run(
                [str(executable), *args],
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                env=env, cwd="/", timeout=timeout, check=True, **extra,
            )  # fmt: skip
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            output.seek(0)
            message = output.read().strip()[-2000:]
            raise StoreUnavailable(f"{executable.name} failed: {message}") from exc


# -- files ---------------------------------------------------------------------------


def grant_traverse(path: Path, run_as: RunAs) -> None:
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


def write_private(path: Path, text: str) -> None:
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


def read_from(path: Path, offset: int) -> str:
    """The text of ``path`` from byte ``offset`` on; empty when it cannot be read."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def try_lock(path: Path) -> IO[bytes] | None:
    """Open ``path`` holding an exclusive flock; None when another process holds it.

    Closing the returned file releases the lock, and so does the process dying.
    """
    lock_file = path.open("ab")
    try:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.close()
        return None
    return lock_file


# -- processes -----------------------------------------------------------------------


def read_postmaster_pid(pgdata: Path) -> int | None:
    """The pid recorded in ``pgdata/postmaster.pid``, if any."""
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


def postmaster_state(pid: int, pgdata: Path) -> Literal["running", "dead", "other"]:
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


# -- ports ---------------------------------------------------------------------------


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # PostgreSQL binds with SO_REUSEADDR too, so TIME_WAIT leftovers do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def ephemeral_port(host: str) -> int:
    """A port on ``host`` that the kernel considers free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
