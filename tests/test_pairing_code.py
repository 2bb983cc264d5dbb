"""Linking without a camera: a phone pairing code, on the simulated network, the simnet, through
the agents and the use case, and neonize's offline failure path."""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from gatewayd.config import Config
from gatewayd.errors import (
    InvalidRecipient,
    NotConnected,
    SessionNotFound,
    WhatsAppError,
)
from gatewayd.metrics import Metrics
from gatewayd.nursery.agents import AgentSupervisor
from gatewayd.nursery.bus import EventBus
from gatewayd.nursery.handle import AgentHandle
from gatewayd.store import agents as agents_store
from gatewayd.store.db import Database
from gatewayd.usecases.pairing import AlreadyConnected, request_pair_code
from gatewayd.whatsapp.neonize.backend import NeonizeBackend, open_neonize_backend
from gatewayd.whatsapp.neonize.pairing import CodeRequests
from gatewayd.whatsapp.port import (
    PAIR_CODE_LIFETIME,
    ClientEvent,
    Paired,
    PairingError,
    PairingFailed,
)
from gatewayd.whatsapp.sim import PairCodeRefused, SimulatedWhatsApp
from gatewayd.whatsapp.sim.client import QR_SCHEDULE
from tests.gateway_fixtures import Running
from tests.test_neonize_pairing_child import Child
from tests.test_simnet import gateway_on, start_simnet, stop, wait_connected

CODE = re.compile(r"[1-9A-HJ-NP-TV-Z]{4}-[1-9A-HJ-NP-TV-Z]{4}")
"""whatsmeow's format: 8 characters of its alphabet (no 0, I, O, U), as XXXX-XXXX."""

PHONE = "6281234560001"


async def pairing(
    nursery: trio.Nursery, sim: SimulatedWhatsApp, agent_id: str = "bot"
) -> tuple[trio.MemoryReceiveChannel[ClientEvent], list[Paired | BaseException]]:
    """Start ``pair`` of the agent's client; its events, and a list that gets its outcome."""
    send, receive = trio.open_memory_channel[ClientEvent](100)
    outcome: list[Paired | BaseException] = []

    async def run(*, task_status: trio.TaskStatus[None]) -> None:
        try:
            outcome.append(await sim.client(agent_id).pair(send, task_status=task_status))
        except PairingError as exc:
            outcome.append(exc)

    await nursery.start(run)
    return receive, outcome


# --------------------------------------------------------------------------- the sim network


async def test_typing_the_code_on_the_phone_pairs_like_a_scan(nursery: trio.Nursery) -> None:
    """A code asked for during the QR phase, typed on that phone, links the device."""
    sim = SimulatedWhatsApp()
    events, outcome = await pairing(nursery, sim)
    code = await sim.client("bot").pair_phone("+62 812-3456-0001")
    assert CODE.fullmatch(code)
    # People type it without the dash and in lower case; the phone takes it.
    paired = sim.enter_pair_code(code.replace("-", "").lower(), PHONE, push_name="Budi")
    await trio.testing.wait_all_tasks_blocked()
    assert outcome == [paired]
    assert paired.phone == PHONE and paired.device_jid.startswith(f"{PHONE}:")
    assert sim.account("bot") == paired and sim.current_qr("bot") is None
    kinds = [e.kind for e in _drain(events)]
    assert kinds[0] == "qr" and kinds[-1] == "paired"
    with pytest.raises(PairCodeRefused):
        sim.enter_pair_code(code, PHONE)  # used: the pairing is over


async def test_wrong_replaced_or_misdirected_codes_are_refused_and_pairing_goes_on(
    nursery: trio.Nursery,
) -> None:
    """A wrong code, an older code, or the code typed on another phone links nothing."""
    sim = SimulatedWhatsApp()
    _events, outcome = await pairing(nursery, sim)
    client = sim.client("bot")
    first = await client.pair_phone(PHONE)
    second = await client.pair_phone(PHONE)
    assert first != second
    with pytest.raises(PairCodeRefused, match="wrong code"):
        sim.enter_pair_code("ZZZZ-ZZZZ" if second != "ZZZZ-ZZZZ" else "YYYY-YYYY", PHONE)
    with pytest.raises(PairCodeRefused, match="wrong code"):
        sim.enter_pair_code(first, PHONE)  # replaced by the newer one
    with pytest.raises(PairCodeRefused, match="another phone number"):
        sim.enter_pair_code(second, "6289999999999")
    assert outcome == [] and sim.current_qr("bot") is not None  # still pairing
    paired = sim.enter_pair_code(second, PHONE)
    await trio.testing.wait_all_tasks_blocked()
    assert outcome == [paired]


