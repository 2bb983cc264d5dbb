"""The webhook outbox (docs/contract/api-v1.md §12): payload, filtering, signatures checked
by an independent implementation (``standardwebhooks``), retries against real loopback
receivers that fail, stall and recover, dead letters and replay, opt-in events."""

from __future__ import annotations

import json
import uuid
from typing import Any

import attrs
import pytest
import standardwebhooks
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gatewayd.config import Config, WebhooksConfig
from gatewayd.nursery.webhooks import next_delay, refresh_webhook
from gatewayd.store import agents as agents_store
from gatewayd.store import messages as messages_store
from gatewayd.store import webhooks as webhooks_store
from gatewayd.store.db import Database
from gatewayd.store.messages import NewInbound
from gatewayd.store.webhooks import NewDelivery
from gatewayd.usecases.webhooks import enqueue_test, new_webhook_secret
from gatewayd.whatsapp.port import InboundMessage
from tests.gateway_fixtures import Running, make_config
from tests.loopback import serve_app
from tests.test_agents_api import connect, sim_of

CUSTOMER = "6281111111111"
GROUP = "120363000000000001@g.us"
ME = "628123450001"


@attrs.define
class Receiver:
    """A webhook receiver on loopback: each path answers as its mode says (``ok``: 200,
    ``fail``: 500, ``stall``: never); every request is kept."""

    url: str = ""
    modes: dict[str, str] = attrs.field(factory=dict)
    requests: list[tuple[str, dict[str, str], bytes]] = attrs.field(factory=list)
    stalled: int = 0
    #: The webhook-ids of the requests answered 200.
    ok_ids: set[str] = attrs.field(factory=set)

    def answered_ok(self, headers: dict[str, str]) -> bool:
        return headers.get("webhook-id") in self.ok_ids

    async def handle(self, request: Request) -> Response:
        path = request.path_params["path"]
        body = await request.body()
        self.requests.append((path, dict(request.headers), body))
        mode = self.modes.get(path, "ok")
        if mode == "ok":
            self.ok_ids.add(request.headers.get("webhook-id", ""))
        if mode == "stall":
            self.stalled += 1
            await trio.sleep_forever()
        if mode == "fail":
            return JSONResponse({"error": "down"}, status_code=500)
        return JSONResponse({"ok": True})

    def delivered(self, path: str) -> list[dict[str, Any]]:
        return [json.loads(body) for p, _, body in self.requests if p == path]

    def of(self, path: str) -> list[tuple[dict[str, str], bytes]]:
        return [(headers, body) for p, headers, body in self.requests if p == path]


@pytest.fixture
async def receiver(nursery: trio.Nursery) -> Receiver:
    r = Receiver()
    app = Starlette(routes=[Route("/{path:path}", r.handle, methods=["POST"])])
    r.url = await serve_app(nursery, app)
    return r


FAST = {
    "timeout": 0.5,
    "retry_backoff": 0.05,
    "max_retries": 2,
    "schedule": [0.1],
    "poll_interval": 0.05,
    "allow_private_urls": True,
}


@pytest.fixture
async def gateway_config(pg_dsn: str, request: pytest.FixtureRequest) -> Config:
    sections = {"webhooks": FAST, "forwarding": {"enabled": False}}
    for name, values in getattr(request, "param", {}).items():
        sections[name] = {**sections.get(name, {}), **values}
    return make_config(pg_dsn, **sections)


async def set_webhook(
    running: Running,
    agent_id: str,
    url: str | None,
    *,
    events: list[str] | None = None,
    headers: dict[str, str] | None = None,
) -> str:
    """Point the session's webhook at ``url`` (as the settings route will); its secret."""
    secret = new_webhook_secret()
    db = running.gateway.db
    await db.run(
        lambda conn: conn.execute(
            "UPDATE agents SET webhook_url = %s, webhook_secret = %s, webhook_events = %s,"
            " webhook_headers = %s WHERE agent_id = %s",
            (url, secret, events or ["message.received"], json.dumps(headers or {}), agent_id),
        )
    )
    await refresh_webhook(db, running.gateway.agents.get(agent_id))
    return secret


async def until(predicate: Any, timeout: float = 15) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


def verify(secret: str, headers: dict[str, str], body: bytes) -> Any:
    """Checked by the ``standardwebhooks`` package, not by our code."""
    return standardwebhooks.Webhook(secret).verify(body, headers)


