"""``python -m gatewayd.whatsapp.pairing_child``: pair one new device, report, exit.

Started by ``neonize_pairing.pair_in_child``; the protocol is described there. Runs one
``new_device`` neonize client against the shared whatsmeow store; whatever happens, it leaves
with ``os._exit`` because a neonize session in the QR phase never returns (NEONIZE.md §1).
There is one client in this process and no concurrent connect or stop, so the gate of the main
process is not needed here.

stdout is the protocol channel: it is moved to a private descriptor first, and descriptor 1 is
pointed at stderr, so that Go's own ``fmt.Println``s cannot corrupt it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from typing import IO, Any

PAIR_DEADLINE = 200.0
"""Longest the child lives: whatsmeow's QR schedule is ~160 s (60 s + 5 × 20 s)."""

CONNECTED_WAIT = 20.0
"""After a successful pairing, how long to wait for the first login to finish."""

QR_LIFETIMES = (60.0, 20.0, 20.0, 20.0, 20.0, 20.0)

EXIT_PAIRED, EXIT_FAILED, EXIT_ERROR = 0, 2, 3


class _Reporter:
    """Writes protocol lines; exits the process once the outcome is written."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._lock = threading.Lock()
        self.qr_count = 0

    def emit(self, message: dict[str, Any]) -> None:
        with self._lock:
            self._out.write(json.dumps(message) + "\n")
            self._out.flush()

    def finish(self, message: dict[str, Any], code: int) -> None:
        try:
            self.emit(message)
        finally:
            sys.stderr.flush()
            os._exit(code)


def _watch_parent(reporter: _Reporter) -> None:
    """Exit when the parent closes our stdin (it cancelled the pairing or died)."""
    while sys.stdin.buffer.read(4096):
        pass
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
    threading.Thread(
        target=_watch_parent, args=(reporter,), daemon=True, name="parent-watch"
    ).start()
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    try:
        _pair(reporter, url, config)
    except BaseException as exc:  # anything unexpected still ends in one outcome line
        reporter.finish({"type": "failed", "reason": f"error: {exc}"}, EXIT_ERROR)


def _pair(reporter: _Reporter, url: str, config: dict[str, Any]) -> None:
    from gatewayd.whatsapp.neonize_env import (
        configure_neonize_logging,
        device_props,
        import_neonize,
    )

    client_module = import_neonize()
    configure_neonize_logging(str(config.get("log_level") or "warning"))
    from neonize import events as ev

    from gatewayd.whatsapp.neonize_translate import translate_pair_status
    from gatewayd.whatsapp.port import Paired

    phone = config.get("phone")
    nc = client_module.NewClient(
        url,
        uuid=f"pair-{os.getpid()}",
        new_device=True,
        props=device_props(str(config.get("device_name") or "gatewayd")),
    )
    nc._stop_finalizer.detach()
    paired: dict[str, Any] = {}
    paired_event = threading.Event()
    connected = threading.Event()

    def on_qr(_nc: Any, data: bytes) -> None:
        index = reporter.qr_count
        reporter.qr_count += 1
        lifetime = QR_LIFETIMES[min(index, len(QR_LIFETIMES) - 1)]
        reporter.emit(
            {"type": "qr", "payload": data.decode(), "index": index, "expires_in": lifetime}
        )
        if index == 0 and phone:
            # PairPhone needs the websocket up, i.e. after the first QR, from another thread.
            threading.Thread(target=pair_phone, daemon=True, name="pair-phone").start()

    def pair_phone() -> None:
        try:
            code = nc.PairPhone(phone, True)
        except Exception as exc:
            reporter.finish({"type": "failed", "reason": f"phone pairing: {exc}"}, EXIT_FAILED)
        else:
            reporter.emit({"type": "pair_code", "code": code})

    def on_login_status(_uuid: Any, status_ptr: Any) -> None:
        import ctypes

        status = ctypes.string_at(status_ptr).decode(errors="replace") if status_ptr else ""
        if status and status != "success" and not paired_event.is_set():
            reporter.finish({"type": "failed", "reason": status}, EXIT_FAILED)

    def on_pair_status(_nc: Any, event: Any) -> None:
        outcome = translate_pair_status(event)
        if isinstance(outcome, Paired) and outcome.device_jid:
            paired.update(
                device_jid=outcome.device_jid, phone=outcome.phone,
                platform=outcome.platform, push_name=outcome.push_name,
            )  # fmt: skip
            paired_event.set()
        else:
            reporter.finish(
                {"type": "failed", "reason": getattr(outcome, "reason", "error")}, EXIT_FAILED
            )

    def on_connected(_nc: Any, _event: Any) -> None:
        connected.set()

    nc.event.qr(on_qr)
    nc.event(ev.PairStatusEv)(on_pair_status)
    nc.event(ev.ConnectedEv)(on_connected)
    nc._NewClient__onLoginStatus = on_login_status

    def session() -> None:
        try:
            nc.connect()
        except Exception as exc:
            if not paired_event.is_set():
                reporter.finish({"type": "failed", "reason": f"connect failed: {exc}"}, EXIT_FAILED)
        if not paired_event.is_set():
            reporter.finish({"type": "failed", "reason": "session ended"}, EXIT_FAILED)

    threading.Thread(target=session, daemon=True, name="pairing-session").start()
    if not paired_event.wait(PAIR_DEADLINE):
        reporter.finish({"type": "failed", "reason": "timeout"}, EXIT_FAILED)
    # The device is saved before PairSuccess is emitted; let the first login (prekeys, push
    # name) finish too, so the daemon resumes a complete session.
    connected.wait(CONNECTED_WAIT)
    me = nc.me
    if me is not None:
        lid = me.LID
        if not lid.IsEmpty and lid.Server:
            paired["lid"] = f"{lid.User.partition(':')[0]}@{lid.Server}"
        paired["push_name"] = me.PushName or paired.get("push_name")
    reporter.finish({"type": "paired", **paired}, EXIT_PAIRED)


if __name__ == "__main__":
    main()