async def test_a_code_expires_after_its_lifetime(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Past PAIR_CODE_LIFETIME the code is refused as expired; a new one still links."""
    sim = SimulatedWhatsApp()
    _events, outcome = await pairing(nursery, sim)
    code = await sim.client("bot").pair_phone(PHONE)
    await trio.sleep(PAIR_CODE_LIFETIME - 1)
    assert sim.current_qr("bot") is not None  # the QR phase is still on ...
    await trio.sleep(1)
    with pytest.raises(PairCodeRefused, match="expired"):
        sim.enter_pair_code(code, PHONE)  # ... but the code is not
    fresh = await sim.client("bot").pair_phone(PHONE)
    sim.enter_pair_code(fresh, PHONE)
    await trio.testing.wait_all_tasks_blocked()
    assert len(outcome) == 1 and isinstance(outcome[0], Paired)


async def test_a_code_never_outlives_its_pairing(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A code asked for late dies when the QR schedule runs out, before its own lifetime."""
    sim = SimulatedWhatsApp()
    events, outcome = await pairing(nursery, sim)
    await trio.sleep(sum(QR_SCHEDULE) - 30)
    code = await sim.client("bot").pair_phone(PHONE)
    await trio.sleep(31)
    assert len(outcome) == 1 and isinstance(outcome[0], PairingError)
    assert isinstance(_drain(events)[-1], PairingFailed)
    with pytest.raises(PairCodeRefused):
        sim.enter_pair_code(code, PHONE)


async def test_pair_phone_needs_a_pairing_and_an_international_number(
    nursery: trio.Nursery,
) -> None:
    """Outside the QR phase the request is refused; a national or short number is invalid."""
    sim = SimulatedWhatsApp()
    client = sim.client("bot")
    with pytest.raises(NotConnected):
        await client.pair_phone(PHONE)
    await pairing(nursery, sim)
    for bad in ("0812 3456 0001", "12345", "no digits"):
        with pytest.raises(InvalidRecipient):
            await client.pair_phone(bad)


def _drain(channel: trio.MemoryReceiveChannel[ClientEvent]) -> list[ClientEvent]:
    out: list[ClientEvent] = []
    while True:
        try:
            out.append(channel.receive_nowait())
        except trio.WouldBlock:
            return out


# --------------------------------------------------------------------------- agents, use case


@pytest.fixture
async def sup(database: Database, nursery: trio.Nursery) -> AsyncIterator[AgentSupervisor]:
    config = Config.from_mapping({"agents": {"restart_initial": 0.05, "restart_max": 0.5}})
    supervisor = AgentSupervisor(
        db=database,
        backend=SimulatedWhatsApp(),
        metrics=Metrics(),
        bus=EventBus(),
        config=lambda: config,
    )
    await nursery.start(supervisor.run)
    yield supervisor


def sim_of(supervisor: AgentSupervisor) -> SimulatedWhatsApp:
    assert isinstance(supervisor.backend, SimulatedWhatsApp)
    return supervisor.backend


async def new_agent(supervisor: AgentSupervisor, agent_id: str) -> None:
    await agents_store.create_agent(
        supervisor.db, agent_id=agent_id, name=agent_id, user_id="u1", api_key="k"
    )


async def connected(handle: AgentHandle) -> None:
    with trio.fail_after(30):
        await handle.online.wait()


async def test_request_pair_code_links_a_new_session(sup: AgentSupervisor) -> None:
    """The use case starts a pairing, answers a code; typed on the phone, the session connects."""
    await new_agent(sup, "bot-a")
    pair_code = await request_pair_code(sup, "bot-a", "0812-3456-0001")  # national: +62
    assert CODE.fullmatch(pair_code.code) and pair_code.expires_in == PAIR_CODE_LIFETIME
    sim_of(sup).enter_pair_code(pair_code.code, PHONE)
    handle = sup.get("bot-a")
    assert handle is not None
    await connected(handle)
    record = await agents_store.get_agent(sup.db, "bot-a")
    assert record is not None and record.phone_number == PHONE
    assert record.device_jid is not None and record.device_jid.startswith(f"{PHONE}:")


async def test_a_connected_session_is_refused_and_bad_input_comes_first(
    sup: AgentSupervisor,
) -> None:
    """A connected session answers AlreadyConnected; a bad number is refused before the lookup."""
    await new_agent(sup, "bot-b")
    first = await request_pair_code(sup, "bot-b", PHONE)
    sim_of(sup).enter_pair_code(first.code, PHONE)
    handle = sup.get("bot-b")
    assert handle is not None
    await connected(handle)
    with pytest.raises(AlreadyConnected):
        await request_pair_code(sup, "bot-b", PHONE)
    with pytest.raises(NotConnected):
        await handle.pair_code(PHONE, timeout=5)  # the handle itself refuses as well
    with pytest.raises(InvalidRecipient):
        await request_pair_code(sup, "nobody", "12")
    for not_a_phone in ("120363025246125486@g.us", "200000000000002@lid"):
        with pytest.raises(InvalidRecipient):
            await request_pair_code(sup, "nobody", not_a_phone)
    with pytest.raises(SessionNotFound):
        await request_pair_code(sup, "nobody", PHONE)


async def test_a_failed_pairing_is_started_again_for_a_code(
    sup: AgentSupervisor, autojump_clock: trio.testing.MockClock
) -> None:
    """After the QR schedule ran out, asking for a code starts a fresh pairing."""
    await new_agent(sup, "bot-c")
    handle = await sup.start("bot-c")
    while not handle.terminal:
        await trio.sleep(10)
    # No deadline under the autojump clock: it would fire while a database thread runs.
    pair_code = await request_pair_code(sup, "bot-c", PHONE, wait=math.inf)
    sim_of(sup).enter_pair_code(pair_code.code, PHONE)
    fresh = sup.get("bot-c")
    assert fresh is not None and fresh is not handle
    await fresh.online.wait()


# --------------------------------------------------------------------------- /_sim/pair-code


async def test_sim_api_takes_the_code_typed_on_the_phone(running: Running) -> None:
    """POST /_sim/pair-code refuses a wrong code (409) and a bad body (400), links the right one."""
    client, gateway = running.client, running.gateway
    await agents_store.create_agent(
        gateway.db, agent_id="bot-h", name="bot-h", user_id="u1", api_key="k"
    )
    pair_code = await request_pair_code(gateway.agents, "bot-h", PHONE)
    r = await client.post("/_sim/pair-code", json={"code": "ZZZZ-ZZZY", "phone": PHONE})
    assert r.status_code == 409 and "wrong code" in r.json()["error"]["message"]
    r = await client.post("/_sim/pair-code", json={"code": pair_code.code, "phone": 628})
    assert r.status_code == 400 and r.json()["error"]["code"] == "INVALID_PAYLOAD"
    r = await client.post("/_sim/pair-code", json={"code": pair_code.code, "phone": PHONE})
    assert r.status_code == 200 and r.json()["data"]["phone"] == PHONE
    handle = gateway.agents.get("bot-h")
    assert handle is not None
    await connected(handle)


async def test_simnet_pairs_a_remote_agent_by_code(
    pg_dsn: str, tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Over a `gatewayd simnet` process, the daemon's remote client gets a code that links."""
    simnet = await start_simnet(nursery, tmp_path / "net.json")
    try:
        async with (
            gateway_on(pg_dsn, simnet.base_url) as gateway,
            httpx.AsyncClient(base_url=simnet.base_url) as sim,
        ):
            await agents_store.create_agent(
                gateway.db, agent_id="bot-r", name="bot-r", user_id="u1", api_key="k"
            )
            pair_code = await request_pair_code(gateway.agents, "bot-r", PHONE)
            assert CODE.fullmatch(pair_code.code)
            r = await sim.post("/_sim/pair-code", json={"code": "ZZZZ-ZZZY", "phone": PHONE})
            assert r.status_code == 409
            r = await sim.post("/_sim/pair-code", json={"code": pair_code.code, "phone": PHONE})
            assert r.status_code == 200, r.text
            with trio.fail_after(30):
                await wait_connected(gateway, "bot-r")
            # Saved before the answer, like a scanned device.
            assert f"{PHONE}:1@s.whatsapp.net" in (tmp_path / "net.json").read_text()
    finally:
        await stop(simnet)


# --------------------------------------------------------------------------- neonize, offline


@pytest.fixture
async def neonize_backend(pg_dsn: str) -> AsyncIterator[NeonizeBackend]:
    """A neonize backend on a fresh database (WhatsApp is unreachable from here)."""
    async with open_neonize_backend(pg_dsn, embedded=True) as opened:
        yield opened


async def test_neonize_pair_phone_fails_clearly_offline(neonize_backend: NeonizeBackend) -> None:
    """Without a pairing showing QR codes, neonize refuses at once; during an offline pairing
    attempt every request is refused and nothing hangs or crashes."""
    client = neonize_backend.client("agent-1")
    with pytest.raises(InvalidRecipient):
        await client.pair_phone("0812 3456 0001")
    with trio.fail_after(5):
        with pytest.raises(NotConnected, match="not waiting for a QR scan"):
            await client.pair_phone(PHONE)
    send, _receive = trio.open_memory_channel[ClientEvent](100)
    refused = 0
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            done = trio.Event()

            async def pair() -> None:
                try:
                    with pytest.raises(PairingError):
                        await client.pair(send)
                finally:
                    done.set()

            nursery.start_soon(pair)
            while not done.is_set():
                with pytest.raises(NotConnected):
                    await client.pair_phone(PHONE)
                refused += 1
                await trio.sleep(0.05)
    assert refused > 0
    with pytest.raises(NotConnected):
        await client.pair_phone(PHONE)  # the agent can be asked again, still cleanly


async def test_code_requests_reach_the_child_and_end_with_the_pairing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The parent writes one command line per request and takes the child's answer; a refusal,
    a silent child and an ended pairing each raise instead of hanging."""
    codes = CodeRequests()
    to_child, from_parent = trio.testing.memory_stream_one_way_pair()
    with pytest.raises(NotConnected):
        await codes.request(PHONE, timeout=5)  # no child shows a QR yet
    codes.attach(to_child)

    async def child_answers(message: dict[str, str]) -> dict[str, object]:
        line = await from_parent.receive_some()
        codes.answer(message)
        command: dict[str, object] = json.loads(line)
        return command

    async with trio.open_nursery() as nursery:
        commands: list[dict[str, object]] = []

        async def answer(message: dict[str, str]) -> None:
            commands.append(await child_answers(message))

        nursery.start_soon(answer, {"type": "pair_code", "code": "ABCD-EFGH"})
        assert await codes.request(PHONE, timeout=5) == "ABCD-EFGH"
    assert commands == [{"type": "pair_phone", "phone": PHONE}]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer, {"type": "pair_code_failed", "reason": "rate-overlimit"})
        with pytest.raises(WhatsAppError, match="rate-overlimit"):
            await codes.request(PHONE, timeout=5)
    with pytest.raises(WhatsAppError, match="within 5 s"):
        await codes.request(PHONE, timeout=5)  # the child never answers
    await from_parent.receive_some()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_detach_later, codes)
        with pytest.raises(NotConnected, match="pairing ended"):
            await codes.request(PHONE, timeout=60)
    with pytest.raises(NotConnected):
        await codes.request(PHONE, timeout=5)


async def _detach_later(codes: CodeRequests) -> None:
    await trio.sleep(1)
    codes.detach("no device")


def test_child_answers_a_refused_code_request_without_ending_the_pairing(tmp_path: Path) -> None:
    """Offline, whatsmeow's PairPhone fails: the child reports pair_code_failed and stays."""
    child = Child(tmp_path)  # a QR pairing: no phone given at start
    child.handlers.on_qr(child.nc, b"2@ref,keys")
    child.handlers.request_code(PHONE)  # the real call fails: nothing is connected
    ((phone, _notify, _name, _type),) = child.nc.pair_phone_calls
    assert phone == PHONE
    lines = child.lines()
    assert [line["type"] for line in lines] == ["qr", "pair_code_failed"]
    assert lines[-1]["reason"]
    assert child.exits == []  # the QR codes still work: the child goes on