# --------------------------------------------------------------------------- the schedule


def test_schedule_is_quick_tries_then_the_long_schedule_until_max_age() -> None:
    """After tries 1..3: 1, 2, 4 s; then the long schedule, its last value repeating; the
    last try falls on max_age, after it the delivery is dead."""
    cfg = WebhooksConfig()
    delays = [next_delay(n, 0.0, cfg) for n in range(1, 10)]
    assert delays == [1.0, 2.0, 4.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 3600.0]
    assert next_delay(9, cfg.max_age - 100, cfg) == 100
    assert next_delay(9, cfg.max_age, cfg) is None
    legacy = Config.from_mapping(
        {},
        {
            "WEBHOOK_TIMEOUT_SECONDS": "5",
            "WEBHOOK_MAX_RETRIES": "1",
            "WEBHOOK_RETRY_BACKOFF_SECONDS": "3",
        },
    ).webhooks
    assert (legacy.timeout, legacy.max_retries, legacy.retry_backoff) == (5.0, 1, 3.0)
    assert [next_delay(n, 0.0, legacy) for n in (1, 2)] == [3.0, 60.0]


# --------------------------------------------------------------------------- the store


async def new_agent(
    db: Database, agent_id: str, url: str | None = "http://x.example/"
) -> uuid.UUID:
    record = await agents_store.create_agent(
        db, agent_id=agent_id, name=agent_id, user_id="u1", api_key="k", webhook_url=url
    )
    return record.id


def inbound(n: int) -> InboundMessage:
    return InboundMessage(
        id=f"WA{n}", chat=f"{CUSTOMER}@s.whatsapp.net", sender=f"{CUSTOMER}@s.whatsapp.net",
        timestamp_ms=1_700_000_000_000, text=f"m{n}",
    )  # fmt: skip


async def test_delivery_is_written_with_its_message_and_never_twice(database: Database) -> None:
    """The delivery row is committed with the message; a redelivered message adds none."""
    agent = await new_agent(database, "a")
    item = NewInbound(agent, inbound(1), webhook=NewDelivery("message.received", {"n": 1}))
    first = await messages_store.insert_inbound_batch(database, [item])
    again = await messages_store.insert_inbound_batch(database, [item])
    assert first[0] is not None and again == [None]
    rows = await webhooks_store.list_deliveries(database, agent)
    assert [(r.event, r.status, r.wa_message_id) for r in rows] == [
        ("message.received", "pending", "WA1")
    ]


async def test_claims_skip_locked_rows_respect_per_session_and_lease(database: Database) -> None:
    """A claimed row is not claimed again until its lease has passed; a session never has
    more than per_session in flight, so another session's rows are claimed beside it."""
    a, b = await new_agent(database, "a"), await new_agent(database, "b")
    for n in range(5):
        await webhooks_store.enqueue(database, a, NewDelivery("x", {"n": n}))
    await webhooks_store.enqueue(database, b, NewDelivery("x", {"n": 9}))
    claim = {"limit": 10, "per_session": 2, "lease": 0.3}
    first = await webhooks_store.claim_due(database, busy={}, **claim)  # type: ignore[arg-type]
    assert sorted(str(c.agent_id) for c in first) == sorted([str(a), str(a), str(b)])
    busy = {a: 2, b: 1}
    assert await webhooks_store.claim_due(database, busy=busy, **claim) == []  # type: ignore[arg-type]
    await trio.sleep(0.4)  # the lease passes: as if the worker had died
    again = await webhooks_store.claim_due(database, busy={}, **claim)  # type: ignore[arg-type]
    assert {c.id for c in first} <= {c.id for c in again}
    assert all(c.attempts == 2 for c in again if c.id in {f.id for f in first})


# --------------------------------------------------------------------------- end to end


