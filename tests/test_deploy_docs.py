"""docs/deploy.md's commands, run for real where this machine allows it (issue 15).

The commands and configuration are read from the page itself, so the page and its tests cannot
drift apart; only what ties them to a real machine is replaced (the ports 3000 and 443, the
certificate paths, ``/var/lib/gatewayd``, ``/etc/gatewayd``, ``/opt/gatewayd``, ``sudo``):

- the nginx server block, run by nginx in front of a daemon whose ``server.trusted_proxies``
  comes from the page's environment file lines: /health, a WebSocket through
  ``location /ws/``, and the client address the daemon sees (from ``X-Forwarded-For`` as the
  proxy sets it, not as the client sends it);
- the Caddyfile, validated and adapted by caddy, then run in front of the same daemon;
- the move from the embedded PostgreSQL to a server, on the files ``tools/install.sh``
  installs: ``check-config``, ``gatewayd backup``, ``createuser``/``createdb`` against a
  scratch cluster of this machine's PostgreSQL (Debian's, else the pgserver wheel's), the
  ``DB_URL`` line, ``gatewayd restore``, ``migrate status`` (all through
  ``tools/as-service.sh``), the removal of the embedded server's files, and the daemon on the
  server with the users it had;
- the drop-in's ``install -D``; ``curl`` on /health and the ``jq`` filter on the daemon's own
  log lines;
- the log format: JSON lines when stdout is not a terminal (journald), coloured console text
  on a terminal (a pseudo-terminal), ``json`` there on request, ``console`` on a pipe without
  colours.

``journalctl`` and ``systemctl`` need a booted systemd and are not run (the page says so).
nginx, caddy, openssl, jq and curl come from Debian (``.ci/run`` installs them); a test whose
program is missing is skipped, naming the package.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import select
import shlex
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import psycopg
import pytest
import trio
from psycopg import sql
from trio_websocket import open_websocket_url

from gatewayd.config import LEGACY_ENV, Config
from gatewayd.store.embedded import EmbeddedPostgres, find_postgres_bin
from gatewayd.store.embedded_os import RunAs, choose_run_as, grant_traverse
from tests.browser import ROOT, SimDaemon, stop_process, write_sim_config
from tests.test_api_v1 import basic
from tests.test_deploy import read_env_file

DOC = ROOT / "docs" / "deploy.md"
#: The installed ``gatewayd`` command (the venv's console script), as the page runs it.
GATEWAYD = Path(sys.executable).parent / "gatewayd"
SBIN_PATH = f"{os.environ.get('PATH', '')}:/usr/local/sbin:/usr/sbin:/sbin"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


# --------------------------------------------------------------------------- the page


def page() -> str:
    return DOC.read_text()


def fenced(language: str) -> list[str]:
    """The page's fenced blocks of ``language``, as written."""
    return re.findall(rf"^```{language}\n(.*?)^```\n", page(), re.MULTILINE | re.DOTALL)


def command_line(containing: str) -> str:
    """The one command of the page (a line of a bash block, or inline code) that contains
    ``containing``."""
    joined = [re.sub(r"\s*\\\n\s*", " ", block) for block in fenced("bash")]  # continuations
    candidates = [line.strip() for block in joined for line in block.splitlines()]
    candidates += re.findall(r"`([^`\n]+)`", page())
    found = {c for c in candidates if containing in c}
    assert len(found) == 1, (containing, found)
    return found.pop()


def replaced(text: str, old: str, new: str, *, count: int = 1) -> str:
    """``text`` with ``old`` replaced by ``new``, which must occur exactly ``count`` times."""
    assert text.count(old) == count, (old, text)
    return text.replace(old, new)


def without_sudo(command: str) -> str:
    """The command without ``sudo`` / ``sudo -u USER``: the tests run as whoever runs them,
    and the page's accounts (gatewayd, postgres) are not made here."""
    return re.sub(r"(^|&& )sudo (-u \S+ )?", r"\1", command)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        assert process.poll() is None, log.read_text(errors="replace")
        assert time.monotonic() < deadline, f"nothing listens on {port}:\n{log.read_text()}"
        time.sleep(0.05)


