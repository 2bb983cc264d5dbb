"""Pairing a new device in a short-lived child process, parent side.

A neonize session in the QR phase cannot be stopped: the QR channel is never closed and
``FetchMe`` spins after a timeout (NEONIZE.md §1), so an abandoned pairing would leak a
non-daemon thread in the daemon. The child (``python -m gatewayd.whatsapp.neonize.pairing_child``)
pairs one device into the shared whatsmeow store and exits; cancelling kills it.

Protocol: the parent writes one JSON line of ``PairingConfig`` (with the store URL, which holds a
password, so not on the command line) to the child's stdin and keeps stdin open: the child exits
when it reaches EOF, so it never outlives the parent. The child writes JSON lines to stdout:

    {"type": "qr", "payload": "...", "index": 0, "expires_in": 60.0}
    {"type": "pair_code", "code": "ABCD-EFGH"}
    {"type": "paired", "device_jid": "628…:12@s.whatsapp.net", "phone": "628…", "lid": …,
     "push_name": …, "platform": …}
    {"type": "failed", "reason": "timeout"}

The child exits right after the ``paired`` line, from whatsmeow's PairSuccess callback, without
waiting for the first login: messages that login would bring are acknowledged on receipt, and
the child has nowhere to put them. ``pair_in_child`` reaps it before returning ``Paired``, so
the session the caller starts next is the only one, and it receives them. A ``failed`` reason
is whatsmeow's login status as it spells it (``timeout``, ``err-client-outdated``, …), or
``passkey_required`` for an account protected by a passkey (docs/neonize.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import aclosing
from typing import Any

import attrs
import structlog
import trio

from gatewayd.whatsapp.port import (
    EventSink,
    Paired,
    PairingError,
    PairingFailed,
    QrCode,
)

log = structlog.get_logger()

CHILD_MODULE = "gatewayd.whatsapp.neonize.pairing_child"
KILL_WAIT = 5.0
"""Longest the parent waits for a killed child to be reaped."""


@attrs.frozen(repr=False)
class PairingConfig:
    """What the child needs; ``url`` is the store URL (it carries a password: never logged)."""

    url: str
    device_name: str = "gatewayd"
    log_level: str = "warning"
    phone: str | None = None

    def __repr__(self) -> str:
        return f"PairingConfig(device_name={self.device_name!r}, phone={self.phone!r})"


def child_command() -> list[str]:
    """The command line of the pairing child."""
    return [sys.executable, "-m", CHILD_MODULE]


def child_environment() -> dict[str, str]:
    """The child's environment: ours, with the bot badge off and Python unbuffered."""
    return {**os.environ, "NEONIZE_BOT_TAG": "off", "PYTHONUNBUFFERED": "1"}


async def pair_in_child(
    config: PairingConfig,
    events: EventSink,
    *,
    phone: str | None = None,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> Paired:
    """Run one pairing in a child process; push ``QrCode``s, then ``Paired`` or ``PairingFailed``.

    Without ``phone``, ``task_status.started()`` comes with the first QR; with ``phone``,
    ``task_status.started(code)`` comes with the phone pairing code. Cancelling kills the child.
    """
    config = attrs.evolve(config, phone=phone)
    process = await trio.lowlevel.open_process(
        child_command(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        # Its stderr (Python logging, Go's complaints) becomes log lines of ours: one stream.
        stderr=subprocess.PIPE,
        env=child_environment(),
    )
    assert process.stdin is not None and process.stdout is not None
    started = False
    outcome: Paired | PairingFailed | None = None
    try:
        async with trio.open_nursery() as nursery:
            assert process.stderr is not None
            nursery.start_soon(_log_stderr, process.stderr)
            await process.stdin.send_all((json.dumps(attrs.asdict(config)) + "\n").encode())
            async with aclosing(_json_lines(process.stdout)) as lines:
                async for message in lines:
                    kind = message.get("type")
                    if kind == "qr":
                        qr = QrCode(
                            str(message["payload"]),
                            int(message["index"]),
                            float(message["expires_in"]),
                        )
                        if not started and phone is None:
                            started = True
                            task_status.started()  # scannable from here on
                        await events.send(qr)
                    elif kind == "pair_code" and not started and phone is not None:
                        started = True
                        task_status.started(str(message["code"]))
                    elif kind == "paired":
                        outcome = Paired(
                            device_jid=str(message["device_jid"]),
                            phone=str(message["phone"]),
                            lid=message.get("lid") or None,
                            push_name=message.get("push_name") or None,
                            platform=message.get("platform") or None,
                        )
                        break
                    elif kind == "failed":
                        outcome = PairingFailed(str(message.get("reason") or "error"))
                        break
            nursery.cancel_scope.cancel()  # the outcome is known: stop reading stderr
    finally:
        with trio.CancelScope(shield=True):
            await _end_child(process)
    if outcome is None:
        outcome = PairingFailed(f"pairing helper exited with status {process.returncode}")
    await events.send(outcome)
    if isinstance(outcome, PairingFailed):
        raise PairingError(outcome.reason)
    return outcome


async def _end_child(process: trio.Process) -> None:
    """Close its stdin (it exits on EOF), kill it if it has not exited, and reap it."""
    if process.stdin is not None:
        try:
            await process.stdin.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
    if process.returncode is None:
        process.kill()
    with trio.move_on_after(KILL_WAIT):
        await process.wait()
    if process.returncode is None:
        log.warning("gatewayd.whatsapp.pairing.child_not_reaped", pid=process.pid)
    if process.stdout is not None:
        await process.stdout.aclose()
    if process.stderr is not None:
        await process.stderr.aclose()


async def _log_stderr(stream: trio.abc.ReceiveStream) -> None:
    """Each line the child writes to stderr, as a log line of ours."""
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                log.warning(
                    "gatewayd.whatsapp.pairing.child_stderr",
                    text=line[:2000].decode(errors="replace"),
                )


async def _json_lines(stream: trio.abc.ReceiveStream) -> Any:
    """Each JSON object the child writes, one per line; other lines are logged and skipped."""
    buffer = b""
    while True:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            try:
                message = json.loads(line)
            except ValueError:
                log.info(
                    "gatewayd.whatsapp.pairing.child_output",
                    line=line[:200].decode(errors="replace"),
                )
                continue
            if isinstance(message, dict):
                yield message
