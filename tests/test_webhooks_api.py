"""The webhook settings and deliveries of /api/v1 (docs/contract/api-v1.md §12): the secret shown
once and rotatable, custom headers kept secret, events opt-in, the guard at save time, the
deliveries list, replay and the test event — through HTTP, verified with ``standardwebhooks``."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from gatewayd.config import Config
from tests.gateway_fixtures import Running, make_config
from tests.test_api_v1 import bearer, new_user, scan, wait_connected
from tests.test_webhooks import FAST, Receiver, receiver, until, verify

__all__ = ["receiver"]  # a fixture, used by name


@pytest.fixture
async def gateway_config(pg_dsn: str, request: pytest.FixtureRequest) -> Config:
    """Quick webhook schedules (dead after a second) and room for polling the API."""
    sections: dict[str, dict[str, Any]] = {
        "webhooks": {**FAST, "max_age": 1.0},
        "forwarding": {"enabled": False},
        "auth": {"requests_per_minute": 10_000},
    }
    for name, values in getattr(request, "param", {}).items():
        sections[name] = {**sections.get(name, {}), **values}
    return make_config(pg_dsn, **sections)


async def dashboard_session(running: Running, token: str, **body: Any) -> dict[str, Any]:
    made = await running.client.post(
        "/api/v1/sessions", json={"session_name": "hooks", **body}, headers=bearer(token)
    )
    assert made.status_code == 201, made.text
    return dict(made.json()["data"])


async def test_settings_secret_headers_and_events(running: Running, receiver: Receiver) -> None:
    """Setting a URL answers its signing secret once; GET shows events and masked headers but
    no secret; rotating answers a new one, and deliveries are signed with it."""
    client = running.client
    _, _, token = await new_user(client)
    auth = bearer(token)
    session = await dashboard_session(running, token, webhook_url=f"{receiver.url}/a")
    first_secret = session["webhook_secret"]
    assert first_secret.startswith("whsec_")
    assert session["webhook_events"] == ["message.received"]
    session_id = session["session_id"]

    changed = await client.put(
        f"/api/v1/sessions/{session_id}",
        json={
            "webhook_events": ["message.received", "session.status"],
            "webhook_headers": {"X-N8N-Auth": "s3cret-header"},
        },
        headers=auth,
    )
    assert changed.status_code == 200, changed.text
    data = changed.json()["data"]
    assert "webhook_secret" not in data  # unchanged: not shown again
    assert data["webhook_headers"] == {"X-N8N-Auth": "***"}
    shown = (await client.get(f"/api/v1/sessions/{session_id}", headers=auth)).json()["data"]
    assert "webhook_secret" not in shown and "s3cret-header" not in json.dumps(shown)
    assert shown["webhook_events"] == ["message.received", "session.status"]

    rotated = await client.put(
        f"/api/v1/sessions/{session_id}", json={"rotate_webhook_secret": True}, headers=auth
    )
    new_secret = rotated.json()["data"]["webhook_secret"]
    assert new_secret != first_secret

    await client.post(f"/api/v1/sessions/{session_id}/start", headers=auth)
    await scan(client, session_id, "6281555555555")
    await wait_connected(client, session_id, auth)
    await until(lambda: any(p == "a" for p, _, _ in receiver.requests))
    headers, body = receiver.of("a")[-1]
    assert verify(new_secret, headers, body)["event"] == "session.status"
    assert headers["x-n8n-auth"] == "s3cret-header"


@pytest.mark.parametrize(
    "gateway_config", [{"webhooks": {**FAST, "allow_private_urls": False}}], indirect=True
)
async def test_a_private_webhook_url_is_refused_when_saved(running: Running) -> None:
    """A webhook URL that resolves to a loopback address is a 400 at save time."""
    _, _, token = await new_user(running.client)
    made = await running.client.post(
        "/api/v1/sessions",
        json={"session_name": "x", "webhook_url": "http://127.0.0.1:9/hook"},
        headers=bearer(token),
    )
    assert made.status_code == 400, made.text
    assert made.json()["error"]["code"] == "INVALID_REQUEST"


async def test_deliveries_listed_replayed_and_tested(running: Running, receiver: Receiver) -> None:
    """The test event is delivered and listed with its tries; a failing delivery is listed as
    failed with its status code, and replay sends it again once the receiver is back."""
    client = running.client
    _, _, token = await new_user(client)
    auth = bearer(token)
    session = await dashboard_session(running, token, webhook_url=f"{receiver.url}/b")
    session_id = session["session_id"]
    queued = await client.post(f"/api/v1/sessions/{session_id}/webhook/test", headers=auth)
    assert queued.status_code == 202, queued.text
    await until(lambda: bool(receiver.delivered("b")))
    assert receiver.delivered("b")[0]["event"] == "webhook.test"

    async def listed(status: str | None = None) -> list[dict[str, Any]]:
        query = f"?status={status}" if status else ""
        got = await client.get(
            f"/api/v1/sessions/{session_id}/webhook/deliveries{query}", headers=auth
        )
        assert got.status_code == 200, got.text
        return list(got.json()["data"]["deliveries"])

    with trio.fail_after(10):
        while not [d for d in await listed("delivered") if d["event"] == "webhook.test"]:
            await trio.sleep(0.05)

    receiver.modes["b"] = "fail"
    await client.post(f"/api/v1/sessions/{session_id}/webhook/test", headers=auth)
    with trio.fail_after(15):
        while not (dead := await listed("dead")):
            await trio.sleep(0.05)
    assert dead[0]["last_status_code"] == 500 and dead[0]["attempts"] >= 2
    receiver.modes["b"] = "ok"
    before = len(receiver.delivered("b"))
    replayed = await client.post(
        f"/api/v1/sessions/{session_id}/webhook/deliveries/{dead[0]['delivery_id']}/replay",
        headers=auth,
    )
    assert replayed.status_code == 200, replayed.text
    await until(lambda: len(receiver.delivered("b")) > before)
    ids = {h["webhook-id"] for h, _ in receiver.of("b")}
    assert dead[0]["webhook_id"] in ids  # the same id across tries and the replay
    bad = await client.get(
        f"/api/v1/sessions/{session_id}/webhook/deliveries?status=nope", headers=auth
    )
    assert bad.status_code == 400
    missing = await client.post(
        f"/api/v1/sessions/{session_id}/webhook/deliveries/999999/replay", headers=auth
    )
    assert missing.status_code == 404


@pytest.mark.parametrize(
    "gateway_config",
    [{"webhooks": {**FAST, "max_retries": 1, "schedule": [600.0], "max_age": 86400.0}}],
    indirect=True,
)
async def test_a_receiver_back_after_a_long_outage_gets_the_backlog_at_once(
    running: Running, receiver: Receiver
) -> None:
    """Deliveries waiting on the long schedule (ten minutes here) go as soon as the receiver
    answers one again, not when their next try falls due."""
    client = running.client
    _, _, token = await new_user(client)
    auth = bearer(token)
    session = await dashboard_session(running, token, webhook_url=f"{receiver.url}/c")
    session_id = session["session_id"]
    receiver.modes["c"] = "fail"
    for _ in range(3):
        await client.post(f"/api/v1/sessions/{session_id}/webhook/test", headers=auth)

    async def failed() -> list[dict[str, Any]]:
        got = await client.get(
            f"/api/v1/sessions/{session_id}/webhook/deliveries?status=failed", headers=auth
        )
        return list(got.json()["data"]["deliveries"])

    with trio.fail_after(10):
        while len(await failed()) < 3 or len(receiver.of("c")) < 6:
            await trio.sleep(0.05)
    waiting = await failed()
    assert all(d["attempts"] == 2 for d in waiting)  # the quick tries are spent: 600 s ahead
    receiver.modes["c"] = "ok"
    await client.post(f"/api/v1/sessions/{session_id}/webhook/test", headers=auth)
    backlog = {d["webhook_id"] for d in waiting}
    with trio.fail_after(10):
        while not backlog <= receiver.ok_ids:
            await trio.sleep(0.05)
    assert await failed() == []