def program(name: str, package: str) -> str:
    found = shutil.which(name, path=SBIN_PATH)
    if found is None:
        pytest.skip(f"{name} is not installed: apt-get install {package} (.ci/run does)")
    return found


def plain_env(**extra: str) -> dict[str, str]:
    """This process's environment without gatewayd's settings and database variables."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GATEWAYD_", "DB_", "PG")) and k not in LEGACY_ENV
    }
    return {**env, **extra}


@contextlib.contextmanager
def scratch_database(pg_server: EmbeddedPostgres) -> Iterator[str]:
    name = f"deploy_{uuid.uuid4().hex}"
    with psycopg.connect(pg_server.dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlsplit(pg_server.dsn)._replace(path=f"/{name}").geturl()
    finally:
        with psycopg.connect(pg_server.dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def wait_line(daemon: SimDaemon, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in list(daemon.lines):
            if check(line):
                return line
        time.sleep(0.05)
    raise AssertionError(f"no such line; the daemon said: {daemon.lines[-20:]}")


# --------------------------------------------------------------------------- section 5: proxies


@pytest.fixture(scope="module")
def proxied(
    pg_server: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SimDaemon]:
    """A daemon set up as section 5 says: the page's environment file lines (APP_BASE_URL,
    GATEWAYD_SERVER_TRUSTED_PROXIES) in its environment."""
    (block,) = [b for b in fenced("bash") if b.startswith("# /etc/gatewayd/gatewayd.env\n")]
    directory = tmp_path_factory.mktemp("proxied")
    env_file = directory / "gatewayd.env"
    env_file.write_text(block)
    env = read_env_file(env_file)
    assert env["GATEWAYD_SERVER_TRUSTED_PROXIES"] == "127.0.0.1"
    with scratch_database(pg_server) as dsn:
        config = write_sim_config(directory, dsn)
        with SimDaemon.running(config, extra_env=env) as daemon:
            yield daemon


def through(proxy: str, source: str, ssl_context: ssl.SSLContext | None = None) -> httpx.Client:
    """An HTTP client of the proxy at ``proxy``, connecting from the address ``source`` (any
    127.x.y.z is this machine's loopback: a client the proxy can tell apart from itself)."""
    transport = httpx.HTTPTransport(local_address=source, verify=ssl_context or True)
    return httpx.Client(base_url=proxy, transport=transport, timeout=30)


def check_the_proxy(
    daemon: SimDaemon, proxy: str, source: str, ssl_context: ssl.SSLContext | None = None
) -> None:
    """What section 5 promises of a proxy in front of the daemon."""
    with through(proxy, source, ssl_context) as client:
        health = client.get("/health")
        assert health.status_code == 200, health.text
        assert health.json()["components"]["database"]["status"] == "up"

        # The client the daemon sees is the proxy's peer, whatever X-Forwarded-For the client
        # itself sends (the proxy overwrites it; the daemon believes only its trusted proxy).
        made = client.post("/api/v1/auth/generate-pin")
        assert made.status_code == 201, made.text
        login = client.post(
            "/api/v1/auth/login",
            headers={**basic(made.json()["data"]["pin"]), "X-Forwarded-For": "203.0.113.7"},
        )
        assert login.status_code == 200, login.text
        token = login.json()["data"]["token"]
        seen = wait_line(
            daemon,
            lambda line: (
                line.get("event") == "gatewayd.auth.login"
                and line.get("user_id") == made.json()["data"]["user_id"]
            ),
        )
        assert seen["client"] == source
        wrong = client.post("/api/v1/auth/login", headers=basic("ZZZZZZ"))
        assert wrong.status_code == 401
        failed = wait_line(
            daemon,
            lambda line: (
                line.get("event") == "gatewayd.auth.login_failed" and line.get("client") == source
            ),
        )
        assert failed["reason"] == "wrong_pin"

        session = client.post(
            "/api/v1/sessions",
            json={"session_name": "Through the proxy"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert session.status_code == 201, session.text
        session_id = session.json()["data"]["session_id"]

    # The WebSocket API through the proxy: the upgrade passes and frames arrive.
    ws_url = proxy.replace("http", "ws", 1) + f"/ws/sessions/{session_id}?token={quote(token)}"

    async def first_frame() -> dict[str, Any]:
        with trio.fail_after(20):
            async with open_websocket_url(ws_url, ssl_context=ssl_context) as ws:
                return dict(json.loads(await ws.get_message()))

    frame = trio.run(first_frame)
    assert frame["type"] == "status_update", frame


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path, ssl.SSLContext]:
    """A self-signed certificate for wa.example.com and 127.0.0.1 (openssl), its key, and a
    client context that trusts it."""
    openssl = program("openssl", "openssl")
    cert, key = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-nodes", "-days", "1",
            "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=wa.example.com",
            "-addext", "subjectAltName=DNS:wa.example.com,IP:127.0.0.1",
        ],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key, ssl.create_default_context(cafile=str(cert))


def test_nginx_server_block(
    proxied: SimDaemon, tmp_path: Path, certificate: tuple[Path, Path, ssl.SSLContext]
) -> None:
    """The page's nginx block, as written but for its port and certificate, serves /health,
    passes the WebSocket upgrade and tells the daemon the client's address."""
    nginx = program("nginx", "nginx")
    cert, key, context = certificate
    (block,) = fenced("nginx")
    port = free_port()
    daemon_port = urlsplit(proxied.base_url).port
    block = replaced(block, "listen 443 ssl http2;", f"listen 127.0.0.1:{port} ssl http2;")
    block = replaced(block, "/etc/letsencrypt/live/wa.example.com/fullchain.pem", str(cert))
    block = replaced(block, "/etc/letsencrypt/live/wa.example.com/privkey.pem", str(key))
    block = replaced(block, "http://127.0.0.1:3000;", f"http://127.0.0.1:{daemon_port};", count=2)

    prefix = tmp_path / "nginx"
    prefix.mkdir()
    log = prefix / "error.log"
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # As root, nginx's workers would run as nobody, who cannot enter tmp_path.
    user = "user root;\n" if os.geteuid() == 0 else ""
    (prefix / "nginx.conf").write_text(
        f"{user}daemon off;\nworker_processes 1;\npid {prefix / 'nginx.pid'};\n"
        f"error_log {log} info;\nevents {{\n    worker_connections 64;\n}}\n"
        f"http {{\n    access_log {prefix / 'access.log'};\n{temp}\n{block}}}\n"
    )
    with log.open("ab") as output:
        process = subprocess.Popen(
            [nginx, "-p", str(prefix), "-e", str(log), "-c", str(prefix / "nginx.conf")],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_listening(port, process, log)
        check_the_proxy(proxied, f"https://127.0.0.1:{port}", "127.0.0.2", context)
    finally:
        stop_process(process, signal.SIGQUIT)  # graceful: workers finish, then the master
    assert "[emerg]" not in log.read_text() and "[alert]" not in log.read_text()


def caddy_env(home: Path) -> dict[str, str]:
    """caddy keeps its state under $HOME / $XDG_*: a scratch directory, not /root."""
    return {
        **os.environ,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_DATA_HOME": str(home / "data"),
    }


def test_caddyfile(proxied: SimDaemon, tmp_path: Path) -> None:
    """The page's Caddyfile is valid and proxies to the daemon; run (over plain HTTP on a free
    port: a certificate for wa.example.com needs the internet) in front of the daemon, it sets
    X-Forwarded-For and passes WebSockets by itself, as the page says."""
    caddy = program("caddy", "caddy")
    (block,) = fenced("caddy")
    env = caddy_env(tmp_path)
    caddyfile = tmp_path / "Caddyfile"
    caddyfile.write_text(block)
    validate = subprocess.run(
        [caddy, "validate", "--config", str(caddyfile), "--adapter", "caddyfile"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert validate.returncode == 0, validate.stdout + validate.stderr
    assert "not formatted" not in validate.stderr  # caddy fmt has nothing to change
    adapted = subprocess.run(
        [caddy, "adapt", "--config", str(caddyfile), "--adapter", "caddyfile"],
        capture_output=True, text=True, env=env, timeout=60, check=True,
    )  # fmt: skip
    (server,) = json.loads(adapted.stdout)["apps"]["http"]["servers"].values()
    assert server["listen"] == [":443"]
    (route,) = server["routes"]
    assert route["match"] == [{"host": ["wa.example.com"]}]
    assert '"dial":"127.0.0.1:3000"' in json.dumps(route, separators=(",", ":"))

    port, daemon_port = free_port(), urlsplit(proxied.base_url).port
    site = replaced(block, "wa.example.com {", f"http://127.0.0.1:{port} {{")
    site = replaced(site, "127.0.0.1:3000", f"127.0.0.1:{daemon_port}")
    caddyfile.write_text("{\n\tadmin off\n}\n\n" + site)
    log = tmp_path / "caddy.log"
    with log.open("ab") as output:
        process = subprocess.Popen(
            [caddy, "run", "--config", str(caddyfile), "--adapter", "caddyfile"],
            stdout=output, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:
        wait_listening(port, process, log)
        check_the_proxy(proxied, f"http://127.0.0.1:{port}", "127.0.0.3")
    finally:
        stop_process(process)


def test_proxy_timeout_outlives_the_pings() -> None:
    """The numbers the page's nginx block is commented with are the daemon's defaults."""
    (block,) = fenced("nginx")
    defaults = Config()
    assert "client_max_body_size 16m;   # server.body_limit" in block
    assert defaults.server.body_limit == 16 * 1024 * 1024
    read_timeout = re.search(r"proxy_read_timeout (\d+)s;", block)
    assert read_timeout is not None
    assert defaults.websocket.ping_interval == 20.0 < int(read_timeout.group(1))
    assert "20 s pings" in page()


# --------------------------------------------------------------------------- section 4: logs


def gatewayd_run(config: Path, cwd: Path, stdout: int) -> subprocess.Popen[bytes]:
    """``gatewayd run`` as an operator types it: no log format in its environment."""
    return subprocess.Popen(
        [str(GATEWAYD), "run", "--config", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        cwd=str(cwd),
        env=plain_env(),
        start_new_session=True,
    )


def read_until(fd: int, marker: bytes, got: bytearray) -> None:
    """Read ``fd`` into ``got`` until ``marker`` is in it (a pipe, or a pty's master side)."""
    deadline = time.monotonic() + 120
    while marker not in got:
        assert time.monotonic() < deadline, f"no {marker!r} in:\n{got.decode(errors='replace')}"
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the pty's other side is closed
                chunk = b""
            assert chunk, f"output ended without {marker!r}:\n{got.decode(errors='replace')}"
            got += chunk


def read_to_end(fd: int, got: bytearray) -> None:
    """Read ``fd`` into ``got`` until the writer is gone (EOF, or EIO on a pty)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if select.select([fd], [], [], 0.5)[0]:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            got += chunk
    raise AssertionError(f"the output did not end:\n{got.decode(errors='replace')}")


def stop(process: subprocess.Popen[bytes], fd: int, got: bytearray) -> None:
    """SIGTERM, then everything it still wrote; it must exit 0."""
    process.send_signal(signal.SIGTERM)
    read_to_end(fd, got)
    assert process.wait(timeout=30) == 0, got.decode(errors="replace")


def log_config(tmp_path: Path, dsn: str, fmt: str | None) -> Path:
    """A sim daemon's config whose ``log.format`` is ``fmt`` (None: not set, i.e. auto)."""
    config = write_sim_config(tmp_path, dsn)
    setting = "" if fmt is None else f'format = "{fmt}"\n'
    config.write_text(replaced(config.read_text(), 'format = "json"\n', setting))
    return config


def test_json_lines_on_a_pipe_curl_and_the_jq_filter(tmp_path: Path, pg_dsn: str) -> None:
    """Not on a terminal (as under systemd: journald reads a pipe), the default log is one JSON
    object a line; the page's curl answers from /health and its jq filter reads the lines
    (``journalctl -o cat`` prints each message as the daemon wrote it)."""
    jq = program("jq", "jq")
    curl = program("curl", "curl")
    process = gatewayd_run(log_config(tmp_path, pg_dsn, None), tmp_path, subprocess.PIPE)
    assert process.stdout is not None
    fd, got = process.stdout.fileno(), bytearray()
    try:
        read_until(fd, b'"gatewayd.started"', got)
        listening = next(
            json.loads(line) for line in got.splitlines() if b"gatewayd.http.listening" in line
        )
        port = urlsplit(listening["binds"][0]).port
        doc_curl = command_line("curl -s http://127.0.0.1:3000/health")
        words = shlex.split(replaced(doc_curl, ":3000/", f":{port}/"))
        answer = subprocess.run(
            [curl, *words[1:]],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        assert json.loads(answer.stdout)["components"]["database"]["status"] == "up"
    finally:
        stop(process, fd, got)
        process.stdout.close()
    lines = [json.loads(line) for line in got.decode().splitlines()]  # every line is JSON
    assert {"gatewayd.started", "gatewayd.stopped"} <= {line["event"] for line in lines}

    journal = command_line("journalctl -u gatewayd -o cat | jq")
    words = shlex.split(journal.split(" | ", 1)[1])
    assert words[0] == "jq"
    filtered = subprocess.run(
        [jq, *words[1:]], input=bytes(got), capture_output=True, timeout=30, check=True
    )
    assert filtered.stdout.decode().splitlines() == [
        f"{line['timestamp']}\t{line['level']}\t{line['event']}" for line in lines
    ]


def on_a_terminal(directory: Path, config: Path) -> str:
    """What ``gatewayd run`` writes from its start to its exit on a terminal (a pseudo-terminal:
    its stdout is a tty, as in an operator's shell)."""
    master, slave = pty.openpty()
    try:
        process = gatewayd_run(config, directory, slave)
    finally:
        os.close(slave)
    got = bytearray()
    try:
        read_until(master, b"gatewayd.started", got)
    finally:
        stop(process, master, got)
        os.close(master)
    return got.decode(errors="replace").replace("\r\n", "\n")


def test_coloured_console_text_on_a_terminal(tmp_path: Path, pg_dsn: str) -> None:
    """``gatewayd run`` on a terminal writes structlog's console rendering with colours, by
    default (``log.format = "auto"``) and with ``console``; ``json`` keeps JSON lines there."""
    for fmt in (None, "console", "json"):
        directory = tmp_path / str(fmt)
        directory.mkdir()
        text = on_a_terminal(directory, log_config(directory, pg_dsn, fmt))
        if fmt == "json":
            assert "\x1b" not in text
            assert "gatewayd.started" in {json.loads(line)["event"] for line in text.splitlines()}
            continue
        assert ANSI.search(text), text
        plain = ANSI.sub("", text).splitlines()
        started = next(line for line in plain if "gatewayd.started" in line)
        assert re.match(r"\d{4}-\d\d-\d\dT\S+Z \[info\s*\] gatewayd\.started ", started)
        assert not any(line.startswith("{") for line in plain)


def test_console_format_on_a_pipe_is_plain_text(tmp_path: Path, pg_dsn: str) -> None:
    """``log.format = "console"`` where stdout is not a terminal: the same readable text,
    without colour codes (they would end up in the file or the journal)."""
    process = gatewayd_run(log_config(tmp_path, pg_dsn, "console"), tmp_path, subprocess.PIPE)
    assert process.stdout is not None
    fd, got = process.stdout.fileno(), bytearray()
    try:
        read_until(fd, b"gatewayd.started", got)
    finally:
        stop(process, fd, got)
        process.stdout.close()
    text = got.decode()
    assert not ANSI.search(text) and "\x1b" not in text
    started = next(line for line in text.splitlines() if "gatewayd.started" in line)
    assert re.match(r"\d{4}-\d\d-\d\dT\S+Z \[info\s*\] gatewayd\.started ", started)
    assert not any(line.startswith("{") for line in text.splitlines())


# --------------------------------------------------------------------------- section 7: a server


def server_bin() -> Path:
    """The newest of this machine's PostgreSQL server packages (Debian's
    /usr/lib/postgresql/N/bin: 15 on Debian 12), else the pgserver wheel's."""
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
    )
    return debian[-1].parent if debian else find_postgres_bin()


@contextlib.contextmanager
def postgres_server(directory: Path) -> Iterator[dict[str, str]]:
    """A scratch cluster of :func:`server_bin` (as root: run as the embedded server's account,
    PostgreSQL refuses root), listening on 127.0.0.1 and a socket in ``directory``; its
    superuser ``postgres`` logs in on the socket without a password, as ``sudo -u postgres``
    does on Debian. Yields the libpq environment that reaches it as that superuser."""
    bin_dir = server_bin()
    pgdata, sockets = directory / "cluster", directory / "sockets"
    run_as: RunAs | None = choose_run_as(pgdata, "gatewayd-postgres")
    pgdata.mkdir(mode=0o700, parents=True)
    sockets.mkdir()
    owner: dict[str, Any] = {}
    if run_as is not None:
        grant_traverse(directory, run_as)
        for path in (pgdata, sockets):
            os.chown(path, run_as.uid, run_as.gid)
        owner = {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}
    port = str(free_port())
    env = plain_env()

    def pg(name: str, *args: str) -> None:
        result = subprocess.run(
            [str(bin_dir / name), *args],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, cwd="/",
            timeout=120, check=False, **owner,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr

    pg("initdb", "-D", str(pgdata), "-U", "postgres", "-E", "UTF8", "--no-locale",
       "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync")  # fmt: skip
    server_options = f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets} -c fsync=off"
    pg("pg_ctl", "-D", str(pgdata), "-l", str(pgdata / "server.log"), "-w", "-t", "60",
       "-o", server_options, "start")  # fmt: skip
    try:
        yield {"PGHOST": str(sockets), "PGPORT": port, "PGUSER": "postgres", "bin": str(bin_dir)}
    finally:
        pg("pg_ctl", "-D", str(pgdata), "-m", "fast", "-w", "stop")


class Installed:
    """The files ``tools/install.sh`` installs, under a scratch root: the repository's
    gatewayd.toml as /etc/gatewayd/gatewayd.toml, systemd/gatewayd.env.example as
    /etc/gatewayd/gatewayd.env, and the state directory /var/lib/gatewayd that systemd makes.
    The environment file's paths are moved under the root too, its port is 0 (any free one),
    and the WhatsApp network is the simulated one (the internet cannot be reached here)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.etc = root / "etc" / "gatewayd"
        self.state = root / "var" / "lib" / "gatewayd"
        self.etc.mkdir(parents=True)
        self.state.mkdir(parents=True, mode=0o700)
        self.config = self.etc / "gatewayd.toml"
        shutil.copyfile(ROOT / "gatewayd.toml", self.config)
        self.env_file = self.etc / "gatewayd.env"
        example = (ROOT / "systemd" / "gatewayd.env.example").read_text()
        example = replaced(example, "\nPORT=3000\n", "\nPORT=0\n")
        self.env_file.write_text(
            example.replace("/var/lib/gatewayd", str(self.state)) + "GATEWAYD_WHATSAPP_MODE=sim\n"
        )

    def localised(self, command: str) -> str:
        """A command of the page, on this root (and without ``sudo``)."""
        command = without_sudo(command)
        command = command.replace("tools/as-service.sh", str(ROOT / "tools" / "as-service.sh"))
        for installed in ("/opt/gatewayd/.venv/bin/gatewayd", "/tmp/gatewayd-new/bin/gatewayd"):
            command = command.replace(installed, str(GATEWAYD))
        for directory in ("/etc/gatewayd", "/var/lib/gatewayd"):
            command = command.replace(directory, f"{self.root}{directory}")
        return command

    def run(self, command: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """A command of the page, run from elsewhere than the state directory (an operator's
        shell is not there)."""
        words = shlex.split(self.localised(command))
        result = subprocess.run(
            words, capture_output=True, text=True, timeout=300, check=False,
            cwd=str(self.root), **{"env": plain_env(DESTDIR=str(self.root)), **kwargs},
        )  # fmt: skip
        assert result.returncode == 0, (words, result.stdout + result.stderr)
        return result

    @contextlib.contextmanager
    def service(self) -> Iterator[SimDaemon]:
        """The daemon as the unit starts it: its config, environment file and directory."""
        with SimDaemon.running(
            self.config,
            cwd=self.state,
            extra_env=read_env_file(self.env_file),
            program=[str(GATEWAYD)],
        ) as daemon:
            yield daemon


def test_moving_from_the_embedded_postgresql_to_a_server(tmp_path: Path) -> None:
    """Section 7, step by step, from the installed daemon on the embedded PostgreSQL to a
    server of this machine's PostgreSQL, with the commands of the page (through
    tools/as-service.sh): the daemon on the server has the users it had (a PIN made before the
    move logs in after it) and needs nothing of the embedded server's files."""
    box = Installed(tmp_path / "root")
    checked = box.run(command_line("as-service.sh /opt/gatewayd/.venv/bin/gatewayd check-config"))
    effective = json.loads(checked.stdout)["database"]
    assert effective["data_dir"] == str(box.state / "data") and effective["url"] == ""

    with box.service() as daemon:
        made = daemon.sim.post("/api/v1/auth/generate-pin")
        assert made.status_code == 201, made.text
        user_id, pin = made.json()["data"]["user_id"], made.json()["data"]["pin"]
        assert daemon.sim.post("/api/v1/auth/login", headers=basic(pin)).status_code == 200
        assert any(line["event"] == "gatewayd.db.embedded" for line in daemon.lines)

    # 2. The backup, with the daemon stopped.
    backup = box.run(command_line("gatewayd backup /var/lib/gatewayd/move.dump"))
    assert f"the embedded PostgreSQL in {box.state / 'data'}" in backup.stdout, backup.stdout
    assert "the auth secret" in backup.stdout

    with postgres_server(tmp_path / "server") as server:
        # 1. The role and the database, as the server's superuser.
        bin_dir = Path(server.pop("bin"))
        password = uuid.uuid4().hex
        create = without_sudo(command_line("createuser --pwprompt gatewayd"))
        for part in create.split(" && "):
            name, *args = shlex.split(part)
            result = subprocess.run(
                [str(bin_dir / name), *args],
                # No terminal (a session of its own): --pwprompt reads the password, twice,
                # from stdin.
                input=f"{password}\n{password}\n",
                env=plain_env(**server), start_new_session=True,
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert result.returncode == 0, result.stdout + result.stderr

        # 3. DB_URL in the environment file.
        db_url = command_line("DB_URL=postgresql://gatewayd:")
        db_url = replaced(db_url, "…", password)
        db_url = replaced(db_url, "@127.0.0.1:5432/", f"@127.0.0.1:{server['PGPORT']}/")
        with box.env_file.open("a") as f:
            f.write(db_url + "\n")
        url = read_env_file(box.env_file)["DB_URL"]

        # 4. The restore into the new, empty database.
        box.run(command_line("gatewayd restore /var/lib/gatewayd/move.dump"))
        status = box.run(command_line("gatewayd-new/bin/gatewayd migrate status"))
        assert ": up to date" in status.stdout, status.stdout

        # 5. The embedded server's files removed (before the start here: it must not need
        # them), then the daemon on the server.
        removal = box.localised(command_line("rm -rf /var/lib/gatewayd/data/"))
        subprocess.run(["bash", "-c", removal], check=True, timeout=60)
        assert "auth.secret" in {p.name for p in (box.state / "data").iterdir()}
        assert not list((box.state / "data").glob("pg*"))
        with box.service() as daemon:
            health = daemon.sim.get("/health")
            assert health.status_code == 200, health.text
            assert health.json()["components"]["database"]["status"] == "up"
            login = daemon.sim.post("/api/v1/auth/login", headers=basic(pin))
            assert login.status_code == 200, login.text
            assert all(line["event"] != "gatewayd.db.embedded" for line in daemon.lines)
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT id FROM users").fetchall() == [(user_id,)]
            owner = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database"
                                 " WHERE datname = current_database()").fetchone()  # fmt: skip
            assert owner == ("gatewayd",)


def test_the_notify_reload_drop_in_installs(tmp_path: Path) -> None:
    """Section 2's ``install -D`` of the drop-in, into a scratch /etc (``systemctl
    daemon-reload`` needs a booted systemd; tests/test_systemd.py checks the drop-in)."""
    command = command_line("install -D -m 0644 systemd/gatewayd.service.d/notify-reload.conf")
    command = replaced(without_sudo(command), " /etc/", f" {tmp_path}/etc/")
    subprocess.run(shlex.split(command), cwd=ROOT, check=True, timeout=60)
    installed = tmp_path / "etc/systemd/system/gatewayd.service.d/notify-reload.conf"
    assert (
        installed.read_bytes()
        == (ROOT / "systemd/gatewayd.service.d/notify-reload.conf").read_bytes()
    )
    assert stat.S_IMODE(installed.stat().st_mode) == 0o644
