"""The core of the simulated network: its state, contacts and groups, and what clients use.

``SimNetwork`` is the base of ``whatsapp.SimulatedWhatsApp`` (through ``inject.InboundInjection``):
the credential store, the contacts, LIDs and groups, the ids and timestamps, and the methods the
clients of ``client.py`` call to connect (``connect_failure``, ``attach``, ``detach``) and
to hang in a stall (``stalled``). The controls a test or the demo drives are in ``whatsapp.py`` and
``inject.py``.
"""

from __future__ import annotations

import base64
import hashlib
import random
import time
from collections.abc import Callable, Sequence

import attrs
import trio

from gatewayd.errors import NotConnected, WhatsAppError
from gatewayd.jid import group_jid, is_lid, is_user, lid_jid, non_ad, phone_jid
from gatewayd.whatsapp.port import (
    ClientEvent,
    ConnectionEnd,
    Disconnected,
    LoggedOut,
    Paired,
    StreamReplaced,
    TemporaryBan,
)
from gatewayd.whatsapp.sim.client import SimulatedClient
from gatewayd.whatsapp.sim.paircode import new_code

QR_PREFIX = "https://wa.me/settings/linked_devices#"
CLIENT_TYPE = 6  # DeviceProps.platformType neonize sends by default (SAFARI)


@attrs.frozen
class ActiveBan:
    """A ban in force: its code and when it ends, in virtual time (``trio.current_time()``)."""

    code: str
    until: float


