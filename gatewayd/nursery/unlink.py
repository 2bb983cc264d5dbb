"""Unlinking a device whose agent is not connected: a brief connection, only to log out.

Logging an agent out (or deleting it) should make the phone stop listing the linked device.
That takes a word to WhatsApp, which needs a connection; an agent that is offline gets one
just for that, bounded in time. Whatever arrives meanwhile is still committed before it is
acknowledged (the daemon's inbound writer), so even this short connection loses nothing.
"""

from __future__ import annotations

import uuid
from functools import partial

import structlog
import trio

from gatewayd.errors import GatewayError
from gatewayd.nursery.inbound import InboundWriter
from gatewayd.whatsapp.port import ClientEvent, MessageReceived, WhatsAppClient

__all__ = ["UNLINK_TIMEOUT", "unlink_offline"]

log = structlog.get_logger()

UNLINK_TIMEOUT = 20.0
"""Longest the brief connection may take to reach WhatsApp and log out."""


class _KeepMessages:
    """The sink of the brief connection: received messages are committed, the rest dropped."""

    def __init__(self, writer: InboundWriter, agent_uuid: uuid.UUID) -> None:
        self._writer = writer
        self._agent_uuid = agent_uuid

    async def send(self, value: ClientEvent) -> None:
        if isinstance(value, MessageReceived):
            await self._writer.persist(self._agent_uuid, value.message)


async def unlink_offline(
    client: WhatsAppClient,
    device_jid: str,
    writer: InboundWriter,
    agent_uuid: uuid.UUID,
    *,
    timeout: float = UNLINK_TIMEOUT,  # noqa: ASYNC109 - also in the log line
) -> bool:
    """Connect ``device_jid`` briefly and log it out; True when WhatsApp was told."""
    told = False
    with trio.move_on_after(timeout) as scope:
        try:
            async with trio.open_nursery() as nursery:
                sink = _KeepMessages(writer, agent_uuid)
                await nursery.start(partial(client.run, device_jid, sink))
                await client.logout()
                nursery.cancel_scope.cancel()
            told = True
        except* GatewayError as group:
            first = group.exceptions[0]
            error = first.message if isinstance(first, GatewayError) else str(first)
            log.warning("gatewayd.agent.unlink_failed", error=error, deviceJid=device_jid)
    if scope.cancelled_caught:
        log.warning("gatewayd.agent.unlink_failed", error=f"no answer within {timeout:g} s")
    elif told:
        log.info("gatewayd.agent.unlinked", deviceJid=device_jid)
    return told
