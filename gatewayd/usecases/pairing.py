"""Linking a session without a camera: the phone pairing code.

``request_pair_code`` serves both dialects (``POST /sessions/{agentId}/pair-code`` and
``POST /api/v1/sessions/{id}/pair-code``, body ``{phone}``). It answers the 8-character code
WhatsApp shows as ``XXXX-XXXX``; the user types it on that phone (WhatsApp → Linked devices →
Link with phone number) and the session then connects exactly as after a QR scan.

A session that is not pairing is made to, as ``POST /sessions/{agentId}/qr`` does: an agent that
is stopped, whose pairing failed, or that still holds a linked device (disconnected) is logged
out and starts a fresh pairing. A connected session is refused (``AlreadyConnected``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from gatewayd.errors import SessionNotReady
from gatewayd.nursery.paircode import PAIR_CODE_WAIT, pairing_number
from gatewayd.whatsapp.port import PairCode

if TYPE_CHECKING:
    from gatewayd.nursery.handle import AgentHandle

__all__ = ["AlreadyConnected", "PairCode", "PairingAgents", "request_pair_code"]


class AlreadyConnected(SessionNotReady):
    """The session is already connected: there is nothing to link."""


class PairingAgents(Protocol):
    """What pairing needs of the agents supervisor."""

    def get(self, agent_id: str) -> AgentHandle | None: ...

    async def new_pairing(self, agent_id: str) -> AgentHandle: ...


async def request_pair_code(
    agents: PairingAgents,
    agent_id: str,
    phone: object,
    *,
    default_country_code: str = "62",
    wait: float = PAIR_CODE_WAIT,
) -> PairCode:
    """The code that links ``phone`` to the session ``agent_id``; ``expires_in`` in seconds.

    The number is checked before anything else (``InvalidRecipient``, a 400), then the session:
    ``SessionNotFound`` for no such agent, ``AlreadyConnected`` when connected. ``wait`` bounds
    the wait for the pairing's first QR and WhatsApp's answer: past it ``NotConnected`` (no QR
    showed) or ``WhatsAppError`` (no code came). Each request gives a new code, which replaces
    the previous one.
    """
    digits = pairing_number(phone, default_country_code=default_country_code)
    handle = agents.get(agent_id)
    if handle is not None and handle.connected:
        raise AlreadyConnected(f"Session {agent_id!r} is already connected")
    if handle is None or handle.terminal or handle.record.device_jid is not None:
        handle = await agents.new_pairing(agent_id)
    return await handle.pair_code(digits, default_country_code=default_country_code, timeout=wait)
