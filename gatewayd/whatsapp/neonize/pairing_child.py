"""``python -m gatewayd.whatsapp.neonize.pairing_child``: pair one new device, report, exit.

Started by ``neonize_pairing.pair_in_child``; the protocol is described there. Runs one
``new_device`` neonize client against the shared whatsmeow store; whatever happens, it leaves
with ``os._exit`` because a neonize session in the QR phase never returns (docs/neonize.md,
"Threads, callbacks and the QR phase").
There is one client in this process and no concurrent connect or stop, so the gate of the main
process is not needed here.

stdout is the protocol channel: it is moved to a private descriptor first, and descriptor 1 is
pointed at stderr, so that Go's own ``fmt.Println``s cannot corrupt it.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import IO, Any

PAIR_DEADLINE = 200.0
"""Longest the child lives: whatsmeow's QR schedule is ~160 s (60 s + 5 × 20 s)."""

CODE_QR_WAIT = 30.0
"""Longest a phone-code request waits for the first QR (the websocket ``PairPhone`` needs)."""

FINISH_WAIT = 10.0
"""Longest the main thread waits for the callback that ended the pairing to exit the process."""

QR_LIFETIMES = (60.0, 20.0, 20.0, 20.0, 20.0, 20.0)

EXIT_PAIRED, EXIT_FAILED, EXIT_ERROR = 0, 2, 3

PASSKEY_REQUIRED = "passkey_required"
"""The reason of a pairing refused because the account is protected by a passkey."""

# Login statuses (whatsmeow's QR-channel events, handed to neonize's login-status callback)
# that get a reason of their own; the others are passed on as whatsmeow spells them.
_STATUS_REASONS = {
    # whatsmeow asks for a WebAuthn answer (``events.PairPasskeyRequest``); neonize has no call
    # to give one, so the pairing cannot finish: say so instead of waiting for the timeout
    # (docs/neonize.md, "Passkey-protected accounts").
    "passkey-request": PASSKEY_REQUIRED,
}

# DeviceProps platforms whose pairing client type has the same name: whatsmeow maps them so for
# the QR code (docs/neonize.md, "Phone-code pairing identifies as the browser the QR code names").
_SAME_NAME_CLIENTS = ("CHROME", "FIREFOX", "EDGE", "IE", "OPERA", "SAFARI", "UWP")


def login_status_reason(status: str) -> str | None:
    """The ``failed`` reason a login status ends the pairing with; None when it does not end it.

    "success" is followed by the pairing event, which carries the device; "" is no status.
    """
    if status in ("", "success"):
        return None
    return _STATUS_REASONS.get(status, status)


def phone_pairing_client(props: Any) -> tuple[Any, Any]:
    """The ``(ClientType, ClientName)`` that phone-code pairing announces for ``props``.

    neonize's ``PairPhone`` would take ``ClientType(props.platformType)``, but the two enums
    number differently (DeviceProps SAFARI = 5 is ClientType OPERA): the code pairing would
    then announce a different browser than the QR code. Match by name, as whatsmeow does for
    the QR code, so both say the same; the display name is then e.g. "Safari (Linux)".
    """
    from neonize.utils.enum import ClientName, ClientType

    name = props.DESCRIPTOR.fields_by_name["platformType"].enum_type.values_by_number.get(
        props.platformType
    )
    if name is not None and name.name in _SAME_NAME_CLIENTS:
        return ClientType[name.name], ClientName.LINUX
    return ClientType.OTHER, ClientName.LINUX


class _Reporter:
    """Writes protocol lines; ends the process once the outcome is written (only once)."""

    def __init__(self, out: IO[str], exit: Callable[[int], object] = os._exit) -> None:
        self._out = out
        self._exit = exit
        self._lock = threading.Lock()
        self._finished = False
        self.qr_count = 0

    def emit(self, message: dict[str, Any]) -> None:
        with self._lock:
            if not self._finished:
                self._out.write(json.dumps(message) + "\n")
                self._out.flush()

    def finish(self, message: dict[str, Any], code: int) -> None:
        with self._lock:
            if self._finished:
                return
            self._finished = True
            try:
                self._out.write(json.dumps(message) + "\n")
                self._out.flush()
            finally:
                sys.stderr.flush()
                self._exit(code)