class SimNetwork:
    """The network's state and the parts of it that its clients and controls share.

    ``seed`` fixes ids, keys and LIDs. ``epoch`` (Unix seconds at virtual time 0) fixes message
    timestamps; without it they follow the wall clock, advanced by virtual time.
    """

    def __init__(self, *, seed: int = 0, epoch: float | None = None) -> None:
        self._rng = random.Random(seed)
        self._epoch = epoch
        self._clients: dict[str, SimulatedClient] = {}
        self._devices: dict[str, Paired] = {}  # the credential store, by device JID
        self._online: dict[str, SimulatedClient] = {}  # device JID -> the client using it
        self._bans: dict[str, ActiveBan] = {}
        self._device_numbers: dict[str, int] = {}  # phone -> last companion device number
        self._lid_of: dict[str, str] = {}  # PN JID -> LID JID
        self._pn_of: dict[str, str] = {}  # LID JID -> PN JID
        self._push_names: dict[str, str] = {}  # PN JID -> push name
        self._groups: dict[str, tuple[str, ...]] = {}
        self._refusals: dict[str, int] = {}  # device JID -> connects still to refuse
        self._ack_waiters: dict[str, trio.Event] = {}  # message id -> set once acknowledged
        self._stalls: dict[str, trio.Event] = {}  # agent id -> set when its stall ends
        self._media: dict[str, bytes] = {}  # media ref -> the bytes a test gave (in memory only)
        self._media_gone: set[str] = set()  # media refs whose download fails
        #: Virtual times of every connect attempt, by device JID (for reconnect schedules).
        self.connect_attempts: dict[str, list[float]] = {}
        #: Called with every event a client is about to hand to the daemon (its sink's
        #: ``send``), on every try; None: nothing is called. Benchmarks time it
        #: (bench/inbound.py); it must not raise or block.
        self.on_handover: Callable[[ClientEvent], None] | None = None

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
        group = group_jid(jid)
        self._groups[group] = tuple(self.add_contact(p)[0] for p in participants)
        return group

    def participants(self, group: str) -> tuple[str, ...]:
        """The PN JIDs of a registered group's members."""
        return self._groups.get(group_jid(group), ())

    def _identify(self, who: str, lid: str | None) -> tuple[str | None, str | None]:
        """(PN JID, LID JID) of a phone, PN or LID JID; a LID nobody knows has no PN."""
        jid = user_jid(who)
        if is_lid(jid):
            return self._pn_of.get(jid), jid
        return self.add_contact(jid, lid=lid)

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

    def watch_ack(self, message_id: str) -> trio.Event:
        """An event set once the daemon acknowledged the message (its callback returned)."""
        return self._ack_waiters.setdefault(message_id, trio.Event())

    def unwatch_ack(self, message_id: str) -> None:
        self._ack_waiters.pop(message_id, None)

    def acknowledged(self, message_id: str) -> None:
        """A client handed the message over: the daemon has it (and committed it)."""
        waiter = self._ack_waiters.pop(message_id, None)
        if waiter is not None:
            waiter.set()

    def pn_for(self, lid: str) -> str | None:
        """The phone-number JID behind a LID, when the network knows it."""
        return self._pn_of.get(lid)

    def lid_for(self, pn: str) -> str | None:
        """The LID of a phone-number JID, when the network knows it."""
        return self._lid_of.get(pn)

    def unlink(self, device_jid: str) -> None:
        """The device logged out: its credentials are gone (a ban on it stays)."""
        self._devices.pop(device_jid, None)

    def connect_failure(self, device_jid: str) -> ConnectionEnd | None:
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

    def attach(self, device_jid: str, client: SimulatedClient) -> Paired:
        """Make ``client`` the one online on ``device_jid``; whoever was there is replaced."""
        previous = self._online.get(device_jid)
        if previous is not None and previous is not client:
            previous.end(StreamReplaced())
        self._online[device_jid] = client
        return self._devices[device_jid]

    def detach(self, device_jid: str, client: SimulatedClient) -> None:
        if self._online.get(device_jid) is client:
            del self._online[device_jid]

    def now_ms(self) -> int:
        if self._epoch is None:
            # Anchored once, so virtual time still moves the timestamps under a MockClock.
            self._epoch = time.time() - trio.current_time()
        return int((self._epoch + trio.current_time()) * 1000)

    def new_message_id(self) -> str:
        """An id like the ones whatsmeow makes for sent messages."""
        return f"3EB0{self._rng.getrandbits(64):016X}"

    def _inbound_id(self) -> str:
        """An id like the ones phones make."""
        return f"3A{self._rng.getrandbits(72):018X}"

    def _new_lid(self) -> str:
        return lid_jid(str(self._rng.randrange(10**14, 10**15)))

    def media_bytes(self, ref: str, size: int) -> bytes:
        """The bytes behind an injected attachment: those given at injection, else ``size``
        bytes made from the ref (so a restarted ``gatewayd simnet`` serves the same ones)."""
        if ref in self._media_gone:
            raise WhatsAppError("media download failed: 404 (expired on the server)")
        given = self._media.get(ref)
        return given if given is not None else sim_media_bytes(ref, size)

    def pairing_keys(self) -> str:
        """Noise public key, identity public key, adv secret (32 bytes each) and client type."""
        keys = (_b64(self._rng.randbytes(32)) for _ in range(3))
        return f"{','.join(keys)},{CLIENT_TYPE}"

    def new_pair_code(self) -> str:
        """A phone pairing code in whatsmeow's format (``sim/paircode.py``)."""
        return new_code(self._rng)

    def qr_payload(self, keys: str) -> str:
        """A QR string in whatsmeow's current format with a fresh server ref."""
        return f"{QR_PREFIX}2@{_b64(self._rng.randbytes(66))},{keys}"

    async def stalled(self, agent_id: str) -> None:
        """Hang while the agent is stalled; shielded, as a thread in Go cannot be cancelled."""
        stall = self._stalls.get(agent_id)
        if stall is not None:
            with trio.CancelScope(shield=True):
                await stall.wait()


def sim_media_bytes(ref: str, size: int) -> bytes:
    """The made-up content of an attachment injected without bytes: a hash chain of ``ref``."""
    block = hashlib.sha256(ref.encode()).digest() * 128  # 4 KiB
    return (block * (size // len(block) + 1))[: max(size, 0)]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def user_jid(who: str) -> str:
    """A user JID from a phone number (``+62…``, ``62…``) or a JID (device part dropped)."""
    if "@" in who:
        return non_ad(who)
    digits = who.removeprefix("+")
    if not digits.isdigit():
        raise ValueError(f"not a phone number or JID: {who!r}")
    return phone_jid(digits)


def _pn_jid(phone: str) -> str:
    jid = user_jid(phone)
    if not is_user(jid):
        raise ValueError(f"not a phone number: {phone!r}")
    return jid


def _lid_jid(lid: str) -> str:
    return lid_jid(lid)
