"""systemd's notify protocol: READY, RELOADING, STOPPING, STATUS and the watchdog.

With ``NOTIFY_SOCKET`` unset every call is a no-op, so the daemon behaves the same
outside systemd. Datagrams to a unix socket never block for long, but they go
through a non-blocking trio socket anyway: no blocking call in async code.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog
import trio

log = structlog.get_logger()


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # A leading '@' names a socket in the abstract namespace.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            # systemd recommends pinging at half the configured interval.
            self.watchdog_interval = int(usec) / 1_000_000 / 2
        self._sock: trio.socket.SocketType | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    async def send(self, *lines: str) -> None:
        if not self.address:
            return
        if self._sock is None:
            self._sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            await self._sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            # Losing a notification must not take the daemon down.
            log.warning("gatewayd.notify.failed", error=str(exc))

    async def ready(self, status: str = "running") -> None:
        await self.send("READY=1", f"STATUS={status}")

    async def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        await self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading configuration")

    async def stopping(self) -> None:
        await self.send("STOPPING=1", "STATUS=stopping")

    async def status(self, text: str) -> None:
        await self.send(f"STATUS={text}")

    async def run_watchdog(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Ping the watchdog at half of WATCHDOG_USEC for as long as the daemon runs."""
        task_status.started()
        if self.watchdog_interval is None or not self.address:
            return
        while True:
            await self.send("WATCHDOG=1")
            await trio.sleep(self.watchdog_interval)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
