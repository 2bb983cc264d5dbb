"""Inbound traffic of the simulated network: what contacts, groups and channels send an agent.

``InboundInjection`` adds the ``inject_*`` controls to ``sim_network.SimNetwork``; each builds the
event as the neonize adapter would normalise it and delivers it to the agent's client (kept
while the agent is offline, delivered after its next ``Connected``).
"""

from __future__ import annotations

from collections.abc import Sequence

from gatewayd.jid import group_jid, newsletter_jid, phone_jid
from gatewayd.whatsapp.port import (
    STATUS_BROADCAST,
    InboundMessage,
    Media,
    MediaType,
    MessageReceived,
    MessageUnreadable,
    Quote,
    Receipt,
)
from gatewayd.whatsapp.sim.network import SimNetwork, user_jid

_DEFAULT_MIMETYPES: dict[MediaType, str] = {
    "image": "image/jpeg",
    "document": "application/pdf",
    "audio": "audio/ogg; codecs=opus",
    "video": "video/mp4",
    "sticker": "image/webp",
}


class InboundInjection(SimNetwork):
    """The ``inject_*`` controls of the simulated network."""

    def inject_text(
        self,
        agent_id: str,
        sender: str,
        text: str,
        *,
        group: str | None = None,
        chat: str | None = None,
        mentions: Sequence[str] = (),
        quote: Quote | None = None,
        push_name: str | None = None,
        sender_lid: str | None = None,
        lid_addressing: bool = False,
        is_edit: bool = False,
    ) -> InboundMessage:
        """``sender`` (phone, PN or LID JID) writes ``text`` to the agent.

        One-to-one by default; in ``group`` when given. ``chat`` names the other side of a
        one-to-one chat when it is not the sender (a message the agent's own phone sent).
        ``lid_addressing`` delivers it LID-addressed, as WhatsApp does in LID chats.
        ``mentions`` are PN or LID JIDs (or bare phone numbers), put into ``mentionedJID``.
        """
        return self.deliver(
            agent_id, sender, text=text, group=group, chat=chat, mentions=mentions,
            quote=quote, push_name=push_name, sender_lid=sender_lid,
            lid_addressing=lid_addressing, is_edit=is_edit,
        )  # fmt: skip

    def inject_media(
        self,
        agent_id: str,
        kind: MediaType,
        sender: str,
        *,
        caption: str | None = None,
        mimetype: str | None = None,
        filename: str | None = None,
        size: int = 24_576,
        seconds: int | None = None,
        ptt: bool = False,
        group: str | None = None,
        mentions: Sequence[str] = (),
        quote: Quote | None = None,
        push_name: str | None = None,
        data: bytes | None = None,
        downloadable: bool = True,
    ) -> InboundMessage:
        """``sender`` sends a media message; its caption becomes the message text.

        Its bytes are ``data`` (which sets ``size``), else ``size`` made-up bytes
        (``network.sim_media_bytes``); ``downloadable=False`` makes every download fail, as
        for media gone from WhatsApp's servers.
        """
        ref = f"sim-media-{self._inbound_id()}"
        if data is not None:
            self._media[ref], size = data, len(data)
        if not downloadable:
            self._media_gone.add(ref)
        media = Media(
            mimetype=mimetype or _DEFAULT_MIMETYPES[kind], size=size, caption=caption,
            filename=filename, seconds=seconds, ptt=ptt, ref=ref,
        )  # fmt: skip
        return self.deliver(
            agent_id, sender, text=caption, group=group, mentions=mentions, quote=quote,
            push_name=push_name, media_type=kind, media=media,
        )  # fmt: skip

    def inject_status(
        self, agent_id: str, sender: str, text: str, *, push_name: str | None = None
    ) -> InboundMessage:
        """``sender`` posts a status (story); WhatsApp reports it as a group message."""
        return self.deliver(agent_id, sender, text=text, push_name=push_name, status=True)

    def inject_newsletter(self, agent_id: str, newsletter: str, text: str) -> InboundMessage:
        """A followed channel posts ``text``."""
        jid = newsletter_jid(newsletter)
        message = InboundMessage(
            id=self._inbound_id(), chat=jid, sender=jid, timestamp_ms=self.now_ms(),
            text=text, is_newsletter=True,
        )  # fmt: skip
        self._linked(agent_id).deliver(MessageReceived(message))
        return message

    def inject_unreadable(
        self, agent_id: str, raw: bytes, reason: str, *, message_id: str | None = None
    ) -> MessageUnreadable:
        """Something arrives that the adapter cannot read (in-process network only)."""
        event = MessageUnreadable(message_id, reason, raw)
        self._linked(agent_id).deliver(event)
        return event

    def inject_receipt(
        self,
        agent_id: str,
        chat: str,
        message_ids: Sequence[str],
        *,
        type: str = "read",
        sender: str | None = None,
    ) -> Receipt:
        """The other side acknowledges messages the agent sent."""
        receipt = Receipt(chat, sender or chat, tuple(message_ids), type, self.now_ms())
        self._linked(agent_id).deliver(receipt)
        return receipt

    def deliver(
        self,
        agent_id: str,
        sender: str,
        *,
        text: str | None,
        group: str | None = None,
        chat: str | None = None,
        mentions: Sequence[str] = (),
        quote: Quote | None = None,
        push_name: str | None = None,
        sender_lid: str | None = None,
        lid_addressing: bool = False,
        is_edit: bool = False,
        status: bool = False,
        media_type: MediaType | None = None,
        media: Media | None = None,
    ) -> InboundMessage:
        """Build the message as the neonize adapter would normalise it, and deliver it."""
        client = self._linked(agent_id)
        assert client.account is not None
        sender_pn, sender_lid_jid = self._identify(sender, sender_lid)
        chat_lid: str | None = None
        if status:
            chat_jid = STATUS_BROADCAST
        elif group is not None:
            chat_jid = group_jid(group)
        else:
            # Like the adapter: the PN form when it resolves, the LID form kept beside it.
            chat_pn, peer_lid = self._identify(chat, None) if chat else (sender_pn, sender_lid_jid)
            chat_jid = chat_pn or peer_lid or ""
            chat_lid = peer_lid if lid_addressing else None
        message = InboundMessage(
            id=self._inbound_id(),
            chat=chat_jid,
            chat_lid=chat_lid,
            sender=sender_pn or sender_lid_jid or "",
            sender_lid=sender_lid_jid,
            timestamp_ms=self.now_ms(),
            is_group=status or group is not None,
            is_from_me=sender_pn == phone_jid(client.account.phone),
            push_name=push_name or (self._push_names.get(sender_pn) if sender_pn else None),
            text=text,
            mentioned_jids=tuple(user_jid(m) for m in mentions),
            quoted_id=quote.message_id if quote else None,
            quoted_sender=quote.sender if quote else None,
            quoted_text=quote.text if quote else None,
            media_type=media_type,
            media=media,
            is_status_broadcast=status,
            is_edit=is_edit,
        )
        client.deliver(MessageReceived(message))
        return message
