"""How /api/v1 writes sessions: status words, QR data URLs, records
(docs/contract/api-v1.md §6, §7, §8)."""

from __future__ import annotations

import base64
from typing import Any

from gatewayd.usecases import sessions
from gatewayd.usecases.sessions import SessionState
from gatewayd.whatsapp.qr import QrSnapshot, QrState

#: gatewayd's statuses in the dashboard family's words (§6).
DASHBOARD_STATUS = {"awaiting_qr": "qr", "connected": "connected"}
#: …and in the agent family's (§6).
AGENT_STATUS = {
    "awaiting_qr": "waiting_scan",
    "connected": "connected",
    "logged_out": "expired",
    "auth_failed": "expired",
}


def dashboard_status(status: str) -> str:
    return DASHBOARD_STATUS.get(status, "disconnected")


def agent_status(status: str) -> str:
    return AGENT_STATUS.get(status, "disconnected")


async def qr_data_url(snapshot: QrSnapshot | None, state: QrState | None = None) -> str | None:
    png = await sessions.qr_png(snapshot, state)
    if png is None:
        return None
    return "data:image/png;base64," + base64.b64encode(png).decode()


def expires_in(snapshot: QrSnapshot | None) -> int | None:
    return None if snapshot is None else int(snapshot.expires_in())


def session_summary(state: SessionState) -> dict[str, Any]:
    """The fields every dashboard-family answer about a session shares."""
    record = state.record
    return {
        "session_id": str(record.id),
        "session_name": record.name,
        "webhook_url": record.webhook_url,
        "status": dashboard_status(state.status),
        "status_detail": state.status,
        "phone_number": record.phone_number,
    }