async def test_message_received_payload_filtering_and_signature(
    running: Running, receiver: Receiver
) -> None:
    """A private text, a media message and a group mention are delivered in the §12.2 shape,
    signed so that standardwebhooks verifies them, with the session's own headers (which
    never replace the signature); status, channel and unmentioned group messages are not."""
    await connect(running, phone=ME)
    secret = await set_webhook(
        running,
        "support-bot",
        f"{receiver.url}/hook",
        headers={"X-Api-Key": "n8n", "webhook-signature": "forged"},
    )
    sim = sim_of(running)
    text = sim.inject_text("support-bot", CUSTOMER, "halo", push_name="John")
    sim.inject_status("support-bot", CUSTOMER, "my story")
    sim.inject_newsletter("support-bot", "120363999@newsletter", "news")
    sim.inject_text("support-bot", CUSTOMER, "hi all", group=GROUP)
    media = sim.inject_media("support-bot", "image", CUSTOMER, caption="look")
    mention = sim.inject_text(
        "support-bot", CUSTOMER, "@bot hi", group=GROUP, mentions=[f"{ME}@s.whatsapp.net"]
    )
    await until(lambda: len(receiver.of("hook")) >= 3)
    await trio.sleep(0.3)  # nothing else follows
    got = receiver.of("hook")
    assert len(got) == 3
    payloads = []
    for headers, body in got:
        payloads.append(verify(secret, headers, body))
        assert headers["x-api-key"] == "n8n"
        assert headers["webhook-signature"] != "forged"
    by_id = {p["message"]["id"]: p for p in payloads}
    assert set(by_id) == {text.id, media.id, mention.id}
    first = by_id[text.id]
    record = running.gateway.agents.get("support-bot")
    assert record is not None
    assert first["event"] == "message.received"
    assert first["session_id"] == str(record.id) and first["session_name"] == "Support-Bot"
    assert first["timestamp"].endswith("Z")
    assert first["message"].pop("from_lid") == (text.sender_lid or "").partition("@")[0] or None
    assert first["message"] == {
        "id": text.id, "from": CUSTOMER, "from_name": "John", "to": ME,
        "type": "text", "content": "halo", "media_url": None, "is_group": False,
        "group_id": None, "group_name": None, "is_mention": False, "quoted_message": None,
    }  # fmt: skip
    assert by_id[media.id]["message"]["type"] == "image"
    assert by_id[media.id]["message"]["content"] == "look"
    group = by_id[mention.id]["message"]
    assert group["is_group"] and group["is_mention"] and group["group_id"] == GROUP.split("@")[0]


async def test_failing_receiver_is_retried_with_one_webhook_id_until_it_recovers(
    running: Running, receiver: Receiver
) -> None:
    """A receiver answering 500 gets the quick tries, then the long schedule, all with the
    same webhook-id; once it recovers the delivery succeeds and every try is recorded."""
    await connect(running, phone=ME)
    receiver.modes["down"] = "fail"
    await set_webhook(running, "support-bot", f"{receiver.url}/down")
    sim_of(running).inject_text("support-bot", CUSTOMER, "are you there")
    await until(lambda: len(receiver.of("down")) >= 5)
    receiver.modes["down"] = "ok"
    db = running.gateway.db
    record = running.gateway.agents.get("support-bot")
    assert record is not None

    async def status() -> str:
        rows = await webhooks_store.list_deliveries(db, record.id)
        return rows[0].status

    with trio.fail_after(10):
        while await status() != "delivered":
            await trio.sleep(0.05)
    ids = {headers["webhook-id"] for headers, _ in receiver.of("down")}
    assert len(ids) == 1 and ids.pop().startswith("msg_")
    rows = await webhooks_store.list_deliveries(db, record.id)
    tries = await webhooks_store.attempts_of(db, rows[0].id)
    assert [t["success"] for t in tries] == [False] * (len(tries) - 1) + [True]
    assert all(t["status_code"] == 500 for t in tries[:-1])
    assert rows[0].attempts == len(tries) and rows[0].last_status_code == 200
    stats = await webhooks_store.daily_stats(db, record.id)
    assert stats[0].successes == 1 and stats[0].failures == len(tries) - 1


async def test_a_stalled_receiver_never_delays_another_session(
    running: Running, receiver: Receiver
) -> None:
    """While one session's receiver never answers (tries time out and are recorded so),
    another session's deliveries all arrive."""
    await connect(running, phone=ME)
    await connect(running, agent_id="other-bot", phone="628123450002", key="K2")
    receiver.modes["stall"] = "stall"
    await set_webhook(running, "support-bot", f"{receiver.url}/stall")
    await set_webhook(running, "other-bot", f"{receiver.url}/fine")
    sim = sim_of(running)
    for n in range(10):
        sim.inject_text("support-bot", CUSTOMER, f"s{n}")
    await until(lambda: receiver.stalled >= 4)
    for n in range(10):
        sim.inject_text("other-bot", CUSTOMER, f"f{n}")
    await until(lambda: len(receiver.of("fine")) == 10)
    assert not any(s == "delivered" for s in await statuses(running, "support-bot"))
    await until(lambda: receiver.stalled >= 8)  # the first tries timed out and were retried
    record = running.gateway.agents.get("support-bot")
    assert record is not None
    rows = await webhooks_store.list_deliveries(running.gateway.db, record.id)
    errors = {r.last_error for r in rows if r.last_error}
    assert errors == {"no answer within 0.5 s"}