class _Inbox:
    """Where the parent's command lines go once the handlers exist."""

    def __init__(self) -> None:
        self.handlers: PairingHandlers | None = None

    def dispatch(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            return
        handlers = self.handlers
        if isinstance(message, dict) and handlers is not None:
            handlers.on_command(message)


def _watch_parent(reporter: _Reporter, inbox: _Inbox) -> None:
    """Take the parent's commands; exit when it closes our stdin (it cancelled or died)."""
    while line := sys.stdin.buffer.readline():
        if line.strip():
            inbox.dispatch(line)
    reporter.finish({"type": "failed", "reason": "cancelled"}, EXIT_FAILED)


def main() -> None:
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    reporter = _Reporter(out)
    try:
        config = json.loads(sys.stdin.buffer.readline() or b"{}")
        url = config["url"]
    except (ValueError, KeyError):
        reporter.finish({"type": "failed", "reason": "bad pairing configuration"}, EXIT_ERROR)
        return
    inbox = _Inbox()
    threading.Thread(
        target=_watch_parent, args=(reporter, inbox), daemon=True, name="parent-watch"
    ).start()
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    try:
        _pair(reporter, url, config, inbox)
    except BaseException as exc:  # anything unexpected still ends in one outcome line
        reporter.finish({"type": "failed", "reason": f"error: {exc}"}, EXIT_ERROR)


class PairingHandlers:
    """The child's callbacks on its one neonize client.

    The pairing is over as soon as whatsmeow reports it: the device is stored and confirmed
    before ``PairSuccess`` is dispatched, so the child reports and exits right there, inside
    that callback. It does not wait for the first login: whatsmeow acknowledges every message
    it receives before any handler runs, and this process has none, so a message arriving after
    that login would be acknowledged here and lost. The daemon's own session makes the first
    login instead, and receives them (docs/neonize.md, "The pairing child exits when pairing
    is known").
    """

    def __init__(self, nc: Any, reporter: _Reporter, phone: str | None = None) -> None:
        self.nc = nc
        self.reporter = reporter
        self.phone = phone
        self.done = threading.Event()
        self.qr_shown = threading.Event()

    def attach(self) -> None:
        """Register the callbacks; before ``connect`` (neonize subscribes at connect)."""
        from neonize import events as ev

        self.nc.event.qr(self.on_qr)
        self.nc.event(ev.PairStatusEv)(self.on_pair_status)
        self.nc._NewClient__onLoginStatus = self.on_login_status

    def finish(self, message: dict[str, Any], code: int) -> None:
        self.done.set()
        self.reporter.finish(message, code)

    def on_qr(self, _nc: Any, data: bytes) -> None:
        index = self.reporter.qr_count
        self.reporter.qr_count += 1
        lifetime = QR_LIFETIMES[min(index, len(QR_LIFETIMES) - 1)]
        self.reporter.emit(
            {"type": "qr", "payload": data.decode(), "index": index, "expires_in": lifetime}
        )
        self.qr_shown.set()
        if index == 0 and self.phone:
            # PairPhone needs the websocket up, i.e. after the first QR, from another thread.
            threading.Thread(target=self.pair_phone, daemon=True, name="pair-phone").start()

    def pair_phone(self) -> None:
        client_type, client_name = phone_pairing_client(self.nc.device_props)
        try:
            code = self.nc.PairPhone(self.phone, True, client_name, client_type)
        except Exception as exc:
            self.finish({"type": "failed", "reason": f"phone pairing: {exc}"}, EXIT_FAILED)
        else:
            self.reporter.emit({"type": "pair_code", "code": code})

    def on_command(self, message: dict[str, Any]) -> None:
        """A command line of the parent: ``pair_phone`` asks for a code during the QR phase."""
        phone = message.get("phone")
        if message.get("type") == "pair_phone" and isinstance(phone, str):
            threading.Thread(
                target=self.request_code, args=(phone,), daemon=True, name="pair-code"
            ).start()

    def request_code(self, phone: str) -> None:
        """Answer one code request; a refusal leaves the QR codes working (no exit)."""
        if not self.qr_shown.wait(CODE_QR_WAIT):
            self.reporter.emit({"type": "pair_code_failed", "reason": "no connection yet"})
            return
        client_type, client_name = phone_pairing_client(self.nc.device_props)
        try:
            code = self.nc.PairPhone(phone, True, client_name, client_type)
        except Exception as exc:
            self.reporter.emit({"type": "pair_code_failed", "reason": str(exc)[:500]})
        else:
            self.reporter.emit({"type": "pair_code", "code": code})

    def on_login_status(self, _uuid: Any, status_ptr: Any) -> None:
        status = ctypes.string_at(status_ptr).decode(errors="replace") if status_ptr else ""
        reason = login_status_reason(status)
        if reason is not None:
            self.finish({"type": "failed", "reason": reason}, EXIT_FAILED)

    def on_pair_status(self, _nc: Any, event: Any) -> None:
        from gatewayd.whatsapp.neonize.translate import jid_to_str, translate_pair_status
        from gatewayd.whatsapp.port import Paired

        outcome = translate_pair_status(event)
        if not isinstance(outcome, Paired) or not outcome.device_jid:
            reason = "error" if isinstance(outcome, Paired) else outcome.reason
            self.finish({"type": "failed", "reason": reason}, EXIT_FAILED)
            return
        paired: dict[str, Any] = {
            "device_jid": outcome.device_jid,
            "phone": outcome.phone,
            "platform": outcome.platform,
            "push_name": outcome.push_name,
        }
        # neonize hands over the stored device (``me``, LID included) before any event.
        me = self.nc.me
        if me is not None:
            paired["lid"] = jid_to_str(me.LID)
            paired["push_name"] = me.PushName or outcome.push_name
        self.finish({"type": "paired", **paired}, EXIT_PAIRED)


def _pair(reporter: _Reporter, url: str, config: dict[str, Any], inbox: _Inbox) -> None:
    from gatewayd.whatsapp.neonize.env import (
        configure_neonize_logging,
        device_props,
        import_neonize,
    )

    client_module = import_neonize()
    configure_neonize_logging(str(config.get("log_level") or "warning"))
    nc = client_module.NewClient(
        url,
        uuid=f"pair-{os.getpid()}",
        new_device=True,
        props=device_props(str(config.get("device_name") or "gatewayd")),
    )
    nc._stop_finalizer.detach()
    handlers = PairingHandlers(nc, reporter, config.get("phone") or None)
    handlers.attach()
    inbox.handlers = handlers

    def session() -> None:
        try:
            nc.connect()
        except Exception as exc:
            handlers.finish({"type": "failed", "reason": f"connect failed: {exc}"}, EXIT_FAILED)
        handlers.finish({"type": "failed", "reason": "session ended"}, EXIT_FAILED)

    threading.Thread(target=session, daemon=True, name="pairing-session").start()
    if not handlers.done.wait(PAIR_DEADLINE):
        handlers.finish({"type": "failed", "reason": "timeout"}, EXIT_FAILED)
    # Whichever callback ended the pairing writes the outcome and exits the process.
    threading.Event().wait(FINISH_WAIT)
    os._exit(EXIT_ERROR)


if __name__ == "__main__":
    main()
