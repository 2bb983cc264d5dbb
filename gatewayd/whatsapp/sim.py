"""SimulatedWhatsApp: an in-memory WhatsApp network of fake phones, contacts and groups.

It implements ``WhatsAppBackend`` for tests, the demo (``gatewayd run --whatsapp sim``) and
benchmarks, and adds the controls a real phone and server would provide: scan a QR, send the
agent a message of any kind, drop the connection, log the device out, ban it.

Pure Trio and deterministic under ``trio.testing.MockClock``: times come from
``trio.current_time()``, randomness from one seeded ``random.Random``. It starts no tasks; the
clients' ``pair`` / ``run`` loops run in their callers' tasks.

Behaviour worth knowing, mirroring the real network:

* QRs rotate on ``QR_SCHEDULE`` (60 s, then five of 20 s); after 160 s pairing fails with
  ``"timeout"``. The device keys stay fixed during one pairing; only the ref rotates.
* Messages injected while an agent is offline are kept and delivered after ``Connected`` on its
  next ``run``; those still queued when a ``run`` is cancelled are delivered again as well.
* ``drop`` ends ``run``; ``drop(back_after=…)`` is a break the client heals by itself (whatsmeow
  reconnects on its own), so ``run`` goes on with ``Disconnected`` … ``Connected``.
* ``log_out`` forgets the device (the next ``run`` fails with ``LoggedOut(on_connect=True)``);
  ``ban`` also refuses connections until it expires; a second ``run`` on one device replaces the
  first one's stream.
* ``stall`` makes an agent's connects and sends hang, uncancellable, until ``unstall``: a call
  stuck in the real library, which a stop must not wait for unbounded.
"""

from __future__ import annotations

import base64
import random
import time
from collections.abc import Mapping, Sequence
from typing import TypeVar

import attrs
import trio

from gatewayd.errors import NotConnected, WhatsAppError
from gatewayd.whatsapp.port import (
    STATUS_BROADCAST,
    ClientOutdated,
    ConnectionEnd,
    Disconnected,
    InboundMessage,
    LoggedOut,
    Media,
    MediaType,
    MessageReceived,
    MessageUnreadable,
    Paired,
    QrCode,
    Quote,
    Receipt,
    StreamReplaced,
    TemporaryBan,
)
from gatewayd.whatsapp.sim_client import (
    QR_SCHEDULE,
    AgentState,
    SentRecord,
    SimulatedClient,
    _non_ad,
)

__all__ = [
    "QR_SCHEDULE",
    "AgentState",
    "BanState",
    "NetworkState",
    "NoQrShowing",
    "SentRecord",
    "SimulatedClient",
    "SimulatedWhatsApp",
]

QR_PREFIX = "https://wa.me/settings/linked_devices#"
CLIENT_TYPE = 6  # DeviceProps.platformType neonize sends by default (SAFARI)

_DEFAULT_MIMETYPES: dict[MediaType, str] = {
    "image": "image/jpeg",
    "document": "application/pdf",
    "audio": "audio/ogg; codecs=opus",
    "video": "video/mp4",
    "sticker": "image/webp",
}


_End = TypeVar("_End", Disconnected, StreamReplaced, ClientOutdated)


class NoQrShowing(WhatsAppError):
    """The agent shows no QR code (not pairing, or the scanned one has rotated away)."""


@attrs.frozen
class _Ban:
    code: str
    until: float


@attrs.frozen
class BanState:
    """A ban as saved: its code and when it ends, in Unix seconds (virtual time restarts)."""

    code: str
    until_unix: float


@attrs.frozen(kw_only=True)
class NetworkState:
    """Everything ``gatewayd simnet --state`` keeps across restarts: devices (credentials),
    contacts, LIDs, groups, bans and each agent's undelivered events and sent log."""

    devices: tuple[Paired, ...] = ()
    bans: dict[str, BanState] = attrs.Factory(dict)
    device_numbers: dict[str, int] = attrs.Factory(dict)
    lids: dict[str, str] = attrs.Factory(dict)  # PN JID -> LID JID
    push_names: dict[str, str] = attrs.Factory(dict)
    groups: dict[str, tuple[str, ...]] = attrs.Factory(dict)
    agents: tuple[AgentState, ...] = ()


