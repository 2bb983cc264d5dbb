"""What the browser tests and ``bench/dashboard.py`` share: a real ``gatewayd run --whatsapp
sim`` child serving the built dashboard, and the system's Chromium driven by Playwright.

Chromium comes from the system (Debian's ``chromium`` package, which ``.ci/run`` installs):
``$CHROMIUM`` names it, else the first of ``chromium``/``chromium-browser`` on the PATH.
Playwright's own browser download is not used (it needs the internet).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from gatewayd.config import LEGACY_ENV

ROOT = Path(__file__).resolve().parent.parent

#: Flags for a headless Chromium on a machine without internet: no background traffic (update
#: checks, sync, field trials) that would fail and be retried, no sandbox as root.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--no-first-run",
    "--disable-quic",
]


def chromium_path() -> str:
    """The system Chromium, or an AssertionError that says how to get one."""
    given = os.environ.get("CHROMIUM")
    if given:
        assert Path(given).is_file(), f"$CHROMIUM={given} is not a file"
        return given
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise AssertionError(
        "the dashboard's browser tests need Chromium: apt-get install chromium "
        "(.ci/run does), or point $CHROMIUM at one"
    )


def write_sim_config(directory: Path, pg_dsn: str, extra: str = "") -> Path:
    """A daemon config on ``pg_dsn`` with the in-process simulated network, any free port."""
    path = directory / "gatewayd.toml"
    path.write_text(
        f"""
[server]
host = "127.0.0.1"
port = 0
shutdown_grace = 2.0

[database]
url = "{pg_dsn}"
data_dir = "{directory / "data"}"

[log]
format = "json"

[whatsapp]
mode = "sim"
device_dir = "{directory / "devices"}"

[media]
temp_dir = "{directory / "media"}"
{extra}"""
    )
    return path


class SimDaemon:
    """A ``gatewayd run --whatsapp sim`` child (blocking API: the browser tests are sync,
    as Playwright's sync API is)."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.lines: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        started = self.wait_for("gatewayd.started", timeout=120)
        self.base_url: str = self.wait_for("gatewayd.http.listening", timeout=1)["binds"][0]
        assert started["pid"] == process.pid
        self.sim = httpx.Client(base_url=self.base_url, timeout=30)

    @classmethod
    @contextmanager
    def running(
        cls,
        config: Path,
        *,
        cwd: Path = ROOT,
        extra_env: dict[str, str] | None = None,
        program: list[str] | None = None,
    ) -> Iterator[SimDaemon]:
        """The daemon on ``config``, run from ``cwd`` with ``extra_env`` in its environment;
        ``program``: the command that is gatewayd (default: this interpreter's)."""
        # The config file says it all: no override from this process's environment.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("GATEWAYD_") and k not in LEGACY_ENV
        }
        env["GATEWAYD_LOG_FORMAT"] = "json"
        env.update(extra_env or {})
        process = subprocess.Popen(
            [*(program or [sys.executable, "-m", "gatewayd"]), "run", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=str(cwd),
            env=env,
        )
        daemon = None
        try:
            daemon = cls(process)
            yield daemon
        finally:
            if process.poll() is None:
                stop_process(process)
            if daemon is not None:
                daemon.sim.close()
                daemon._reader.join(timeout=5)
            assert process.stdout is not None
            process.stdout.close()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, event: str, *, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if line.get("event") == event:
                        return line
                left = deadline - time.monotonic()
                assert left > 0 and self.process.poll() is None, (
                    f"no {event!r} from the daemon; it said: {self.lines[-20:]}"
                )
                self._changed.wait(left)

    # --- the simulated phone (/_sim, docs: gatewayd/http/routes_sim.py)

    def qr_payload(self, session_id: str) -> str | None:
        r = self.sim.get(f"/_sim/agents/{session_id}/qr")
        r.raise_for_status()
        data = r.json()["data"]
        return None if data is None else str(data["payload"])

    def scan(self, session_id: str, phone: str) -> None:
        r = self.sim.post(f"/_sim/agents/{session_id}/scan", json={"phone": phone})
        assert r.status_code == 200, r.text

    def inject(self, session_id: str, **message: Any) -> None:
        r = self.sim.post(f"/_sim/agents/{session_id}/inject", json=message)
        assert r.status_code == 200, r.text


def launch_chromium(playwright: Any, *extra_args: str) -> Any:
    return playwright.chromium.launch(
        executable_path=chromium_path(), headless=True, args=[*CHROMIUM_ARGS, *extra_args]
    )


def stop_process(
    process: subprocess.Popen[Any], signum: signal.Signals = signal.SIGTERM, timeout: float = 20
) -> None:
    """Ask ``process`` to stop with ``signum``; kill it if it has not within ``timeout`` s."""
    process.send_signal(signum)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
