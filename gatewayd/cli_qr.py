"""``gatewayd qr AGENT_ID``: the agent's pairing QR in the terminal, for an operator over SSH.

It asks the running daemon through its own HTTP API, as any client would:
``POST /sessions/{agentId}/qr`` on ``server.host``/``server.port`` of the config (or ``--url``),
with ``server.admin_token`` as the Bearer token when one is set. That route answers the QR
showing now, or starts a pairing and answers its first QR; its ``data.qr.payload`` is the string
the QR encodes, which is drawn here with block characters (``--payload`` prints the string).

Exit codes: 0 printed; 1 the daemon answered without a QR to show (no such agent, already
connected, refused, no QR in time), with its message; 2 the daemon could not be reached
(or the config that says where it is is invalid).
"""

from __future__ import annotations

import sys
from typing import Any, TextIO
from urllib.parse import quote

import httpx
import segno

from gatewayd.config import Config

EXIT_PRINTED, EXIT_NO_QR, EXIT_UNREACHABLE = 0, 1, 2

ANSWER_MARGIN = 15.0
"""Seconds the CLI waits beyond the daemon's own ``sessions.qr_wait``."""


def daemon_url(config: Config) -> str:
    """The daemon's base URL on this machine, from ``server.host`` and ``server.port``."""
    host = config.server.host
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.server.port}"


def print_qr(
    config: Config,
    agent_id: str,
    *,
    url: str | None = None,
    payload_only: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Fetch the agent's QR from the daemon and print it; returns the exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    base = (url or daemon_url(config)).rstrip("/")
    headers = {"User-Agent": "gatewayd-cli"}
    if config.server.admin_token:
        headers["Authorization"] = f"Bearer {config.server.admin_token}"
    target = f"{base}/sessions/{quote(agent_id, safe='')}/qr"
    try:
        with httpx.Client(trust_env=False, follow_redirects=False) as http:
            response = http.post(
                target, headers=headers, timeout=config.sessions.qr_wait + ANSWER_MARGIN
            )
    except httpx.TransportError as exc:
        print(f"gatewayd: the daemon at {base} is unreachable ({type(exc).__name__})", file=err)
        return EXIT_UNREACHABLE
    body = _json(response)
    raw = body.get("data")
    data: dict[str, Any] = raw if isinstance(raw, dict) else {}
    if not response.is_success:
        print(f"gatewayd: {_error_message(body, response.status_code)}", file=err)
        return EXIT_NO_QR
    qr = data.get("qr")
    if not isinstance(qr, dict):
        status = data.get("status") or "unknown"
        print(f"gatewayd: session {agent_id!r} has no QR to scan (status: {status})", file=err)
        return EXIT_NO_QR
    payload = qr.get("payload")
    if not isinstance(payload, str) or not payload:
        print("gatewayd: the daemon's answer has no QR payload (data.qr.payload)", file=err)
        return EXIT_NO_QR
    if payload_only:
        print(payload, file=out)
        return EXIT_PRINTED
    segno.make_qr(payload, error="m", boost_error=True).terminal(out=out, compact=True)
    expires = data.get("expiresIn")
    seconds = f" within {expires:g} s" if isinstance(expires, int | float) else ""
    print(
        f"Scan{seconds}: WhatsApp → Settings → Linked devices → Link a device "
        f"(`gatewayd qr {agent_id}` again for a fresh one)",
        file=out,
    )
    return EXIT_PRINTED


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _error_message(body: dict[str, Any], status: int) -> str:
    """The daemon's error message (either dialect), or the bare status."""
    error = body.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        code = error.get("code")
        return f"{error['message']} ({code})" if isinstance(code, str) else error["message"]
    return f"the daemon answered HTTP {status}"
