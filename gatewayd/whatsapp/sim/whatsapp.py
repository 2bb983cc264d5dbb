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
* A pairing agent can ask for a phone code (``pair_phone``); ``enter_pair_code`` is the phone
  typing it. A code lives ``PAIR_CODE_LIFETIME`` (120 s) and never past the QR schedule; a wrong,
  expired or replaced code, or one typed on another number, is refused (``PairCodeRefused``)
  and the pairing goes on.
* Messages injected while an agent is offline are kept and delivered after ``Connected`` on its
  next ``run``; those still queued when a ``run`` is cancelled are delivered again as well.
* ``drop`` ends ``run``; ``drop(back_after=…)`` is a break the client heals by itself (whatsmeow
  reconnects on its own), so ``run`` goes on with ``Disconnected`` … ``Connected``.
* ``log_out`` forgets the device (the next ``run`` fails with ``LoggedOut(on_connect=True)``);
  ``ban`` also refuses connections until it expires; a second ``run`` on one device replaces the
  first one's stream.
* ``stall`` makes an agent's connects and sends hang, uncancellable, until ``unstall``: a call
  stuck in the real library, which a stop must not wait for unbounded.

The network is layered: ``sim_network.SimNetwork`` (state, contacts, what the clients use),
``sim_inject.InboundInjection`` (inbound traffic) and ``SimulatedWhatsApp`` here (saved state,
pairing and inspection, stalls, connection control).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TypeVar

import attrs
import trio

from gatewayd.errors import WhatsAppError
from gatewayd.jid import phone_jid
from gatewayd.whatsapp.port import (
    ClientOutdated,
    Disconnected,
    LoggedOut,
    MessageReceived,
    Paired,
    QrCode,
    Receipt,
    StreamReplaced,
    TemporaryBan,
)
from gatewayd.whatsapp.sim.client import (
    QR_SCHEDULE,
    AgentState,
    SentRecord,
    SimulatedClient,
)
from gatewayd.whatsapp.sim.inject import InboundInjection
from gatewayd.whatsapp.sim.network import ActiveBan
from gatewayd.whatsapp.sim.paircode import PairCodeRefused, pairing_digits, same_code

__all__ = [
    "QR_SCHEDULE",
    "AgentState",
    "BanState",
    "NetworkState",
    "NoQrShowing",
    "PairCodeRefused",
    "SentRecord",
    "SimulatedClient",
    "SimulatedWhatsApp",
]


_End = TypeVar("_End", Disconnected, StreamReplaced, ClientOutdated)


class NoQrShowing(WhatsAppError):
    """The agent shows no QR code (not pairing, or the scanned one has rotated away)."""


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


class SimulatedWhatsApp(InboundInjection):
    """The simulated network; implements ``WhatsAppBackend``.

    ``seed`` fixes ids, keys and LIDs. ``epoch`` (Unix seconds at virtual time 0) fixes message
    timestamps; without it they follow the wall clock, advanced by virtual time.
    """

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
        self._bans = {d: ActiveBan(b.code, b.until_unix - offset) for d, b in state.bans.items()}
        self._device_numbers = dict(state.device_numbers)
        self._lid_of = dict(state.lids)
        self._pn_of = {lid: pn for pn, lid in state.lids.items()}
        self._push_names = dict(state.push_names)
        self._groups = dict(state.groups)
        for agent in state.agents:
            self.client(agent.agent_id).restore(agent)

    # ------------------------------------------------------------------ pairing and inspection

    def current_qr(self, agent_id: str) -> QrCode | None:
        """The QR the agent shows right now, if it is pairing."""
        client = self._clients.get(agent_id)
        pairing = client.pairing if client is not None else None
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
        return self._link(agent_id, phone, lid=lid, push_name=push_name, platform=platform)

    def enter_pair_code(
        self,
        code: str,
        phone: str,
        *,
        lid: str | None = None,
        push_name: str | None = None,
        platform: str = "android",
    ) -> Paired:
        """The phone ``phone`` types ``code`` (Link with phone number); the device is linked.

        The code names the pairing, as on WhatsApp. Raises ``PairCodeRefused`` when no pairing
        has that code now (wrong, replaced by a newer one, or the pairing ended), when it has
        expired, or when it was asked for another number; the pairing goes on. The agent's
        ``pair`` then pushes and returns the same ``Paired``.
        """
        digits = pairing_digits(phone)
        now = trio.current_time()
        for agent_id, client in self._clients.items():
            pairing = client.pairing
            if pairing is None or pairing.outcome is not None or pairing.phone_code is None:
                continue
            issued = pairing.phone_code
            if not same_code(code, issued.code):
                continue
            if now >= issued.expires_at:
                raise PairCodeRefused("the code has expired: ask for a new one")
            if digits != issued.phone:
                raise PairCodeRefused("the code was asked for another phone number")
            return self._link(agent_id, digits, lid=lid, push_name=push_name, platform=platform)
        raise PairCodeRefused("wrong code: no pairing is waiting for it")

    def _link(
        self,
        agent_id: str,
        phone: str,
        *,
        lid: str | None,
        push_name: str | None,
        platform: str,
    ) -> Paired:
        """Link a new device of ``phone`` to the agent's pairing, which ends with it."""
        pn, lid_jid = self.add_contact(phone, lid=lid, push_name=push_name)
        digits = pn.partition("@")[0]
        number = self._device_numbers[digits] = self._device_numbers.get(digits, 0) + 1
        paired = Paired(phone_jid(digits, number), digits, lid_jid, push_name, platform)
        self._devices[paired.device_jid] = paired
        pairing = self._clients[agent_id].pairing
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

    def fail_pairing(self, agent_id: str, reason: str = "error") -> None:
        """End the agent's pairing with whatsmeow's ``reason`` (``"err-client-outdated"``, …)."""
        client = self._clients.get(agent_id)
        if client is None or client.pairing is None or client.pairing.outcome is not None:
            raise NoQrShowing(f"agent {agent_id!r} is not pairing")
        client.pairing.outcome = reason
        client.pairing.done.set()

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
        return client.sent_records() if client is not None else []

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
        return self.end(agent_id, Disconnected(reason))

    def replace_stream(self, agent_id: str) -> StreamReplaced:
        """Another client takes over the session."""
        return self.end(agent_id, StreamReplaced())

    def outdated(self, agent_id: str) -> ClientOutdated:
        """WhatsApp declares the client version outdated (this connection only)."""
        return self.end(agent_id, ClientOutdated())

    def log_out(self, agent_id: str, reason: str = "logged_out") -> LoggedOut:
        """The phone unlinks the device (online or not); its credentials are forgotten."""
        client = self._linked(agent_id)
        assert client.account is not None
        self._devices.pop(client.account.device_jid, None)
        event = LoggedOut(reason, on_connect=False)
        client.end(event)
        return event

    def ban(
        self, agent_id: str, seconds: float, code: str = "sent_to_too_many_people"
    ) -> TemporaryBan:
        """WhatsApp bans the account for ``seconds``; connecting fails until then."""
        client = self._linked(agent_id)
        assert client.account is not None
        self._bans[client.account.device_jid] = ActiveBan(code, trio.current_time() + seconds)
        event = TemporaryBan(code, seconds)
        client.end(event)
        return event

    def end(self, agent_id: str, event: _End) -> _End:
        self._running(agent_id).end(event)
        return event