async def statuses(running: Running, agent_id: str) -> list[str]:
    handle = running.gateway.agents.get(agent_id)
    assert handle is not None
    return [r.status for r in await webhooks_store.list_deliveries(running.gateway.db, handle.id)]


@pytest.mark.parametrize(
    "gateway_config", [{"webhooks": {"max_age": 0.5, "allow_private_urls": False}}], indirect=True
)
async def test_refused_address_is_a_failed_try_then_dead_then_replayable(
    running: Running, receiver: Receiver
) -> None:
    """A loopback URL with private addresses refused: each try is recorded as refused (no
    request is made, nothing crashes), the delivery is dead once max_age has passed, and a
    replay makes it due again."""
    await connect(running, phone=ME)
    await set_webhook(running, "support-bot", f"{receiver.url}/guarded")
    sim_of(running).inject_text("support-bot", CUSTOMER, "hi")
    with trio.fail_after(10):
        while await statuses(running, "support-bot") != ["dead"]:
            await trio.sleep(0.05)
    assert receiver.of("guarded") == []
    handle = running.gateway.agents.get("support-bot")
    assert handle is not None
    db = running.gateway.db
    [row] = await webhooks_store.list_deliveries(db, handle.id, status="dead")
    assert "loopback" in (row.last_error or "") and row.attempts >= 2
    assert await webhooks_store.replay(db, handle.id, row.id)
    assert not await webhooks_store.replay(db, uuid.uuid4(), row.id)  # another session's
    running.gateway.services.webhooks.wake()  # as the replay route does
    with trio.fail_after(10):
        while await statuses(running, "support-bot") != ["dead"]:
            await trio.sleep(0.05)
    tries = await webhooks_store.attempts_of(db, row.id)
    assert len(tries) > row.attempts  # the replay tried again
    assert running.gateway.agents.get("support-bot") is not None  # the agent still runs


async def test_opt_in_events_and_the_test_event(running: Running, receiver: Receiver) -> None:
    """A session subscribed to session.status, message.sent and message.ack gets them in
    the same envelope, and no message.received; webhook.test is delivered whatever the
    subscription."""
    await connect(running, phone=ME)
    await set_webhook(
        running,
        "support-bot",
        f"{receiver.url}/events",
        events=["session.status", "message.sent", "message.ack"],
    )
    r = await running.client.post(
        "/agents/support-bot/messages",
        json={"to": CUSTOMER, "message": "Halo"},
        headers={"Authorization": "Bearer API_KEY"},
    )
    assert r.status_code == 200, r.text
    sent_id = r.json()["data"]["messageId"]
    sim = sim_of(running)
    sim.inject_receipt("support-bot", f"{CUSTOMER}@s.whatsapp.net", [sent_id], type="read")
    sim.inject_text("support-bot", CUSTOMER, "not subscribed")
    await running.gateway.agents.restart("support-bot")
    handle = running.gateway.agents.get("support-bot")
    assert handle is not None
    await enqueue_test(running.gateway.db, handle.record)
    running.gateway.agents.webhooks.wake()
    await until(lambda: {"webhook.test", "message.ack"} <= events(receiver))
    await until(lambda: any(p.get("session", {}).get("status") == "connected"
                            for p in receiver.delivered("events")))  # fmt: skip
    assert "message.received" not in events(receiver)
    by_event = {p["event"]: p for p in receiver.delivered("events")}
    assert by_event["message.sent"]["message"]["id"] == sent_id
    assert by_event["message.sent"]["message"]["to"] == CUSTOMER
    assert by_event["message.ack"]["ack"] == {
        "type": "read", "chat": CUSTOMER, "message_ids": [sent_id]
    }  # fmt: skip
    for payload in receiver.delivered("events"):
        assert payload["session_id"] == str(handle.id) and "timestamp" in payload


def events(receiver: Receiver) -> set[str]:
    return {p["event"] for p in receiver.delivered("events")}
