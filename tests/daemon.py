"""Drive a real ``gatewayd run`` subprocess: its JSON log lines, signals and exit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent


class Daemon:
    """A ``python -m gatewayd run`` child whose stdout JSON lines we can wait on."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._new_line = trio.Event()
        self.base_url = ""

    @classmethod
    async def start(
        cls,
        nursery: trio.Nursery,
        args: list[str],
        env: dict[str, str] | None = None,
        *,
        startup_timeout: float = 120,
    ) -> Daemon:
        full_env = {**os.environ, "GATEWAYD_LOG_FORMAT": "json", **(env or {})}
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "gatewayd", "run", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=str(ROOT),
        )
        daemon = cls(process)
        nursery.start_soon(daemon._read)
        started = await daemon.wait_for("gatewayd.started", timeout=startup_timeout)
        assert started
        listening = daemon.find("gatewayd.http.listening")
        assert listening is not None
        daemon.base_url = listening["binds"][0]
        return daemon

    async def _read(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        async for chunk in self.process.stdout:
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                text = line.decode(errors="replace")
                self.raw.append(text)
                try:
                    self.lines.append(json.loads(text))
                except ValueError:
                    continue
                self._new_line.set()
                self._new_line = trio.Event()
        self._new_line.set()

    def find(self, event: str, after: int = 0) -> dict[str, Any] | None:
        for line in self.lines[after:]:
            if line.get("event") == event:
                return line
        return None

    def events(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == event]

    async def wait_for(self, event: str, *, after: int = 0, timeout: float = 30) -> dict[str, Any]:
        with trio.fail_after(timeout):
            while True:
                found = self.find(event, after)
                if found is not None:
                    return found
                if self.process.returncode is not None:
                    raise AssertionError(
                        f"daemon exited before {event}:\n" + "\n".join(self.raw[-40:])
                    )
                waiter = self._new_line
                with trio.move_on_after(0.5):
                    await waiter.wait()
                await self._poll()

    async def _poll(self) -> None:
        self.process.poll()

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    async def wait(self, timeout: float = 30) -> int:
        with trio.fail_after(timeout):
            return await self.process.wait()

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
