"""Pairing a new device in a short-lived child process, parent side.

A neonize session in the QR phase cannot be stopped: the QR channel is never closed and
``FetchMe`` spins after a timeout (docs/neonize.md, "Threads, callbacks and the QR phase"), so
an abandoned pairing would leak a non-daemon thread in the daemon. The child
(``python -m gatewayd.whatsapp.neonize.pairing_child``)
pairs one device into the shared whatsmeow store and exits; cancelling kills it.

Protocol: the parent writes one JSON line of ``PairingConfig`` (with the store URL, which holds a
password, so not on the command line) to the child's stdin and keeps stdin open: the child exits
when it reaches EOF, so it never outlives the parent. The child writes JSON lines to stdout:

    {"type": "qr", "payload": "...", "index": 0, "expires_in": 60.0}
    {"type": "pair_code", "code": "ABCD-EFGH"}
    {"type": "paired", "device_jid": "628…:12@s.whatsapp.net", "phone": "628…", "lid": …,
     "push_name": …, "platform": …}
    {"type": "failed", "reason": "timeout"}

While it shows QR codes the parent may ask for a phone pairing code by writing a command line
(``CodeRequests``); the child answers with a ``pair_code`` line or with a ``pair_code_failed``
line, after which the QR codes still work:

    {"type": "pair_phone", "phone": "628…"}                  (parent → child)
    {"type": "pair_code_failed", "reason": "…"}               (child → parent)

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

from gatewayd.errors import NotConnected, WhatsAppError
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


class CodeRequests:
    """Phone-code requests to the pairing child that shows QR codes now, one at a time.

    ``pair_in_child`` attaches the child's stdin once the first QR is showing (whatsmeow's
    ``PairPhone`` needs the websocket that QR came over), hands it the child's answers, and
    detaches it when the pairing ends, which also fails a request still waiting.
    """

    def __init__(self) -> None:
        self._stdin: trio.abc.SendStream | None = None
        self._lock = trio.Lock()
        self._waiter: trio.MemorySendChannel[str | WhatsAppError] | None = None

    @property
    def open(self) -> bool:
        """True while a pairing child shows QR codes and takes requests."""
        return self._stdin is not None

    def attach(self, stdin: trio.abc.SendStream) -> None:
        self._stdin = stdin

    def detach(self, reason: str) -> None:
        """The pairing ended: no more requests; one waiting now fails with ``reason``."""
        self._stdin = None
        self._answer(NotConnected(f"the pairing ended ({reason})"))

    def answer(self, message: dict[str, Any]) -> None:
        """The child's ``pair_code`` / ``pair_code_failed`` line."""
        if message.get("type") == "pair_code" and isinstance(message.get("code"), str):
            self._answer(str(message["code"]))
        else:
            reason = str(message.get("reason") or "no code")[:500]
            self._answer(WhatsAppError(f"WhatsApp gave no pairing code: {reason}"))

    def _answer(self, result: str | WhatsAppError) -> None:
        if self._waiter is not None:
            try:
                self._waiter.send_nowait(result)
            except (trio.WouldBlock, trio.BrokenResourceError):
                pass  # answered already, or the asker gave up

    async def request(self, phone: str, *, timeout: float) -> str:  # noqa: ASYNC109
        """The code for ``phone`` (international digits); waits ``timeout`` s for the child.

        ``NotConnected`` when no child shows QR codes; ``WhatsAppError`` when WhatsApp refused
        or the child did not answer in time.
        """
        async with self._lock:  # the child answers in order; one question at a time
            stdin = self._stdin
            if stdin is None:
                raise NotConnected("not waiting for a QR scan")
            send, receive = trio.open_memory_channel[str | WhatsAppError](1)
            self._waiter = send
            try:
                line = json.dumps({"type": "pair_phone", "phone": phone}) + "\n"
                try:
                    await stdin.send_all(line.encode())
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    raise NotConnected("the pairing ended") from None
                with trio.move_on_after(timeout):
                    result = await receive.receive()
                    if isinstance(result, WhatsAppError):
                        raise result
                    return result
                raise WhatsAppError(f"WhatsApp gave no pairing code within {timeout:g} s")
            finally:
                self._waiter = None


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
    codes: CodeRequests | None = None,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> Paired:
    """Run one pairing in a child process; push ``QrCode``s, then ``Paired`` or ``PairingFailed``.

    Without ``phone``, ``task_status.started()`` comes with the first QR; with ``phone``,
    ``task_status.started(code)`` comes with the phone pairing code. ``codes`` takes phone-code
    requests from the first QR until the pairing ends. Cancelling kills the child.
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
                            if codes is not None:
                                codes.attach(process.stdin)
                        await events.send(qr)
                    elif kind == "pair_code" and not started and phone is not None:
                        started = True
                        task_status.started(str(message["code"]))
                    elif kind in ("pair_code", "pair_code_failed") and codes is not None:
                        codes.answer(message)
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
        if codes is not None:
            codes.detach("paired" if isinstance(outcome, Paired) else "no device")
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