class SimulatedWhatsApp:
    """The simulated network; implements ``WhatsAppBackend``.

    ``seed`` fixes ids, keys and LIDs. ``epoch`` (Unix seconds at virtual time 0) fixes message
    timestamps; without it they follow the wall clock, advanced by virtual time.
    """

    def __init__(self, *, seed: int = 0, epoch: float | None = None) -> None:
        self._rng = random.Random(seed)
        self._epoch = epoch
        self._clients: dict[str, SimulatedClient] = {}
        self._devices: dict[str, Paired] = {}  # the credential store, by device JID
        self._online: dict[str, SimulatedClient] = {}  # device JID -> the client using it
        self._bans: dict[str, _Ban] = {}
        self._device_numbers: dict[str, int] = {}  # phone -> last companion device number
        self._lid_of: dict[str, str] = {}  # PN JID -> LID JID
        self._pn_of: dict[str, str] = {}  # LID JID -> PN JID
        self._push_names: dict[str, str] = {}  # PN JID -> push name
        self._groups: dict[str, tuple[str, ...]] = {}
        self._refusals: dict[str, int] = {}  # device JID -> connects still to refuse
        self._stalls: dict[str, trio.Event] = {}  # agent id -> set when its stall ends
        #: Virtual times of every connect attempt, by device JID (for reconnect schedules).
        self.connect_attempts: dict[str, list[float]] = {}

    # ------------------------------------------------------------------ the backend

    def client(self, agent_id: str) -> SimulatedClient:
        """The client of ``agent_id``, made on first use."""
        client = self._clients.get(agent_id)
        if client is None:
            client = self._clients[agent_id] = SimulatedClient(self, agent_id)
        return client

    async def known_devices(self) -> frozenset[str]:
        """Device JIDs that ``run`` can connect."""
        await trio.lowlevel.checkpoint()
        return frozenset(self._devices)

    async def forget_device(self, device_jid: str) -> None:
        """Drop a device's credentials; a live connection on it carries on until it ends."""
        await trio.lowlevel.checkpoint()
        self._devices.pop(device_jid, None)
        self._bans.pop(device_jid, None)

    # ------------------------------------------------------------------ saved state

    def snapshot(
        self, unacked: Mapping[str, Sequence[MessageReceived | Receipt]] | None = None
    ) -> NetworkState:
        """The durable state; ``unacked`` (by agent) are events a remote client holds but has
        not acknowledged, kept ahead of that agent's queue."""
        unacked = unacked or {}
        offset = time.time() - trio.current_time()
        return NetworkState(
            devices=tuple(self._devices.values()),
            bans={d: BanState(b.code, b.until + offset) for d, b in self._bans.items()},
            device_numbers=dict(self._device_numbers),
            lids=dict(self._lid_of),
            push_names=dict(self._push_names),
            groups=dict(self._groups),
            agents=tuple(
                client.state(unacked.get(agent_id, ()))
                for agent_id, client in self._clients.items()
            ),
        )

    def restore(self, state: NetworkState) -> None:
        """Load a saved state into this (fresh) network."""
        offset = time.time() - trio.current_time()
        self._devices = {paired.device_jid: paired for paired in state.devices}
        self._bans = {d: _Ban(b.code, b.until_unix - offset) for d, b in state.bans.items()}
        self._device_numbers = dict(state.device_numbers)
        self._lid_of = dict(state.lids)
        self._pn_of = {lid: pn for pn, lid in state.lids.items()}
        self._push_names = dict(state.push_names)
        self._groups = dict(state.groups)
        for agent in state.agents:
            self.client(agent.agent_id).restore(agent)

    # ------------------------------------------------------------------ contacts and groups

    def add_contact(
        self, phone: str, *, lid: str | None = None, push_name: str | None = None
    ) -> tuple[str, str]:
        """Register a phone (a LID is made up unless given); returns its (PN JID, LID JID)."""
        pn = _pn_jid(phone)
        known = self._lid_of.get(pn)
        lid_jid = _lid_jid(lid) if lid is not None else known or self._new_lid()
        if known is not None and known != lid_jid:
            self._pn_of.pop(known, None)
        self._lid_of[pn], self._pn_of[lid_jid] = lid_jid, pn
        if push_name is not None:
            self._push_names[pn] = push_name
        return pn, lid_jid

    def add_group(self, jid: str, participants: Sequence[str]) -> str:
        """Register a group of phones (each becomes a contact); returns the group JID."""
        group = _group_jid(jid)
        self._groups[group] = tuple(self.add_contact(p)[0] for p in participants)
        return group

    def participants(self, group: str) -> tuple[str, ...]:
        """The PN JIDs of a registered group's members."""
        return self._groups.get(_group_jid(group), ())

    # ------------------------------------------------------------------ pairing and inspection

    def current_qr(self, agent_id: str) -> QrCode | None:
        """The QR the agent shows right now, if it is pairing."""
        client = self._clients.get(agent_id)
        pairing = client._pairing if client is not None else None
        return pairing.qr if pairing is not None and pairing.outcome is None else None

    def scan(
        self,
        agent_id: str,
        phone: str,
        *,
        lid: str | None = None,
        push_name: str | None = None,
        platform: str = "android",
        payload: str | None = None,
    ) -> Paired:
        """A phone scans the agent's current QR (or exactly ``payload``); the device is linked.

        Raises ``NoQrShowing`` when no QR is showing or ``payload`` is no longer the current one.
        The agent's ``pair`` then pushes and returns the same ``Paired``.
        """
        qr = self.current_qr(agent_id)
        if qr is None:
            raise NoQrShowing(f"agent {agent_id!r} shows no QR code")
        if payload is not None and payload != qr.payload:
            raise NoQrShowing(f"agent {agent_id!r} no longer shows that QR code")
        pn, lid_jid = self.add_contact(phone, lid=lid, push_name=push_name)
        digits = pn.partition("@")[0]
        number = self._device_numbers[digits] = self._device_numbers.get(digits, 0) + 1
        paired = Paired(f"{digits}:{number}@s.whatsapp.net", digits, lid_jid, push_name, platform)
        self._devices[paired.device_jid] = paired
        pairing = self._clients[agent_id]._pairing
        assert pairing is not None
        pairing.outcome = paired
        pairing.done.set()
        return paired

    def refuse_connections(self, device_jid: str, count: int) -> None:
        """The next ``count`` connects of ``device_jid`` fail like a network error
        (``Disconnected``, not terminal), as a DNS failure or a refused socket would."""
        self._refusals[device_jid] = count

    def stall(self, agent_id: str) -> None:
        """Make the agent's next connects and sends hang, cancellation or not, until ``unstall``.

        It stands for a call stuck inside the real library: a Go call in a worker thread that
        no deadline reaches (whatsmeow sets none on uploads), which Trio cannot cancel; or a
        connect that takes long to report anything.
        """
        if agent_id not in self._stalls:
            self._stalls[agent_id] = trio.Event()

    def unstall(self, agent_id: str) -> None:
        """Let the agent's stalled calls go on (and new ones through)."""
        stall = self._stalls.pop(agent_id, None)
        if stall is not None:
            stall.set()

    def stalled_calls(self, agent_id: str) -> int:
        """How many of the agent's calls are hanging in a stall right now."""
        stall = self._stalls.get(agent_id)
        return 0 if stall is None else stall.statistics().tasks_waiting

    async def _stalled(self, agent_id: str) -> None:
        """Hang while the agent is stalled; shielded, as a thread in Go cannot be cancelled."""
        stall = self._stalls.get(agent_id)
        if stall is not None:
            with trio.CancelScope(shield=True):
                await stall.wait()

    def fail_pairing(self, agent_id: str, reason: str = "error") -> None:
        """End the agent's pairing with whatsmeow's ``reason`` (``"err-client-outdated"``, …)."""
        client = self._clients.get(agent_id)
        if client is None or client._pairing is None or client._pairing.outcome is not None:
            raise NoQrShowing(f"agent {agent_id!r} is not pairing")
        client._pairing.outcome = reason
        client._pairing.done.set()

    def account(self, agent_id: str) -> Paired | None:
        """The device the agent is linked as (from its last pairing or run), if any."""
        client = self._clients.get(agent_id)
        return client.account if client is not None else None

    def is_connected(self, agent_id: str) -> bool:
        """True while the agent's ``run`` is connected."""
        client = self._clients.get(agent_id)
        return client is not None and client.connected

    def sent(self, agent_id: str) -> list[SentRecord]:
        """Everything the agent sent, typed or marked read, in order."""
        client = self._clients.get(agent_id)
        return list(client._sent) if client is not None else []

    # ------------------------------------------------------------------ inbound traffic

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
        return self._deliver(
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
    ) -> InboundMessage:
        """``sender`` sends a media message; its caption becomes the message text."""
        media = Media(
            mimetype=mimetype or _DEFAULT_MIMETYPES[kind], size=size, caption=caption,
            filename=filename, seconds=seconds, ptt=ptt,
        )  # fmt: skip
        return self._deliver(
            agent_id, sender, text=caption, group=group, mentions=mentions, quote=quote,
            push_name=push_name, media_type=kind, media=media,
        )  # fmt: skip

    def inject_status(
        self, agent_id: str, sender: str, text: str, *, push_name: str | None = None
    ) -> InboundMessage:
        """``sender`` posts a status (story); WhatsApp reports it as a group message."""
        return self._deliver(agent_id, sender, text=text, push_name=push_name, status=True)

    def inject_newsletter(self, agent_id: str, newsletter: str, text: str) -> InboundMessage:
        """A followed channel posts ``text``."""
        jid = newsletter if "@" in newsletter else f"{newsletter}@newsletter"
        message = InboundMessage(
            id=self._inbound_id(), chat=jid, sender=jid, timestamp_ms=self._now_ms(),
            text=text, is_newsletter=True,
        )  # fmt: skip
        self._linked(agent_id)._deliver(MessageReceived(message))
        return message

    def inject_unreadable(
        self, agent_id: str, raw: bytes, reason: str, *, message_id: str | None = None
    ) -> MessageUnreadable:
        """Something arrives that the adapter cannot read (in-process network only)."""
        event = MessageUnreadable(message_id, reason, raw)
        self._linked(agent_id)._deliver(event)
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
        receipt = Receipt(chat, sender or chat, tuple(message_ids), type, self._now_ms())
        self._linked(agent_id)._deliver(receipt)
        return receipt

    def _deliver(
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
            chat_jid = _group_jid(group)
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
            timestamp_ms=self._now_ms(),
            is_group=status or group is not None,
            is_from_me=sender_pn == f"{client.account.phone}@s.whatsapp.net",
            push_name=push_name or (self._push_names.get(sender_pn) if sender_pn else None),
            text=text,
            mentioned_jids=tuple(_user_jid(m) for m in mentions),
            quoted_id=quote.message_id if quote else None,
            quoted_sender=quote.sender if quote else None,
            quoted_text=quote.text if quote else None,
            media_type=media_type,
            media=media,
            is_status_broadcast=status,
            is_edit=is_edit,
        )
        client._deliver(MessageReceived(message))
        return message

    def _identify(self, who: str, lid: str | None) -> tuple[str | None, str | None]:
        """(PN JID, LID JID) of a phone, PN or LID JID; a LID nobody knows has no PN."""
        jid = _user_jid(who)
        if jid.endswith("@lid"):
            return self._pn_of.get(jid), jid
        return self.add_contact(jid, lid=lid)

    # ------------------------------------------------------------------ connection control

    def drop(
        self, agent_id: str, reason: str = "connection lost", *, back_after: float | None = None
    ) -> Disconnected:
        """The connection breaks; ``run`` pushes and returns ``Disconnected``.

        With ``back_after``, the client heals the break itself, as whatsmeow does: ``run`` goes
        on, pushes ``Disconnected`` now and ``Connected`` ``back_after`` seconds later, and calls
        that need a connection raise ``NotConnected`` in between.
        """
        if back_after is not None:
            return self._running(agent_id)._interrupt(reason, back_after)
        return self._end(agent_id, Disconnected(reason))

    def replace_stream(self, agent_id: str) -> StreamReplaced:
        """Another client takes over the session."""
        return self._end(agent_id, StreamReplaced())

    def outdated(self, agent_id: str) -> ClientOutdated:
        """WhatsApp declares the client version outdated (this connection only)."""
        return self._end(agent_id, ClientOutdated())

    def log_out(self, agent_id: str, reason: str = "logged_out") -> LoggedOut:
        """The phone unlinks the device (online or not); its credentials are forgotten."""
        client = self._linked(agent_id)
        assert client.account is not None
        self._devices.pop(client.account.device_jid, None)
        event = LoggedOut(reason, on_connect=False)
        client._end(event)
        return event

    def ban(
        self, agent_id: str, seconds: float, code: str = "sent_to_too_many_people"
    ) -> TemporaryBan:
        """WhatsApp bans the account for ``seconds``; connecting fails until then."""
        client = self._linked(agent_id)
        assert client.account is not None
        self._bans[client.account.device_jid] = _Ban(code, trio.current_time() + seconds)
        event = TemporaryBan(code, seconds)
        client._end(event)
        return event

    def _end(self, agent_id: str, event: _End) -> _End:
        self._running(agent_id)._end(event)
        return event

    def _running(self, agent_id: str) -> SimulatedClient:
        client = self._clients.get(agent_id)
        if client is None or not client.connected:
            raise NotConnected(f"agent {agent_id!r} is not connected")
        return client

    def _linked(self, agent_id: str) -> SimulatedClient:
        client = self._clients.get(agent_id)
        if client is None or client.account is None:
            raise NotConnected(f"agent {agent_id!r} has no linked device")
        return client

    # ------------------------------------------------------------------ used by the clients

    def _connect_failure(self, device_jid: str) -> ConnectionEnd | None:
        """Why connecting ``device_jid`` fails right now, or None when it would succeed."""
        refused = self._refusals.get(device_jid, 0)
        if refused > 0:
            self._refusals[device_jid] = refused - 1
            self.connect_attempts.setdefault(device_jid, []).append(trio.current_time())
            return Disconnected("connection refused")
        self.connect_attempts.setdefault(device_jid, []).append(trio.current_time())
        if device_jid not in self._devices:
            return LoggedOut("logged_out", on_connect=True)
        ban = self._bans.get(device_jid)
        if ban is not None and ban.until > trio.current_time():
            return TemporaryBan(ban.code, ban.until - trio.current_time())
        return None

    def _attach(self, device_jid: str, client: SimulatedClient) -> Paired:
        """Make ``client`` the one online on ``device_jid``; whoever was there is replaced."""
        previous = self._online.get(device_jid)
        if previous is not None and previous is not client:
            previous._end(StreamReplaced())
        self._online[device_jid] = client
        return self._devices[device_jid]

    def _detach(self, device_jid: str, client: SimulatedClient) -> None:
        if self._online.get(device_jid) is client:
            del self._online[device_jid]

    def _now_ms(self) -> int:
        if self._epoch is None:
            # Anchored once, so virtual time still moves the timestamps under a MockClock.
            self._epoch = time.time() - trio.current_time()
        return int((self._epoch + trio.current_time()) * 1000)

    def _message_id(self) -> str:
        """An id like the ones whatsmeow makes for sent messages."""
        return f"3EB0{self._rng.getrandbits(64):016X}"

    def _inbound_id(self) -> str:
        """An id like the ones phones make."""
        return f"3A{self._rng.getrandbits(72):018X}"

    def _new_lid(self) -> str:
        return f"{self._rng.randrange(10**14, 10**15)}@lid"

    def _pairing_keys(self) -> str:
        """Noise public key, identity public key, adv secret (32 bytes each) and client type."""
        keys = (_b64(self._rng.randbytes(32)) for _ in range(3))
        return f"{','.join(keys)},{CLIENT_TYPE}"

    def _qr_payload(self, keys: str) -> str:
        """A QR string in whatsmeow's current format with a fresh server ref."""
        return f"{QR_PREFIX}2@{_b64(self._rng.randbytes(66))},{keys}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _user_jid(who: str) -> str:
    """A user JID from a phone number (``+62…``, ``62…``) or a JID (device part dropped)."""
    if "@" in who:
        return _non_ad(who)
    digits = who.removeprefix("+")
    if not digits.isdigit():
        raise ValueError(f"not a phone number or JID: {who!r}")
    return f"{digits}@s.whatsapp.net"


def _pn_jid(phone: str) -> str:
    jid = _user_jid(phone)
    if not jid.endswith("@s.whatsapp.net"):
        raise ValueError(f"not a phone number: {phone!r}")
    return jid


def _lid_jid(lid: str) -> str:
    return lid if lid.endswith("@lid") else f"{lid}@lid"


def _group_jid(group: str) -> str:
    return group if group.endswith("@g.us") else f"{group}@g.us"
