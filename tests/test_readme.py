"""The README's "## The agents API" and "## The /api/v1 walk" sections run as written.

Every ```bash block of a section is run verbatim with ``bash -e``, in order, in a fresh
directory, against a real ``gatewayd run --whatsapp sim`` on localhost:3000 with its own
database (``DB_URL``). Blocks whose first line is ``# terminal N (keeps running, listens on
HOST:PORT)`` are long-running servers (the daemon itself, the media server, the tiny AI
backend): they are started in the background and awaited on their port. Every other block
must exit 0, and its ``# → STATUS BODY`` lines are checked against the answers of its last
curl calls, in order: BODY is JSON whose fields must be present with these values (a string
ending in ``...`` is a prefix; a list must match item by item) or, when it is not JSON, text
the body must contain.

To see each call's status without changing the examples, ``curl`` on the blocks' PATH is a
shim that runs ``/usr/bin/curl`` with the same arguments, records the status and the body,
and prints the body as curl would.

The agents API's blocks each run in a bash of their own; the /api/v1 walk's run one after the
other in a single bash, since they pass the PIN, token and session id along in variables.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import trio

from tests.daemon import ROOT, Daemon

README = ROOT / "README.md"
SECTION = "## The agents API"
V1_SECTION = "## The /api/v1 walk"
CURL = Path("/usr/bin/curl")
PORTS = (3000, 8000, 8001)
BACKGROUND = re.compile(r"# terminal \d+ \(keeps running, listens on ([\w.]+):(\d+)\)")
EXPECT = re.compile(r"^# → (\d{3})(?: (.*))?$", re.MULTILINE)
#: Settings that would change what the examples do if they leaked in from the caller's shell.
LEAKY = (
    "PORT",
    "APP_BASE_URL",
    "AI_BACKEND_URL",
    "CORS_ORIGINS",
    "TEMP_DIR",
    "WWEBJS_AUTH_DIR",
    "LOG_LEVEL",
    "DB_URL",
)

SHIM = """#!/bin/sh
# tests/test_readme.py: record each call's status and body, print the body as curl would.
dir="$README_CURL_RECORD"
n=$(cat "$dir/count" 2>/dev/null || echo 0)
echo $((n + 1)) > "$dir/count"
/usr/bin/curl --silent --show-error --output "$dir/$n.body" --write-out '%{http_code}' "$@" > "$dir/$n.status"
rc=$?
cat "$dir/$n.body" 2>/dev/null
exit $rc
"""


def section_text(section: str = SECTION) -> str:
    text = README.read_text(encoding="utf-8")
    assert section + "\n" in text, f"README.md has no {section!r} section"
    start = text.index(section + "\n")
    end = text.find("\n## ", start + len(section))
    return text[start : end if end != -1 else len(text)]


def bash_blocks(section: str = SECTION) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```$", section_text(section), re.MULTILINE | re.DOTALL)


def matches(expected: Any, actual: Any) -> bool:
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and matches(v, actual[k]) for k, v in expected.items()
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(expected)
            and all(map(matches, expected, actual))
        )
    if isinstance(expected, str) and expected.endswith("..."):
        return isinstance(actual, str) and actual.startswith(expected[:-3])
    return type(expected) is type(actual) and expected == actual


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        # As the servers do: a connection of a previous run in TIME_WAIT does not block them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def wait_for_port(host: str, port: int, server: Daemon, timeout: float = 30) -> None:
    with trio.fail_after(timeout):
        while True:
            try:
                stream = await trio.open_tcp_stream(host, port)
            except OSError:
                server.process.poll()
                if server.process.returncode is not None:
                    raise AssertionError(
                        f"server for port {port} exited:\n" + "\n".join(server.raw[-40:])
                    ) from None
                await trio.sleep(0.1)
            else:
                await stream.aclose()
                return


def stop(server: Daemon) -> None:
    """SIGTERM the block's process group (it was started in a session of its own)."""
    if server.process.returncode is None:
        try:
            os.killpg(server.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def test_section_holds_the_deployed_services_examples() -> None:
    """The section has a runnable block for each of the deployed service's examples, in the API's
    shapes (docs/contract/agents-api.md)."""
    blocks = "\n".join(bash_blocks())
    for needle in (
        "curl -X POST http://localhost:3000/sessions \\",
        '"apikey":"API_KEY"',
        "curl http://localhost:3000/sessions/support-bot\n",
        "curl -X POST http://localhost:3000/sessions/support-bot/qr",
        "curl -X DELETE http://localhost:3000/sessions/support-bot",
        "curl -X POST http://localhost:3000/sessions/support-bot/reconnect",
        "curl -X POST http://localhost:3000/agents/support-bot/run",
        '"input": "Hello assistant!"',
        '"session_id": "6281234567890"',
        "curl -X POST http://localhost:3000/agents/support-bot/messages",
        '"data":"iVBORw0KGgo',
        '"url":"http://127.0.0.1:8001/pixel.png"',
        "curl -X POST http://localhost:3000/_sim/agents/support-bot/scan",
        "curl http://localhost:3000/health",
        "curl http://localhost:3000/metrics",
    ):
        assert needle in blocks, needle
    assert "Bearer API_KEY" in blocks and "api-key" not in blocks


async def test_every_example_runs_as_written(
    pg_dsn: str, tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Each bash block of the section runs verbatim against the sim daemon with the documented outcome."""
    await run_section(SECTION, pg_dsn, tmp_path, nursery, one_shell=False)


async def test_api_v1_walk_runs_as_written(
    pg_dsn: str, tmp_path: Path, nursery: trio.Nursery
) -> None:
    """The /api/v1 walk runs verbatim, in one shell, with the documented outcomes."""
    await run_section(V1_SECTION, pg_dsn, tmp_path, nursery, one_shell=True)


def environment(shim_dir: Path, pg_dsn: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAYD_") and k not in LEAKY}
    env.update(
        {
            "PATH": os.pathsep.join(
                [str(shim_dir), str(Path(sys.executable).parent), env.get("PATH", "")]
            ),
            "DB_URL": pg_dsn,
            "GATEWAYD_LOG_FORMAT": "json",
        }
    )
    return env


class Shell:
    """One ``bash`` that runs block after block, so variables carry from one to the next (the
    way a reader runs them, in one terminal). A failing command ends it (``set -e``)."""

    MARK = "__readme_block_done__"

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.output = b""

    @classmethod
    async def open(cls, cwd: Path, env: dict[str, str]) -> Shell:
        process = await trio.lowlevel.open_process(
            ["bash", "-e"], cwd=str(cwd), env=env, stdin=-1, stdout=-1, stderr=-2
        )
        return cls(process)

    async def run(self, block: str, record: Path) -> int:
        assert self.process.stdin is not None and self.process.stdout is not None
        script = f"export README_CURL_RECORD='{record}'\n{block}\necho {self.MARK}\n"
        await self.process.stdin.send_all(script.encode())
        while self.MARK.encode() not in self.output:
            chunk = await self.process.stdout.receive_some()
            if not chunk:
                return await self.process.wait()
            self.output += chunk
        self.output = self.output.split(self.MARK.encode(), 1)[1]
        return 0

    async def close(self) -> None:
        if self.process.stdin is not None:
            await self.process.stdin.aclose()
        with trio.move_on_after(5):
            await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def run_section(
    section: str, pg_dsn: str, tmp_path: Path, nursery: trio.Nursery, *, one_shell: bool
) -> None:
    assert CURL.exists(), "tests/test_readme.py needs curl at /usr/bin/curl (apt-get install curl)"
    busy = [port for port in PORTS if not port_free(port)]
    assert not busy, (
        f"port(s) {busy} are in use: the README's examples need 3000, 8000 and 8001 free"
    )
    blocks = bash_blocks(section)
    assert blocks and BACKGROUND.match(blocks[0]), "the section starts with the daemon's block"

    shim_dir = tmp_path / "shim"
    shim_dir.mkdir()
    (shim_dir / "curl").write_text(SHIM)
    (shim_dir / "curl").chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    env = environment(shim_dir, pg_dsn)

    servers: list[Daemon] = []
    previews: list[str] = []
    shell = await Shell.open(work, env) if one_shell else None
    try:
        for number, block in enumerate(blocks, 1):
            where = f"block {number}:\n{block}"
            background = BACKGROUND.match(block)
            if background:
                process = await trio.lowlevel.open_process(
                    ["bash", "-e", "-c", block],
                    cwd=str(work),
                    env=env,
                    stdout=-1,
                    stderr=-2,
                    start_new_session=True,  # PIPE, STDOUT
                )
                server = Daemon(process)
                servers.append(server)
                nursery.start_soon(server._read)
                host, port = background.group(1), int(background.group(2))
                if port == 3000:
                    await server.wait_for("gatewayd.started", timeout=90)
                await wait_for_port("127.0.0.1" if host == "localhost" else host, port, server)
                continue

            record = tmp_path / f"calls-{number}"
            record.mkdir()
            with trio.fail_after(30):
                if shell is not None:
                    returncode = await shell.run(block, record)
                    errors = shell.output.decode(errors="replace")[-2000:]
                else:
                    done = await trio.run_process(
                        ["bash", "-e", "-c", block],
                        cwd=str(work),
                        env={**env, "README_CURL_RECORD": str(record)},
                        capture_stdout=True,
                        capture_stderr=True,
                        check=False,
                    )
                    returncode, errors = done.returncode, done.stderr.decode()
            assert returncode == 0, f"{where}\nexit {returncode}: {errors}"
            previews += check_outcomes(where, block, record)
    finally:
        if shell is not None:
            await shell.close()
        for server in servers:
            stop(server)
        for server in servers:
            with trio.move_on_after(15):
                await server.process.wait()
            if server.process.returncode is None:
                os.killpg(server.process.pid, signal.SIGKILL)
                await server.process.wait()
        for preview in previews:
            Path(preview).unlink(missing_ok=True)
    daemon = servers[0]
    assert daemon.process.returncode == 0, "\n".join(daemon.raw[-40:])
    assert not [line for line in daemon.lines if line.get("level") in ("error", "critical")], (
        "\n".join(daemon.raw[-40:])
    )


def check_outcomes(where: str, block: str, record: Path) -> list[str]:
    """Check the block's ``# →`` lines against its last curl calls; the preview files made."""
    previews: list[str] = []
    calls = int((record / "count").read_text()) if (record / "count").exists() else 0
    expectations = EXPECT.findall(block)
    assert len(expectations) <= calls, (
        f"{where}\n{calls} curl call(s) for {len(expectations)} outcomes"
    )
    for index, (status, body) in zip(
        range(calls - len(expectations), calls), expectations, strict=True
    ):
        got_status = (record / f"{index}.status").read_text()
        got_body = (record / f"{index}.body").read_bytes().decode()
        assert got_status == status, f"{where}\nexpected {status}, got {got_status}: {got_body}"
        if body.startswith(("{", "[")):
            actual = json.loads(got_body)
            assert matches(json.loads(body), actual), f"{where}\nexpected {body}\ngot {got_body}"
            preview = (
                actual.get("data", {}).get("previewPath")
                if isinstance(actual.get("data"), dict)
                else None
            )
            if preview:
                previews.append(preview)
        elif body:
            assert body in got_body, f"{where}\nexpected text {body!r} in:\n{got_body[:2000]}"
    return previews
