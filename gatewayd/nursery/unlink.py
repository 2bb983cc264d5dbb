"""Unlinking a device whose agent is not connected: a brief connection, only to log out.

Logging an agent out (or deleting it) should make the phone stop listing the linked device.
That takes a word to WhatsApp, which needs a connection; an agent that is offline gets one
just for that, bounded in time. Whatever arrives meanwhile is still committed before it is
acknowledged (the daemon's inbound writer), so even this short connection loses nothing:
what the server kept for the device while it was offline comes right after it connects, so the
logout waits until the connection has been quiet for ``SETTLE`` seconds with nothing left to
commit (at most ``SETTLE_LIMIT``). A logout sent at once would unlink the device with that
backlog still on its way, and it would never be stored.
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
SETTLE = 0.5
"""Seconds without an event after which the offline backlog is taken as delivered."""
SETTLE_LIMIT = 5.0
"""Longest the logout waits for the backlog (a busy account may never fall quiet)."""


class _KeepMessages:
    """The sink of the brief connection: received messages are committed, the rest dropped;
    ``settled`` waits for the backlog."""

    def __init__(self, writer: InboundWriter, agent_uuid: uuid.UUID) -> None:
        self._writer = writer
        self._agent_uuid = agent_uuid
        self._last = trio.current_time()
        self._committing = 0

    async def send(self, value: ClientEvent) -> None:
        self._last = trio.current_time()
        if isinstance(value, MessageReceived):
            self._committing += 1
            try:
                await self._writer.persist(self._agent_uuid, value.message)
            finally:
                self._committing -= 1
                self._last = trio.current_time()

    async def settled(self) -> None:
        """Return once nothing is being committed and no event came for ``SETTLE`` s."""
        with trio.move_on_after(SETTLE_LIMIT):
            while True:
                quiet = trio.current_time() - self._last
                if not self._committing and quiet >= SETTLE:
                    return
                await trio.sleep(SETTLE - quiet if not self._committing else SETTLE)


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
                await sink.settled()
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
