"""/api/v1 end to end against a daemon in sim mode: identity, both session families, sending,
the message log, tenancy (docs/contract/api-v1.md)."""

from __future__ import annotations

import base64
import re
from typing import Any

import httpx
import pytest
import trio

from tests.gateway_fixtures import Running


def basic(pin: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{pin}:".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def new_user(client: httpx.AsyncClient) -> tuple[str, str, str]:
    """(user_id, pin, token) of a fresh PIN user, logged in."""
    made = await client.post("/api/v1/auth/generate-pin")
    assert made.status_code == 201, made.text
    user_id, pin = made.json()["data"]["user_id"], made.json()["data"]["pin"]
    login = await client.post("/api/v1/auth/login", headers=basic(pin))
    assert login.status_code == 200, login.text
    return user_id, pin, login.json()["data"]["token"]


async def test_pin_login_and_logout(running: Running) -> None:
    """A PIN logs in to a token that works until logout, then is refused."""
    client = running.client
    user_id, pin, token = await new_user(client)
    assert re.fullmatch(r"[A-Z0-9]{6}", pin)
    listed = await client.get("/api/v1/sessions", headers=bearer(token))
    assert listed.status_code == 200 and listed.json() == {
        "success": True,
        "message": "Sessions retrieved successfully",
        "data": [],
    }
    assert listed.headers["RateLimit-Limit"] == "100"
    out = await client.post("/api/v1/auth/logout", headers=bearer(token))
    assert out.status_code == 200 and out.json()["success"] is True
    again = await client.get("/api/v1/sessions", headers=bearer(token))
    assert again.status_code == 401
    assert again.json()["success"] is False
    assert again.json()["error"]["code"] == "UNAUTHORIZED"
    wrong = await client.post(
        "/api/v1/auth/login", headers=basic("ZZZZZ9" if pin != "ZZZZZ9" else "ZZZZZ8")
    )
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "UNAUTHORIZED"


async def test_api_keys_created_listed_revoked(running: Running) -> None:
    """A key is shown once, listed without its secret, works by Bearer and X-API-Key, and is
    refused as soon as it is revoked."""
    client = running.client
    _, _, token = await new_user(client)
    made = await client.post("/api/v1/keys", json={"name": "ci"}, headers=bearer(token))
    assert made.status_code == 201, made.text
    key, key_id = made.json()["data"]["key"], made.json()["data"]["id"]
    assert key.startswith("gwd_")
    listed = (await client.get("/api/v1/keys", headers=bearer(token))).json()["data"]
    assert [k["id"] for k in listed] == [key_id]
    assert key not in str(listed)
    assert (await client.get("/api/v1/sessions", headers=bearer(key))).status_code == 200
    assert (await client.get("/api/v1/sessions", headers={"X-API-Key": key})).status_code == 200
    gone = await client.delete(f"/api/v1/keys/{key_id}", headers=bearer(token))
    assert gone.status_code == 200
    refused = await client.get("/api/v1/sessions", headers={"X-API-Key": key})
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "INVALID_API_KEY"


async def scan(client: httpx.AsyncClient, agent_id: str, phone: str) -> None:
    answer = await client.post(f"/_sim/agents/{agent_id}/scan", json={"phone": phone})
    assert answer.status_code == 200, answer.text


async def wait_connected(
    client: httpx.AsyncClient, session_id: str, headers: dict[str, str]
) -> dict[str, Any]:
    for _ in range(200):
        got = (await client.get(f"/api/v1/sessions/{session_id}", headers=headers)).json()["data"]
        if got["status"] == "connected":
            return dict(got)
        await trio.sleep(0.05)
    raise AssertionError(f"session {session_id} did not connect")


async def test_dashboard_session_walk(running: Running) -> None:
    """Create → start (QR data URL) → scan → connected → send → the message log lists it,
    with both the phone and LID forms of each party."""
    client = running.client
    _, _, token = await new_user(client)
    auth = bearer(token)
    made = await client.post(
        "/api/v1/sessions",
        json={"session_name": "Agent 1", "webhook_url": "https://n8n.example.com/hook"},
        headers=auth,
    )
    assert made.status_code == 201, made.text
    session = made.json()["data"]
    assert session["status"] == "disconnected" and session["qr_code"] is None
    session_id = session["session_id"]
    started = await client.post(f"/api/v1/sessions/{session_id}/start", headers=auth)
    assert started.status_code == 200, started.text
    assert started.json()["data"]["status"] == "qr"
    assert started.json()["data"]["qr_code"].startswith("data:image/png;base64,")
    qr = (await client.get(f"/api/v1/sessions/{session_id}/qr", headers=auth)).json()["data"]
    assert qr["status"] == "qr" and 0 < qr["expires_in"] <= 60
    await scan(client, session_id, "6281111111111")
    connected = await wait_connected(client, session_id, auth)
    assert connected["phone_number"] == "6281111111111"
    sent = await client.post(
        f"/api/v1/sessions/{session_id}/send",
        json={"to": "081234567890", "type": "text", "content": "Hello from API"},
        headers=auth,
    )
    assert sent.status_code == 200, sent.text
    assert sent.json()["data"]["status"] == "sent"
    inbound = await client.post(
        f"/_sim/agents/{session_id}/inject",
        json={"kind": "text", "from": "6289999999999", "text": "hi there", "pushName": "John"},
    )
    assert inbound.status_code == 200, inbound.text
    log = await client.get(f"/api/v1/sessions/{session_id}/messages", headers=auth)
    assert log.status_code == 200, log.text
    messages = log.json()["data"]["messages"]
    assert [m["direction"] for m in messages] == ["incoming", "outgoing"]
    incoming, outgoing = messages
    assert incoming["from"] == "6289999999999" and incoming["content"] == "hi there"
    assert incoming["to"] == "6281111111111"
    assert outgoing["to"] == "6281234567890" and outgoing["content"] == "Hello from API"
    assert outgoing["message_id"] == sent.json()["data"]["message_id"]
    only_out = await client.get(
        f"/api/v1/sessions/{session_id}/messages?direction=outgoing", headers=auth
    )
    assert [m["direction"] for m in only_out.json()["data"]["messages"]] == ["outgoing"]
    listed = (await client.get("/api/v1/sessions", headers=auth)).json()["data"]
    assert listed[0]["session_id"] == session_id and listed[0]["status"] == "connected"
    assert 0 <= listed[0]["uptime_percentage"] <= 100
    # The agents API sees the same agent.
    legacy = await client.get(f"/sessions/{session_id}")
    assert legacy.json()["data"]["status"] == "connected"
    deleted = await client.delete(f"/api/v1/sessions/{session_id}", headers=auth)
    assert deleted.status_code == 200
    gone = await client.get(f"/api/v1/sessions/{session_id}", headers=auth)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "SESSION_NOT_FOUND"


async def test_agent_family_walk(running: Running) -> None:
    """The agent family by agentId: create (QR data URL, waiting_scan), status, detail counts,
    text send, delete; agentId from the body or the query string."""
    client = running.client
    user_id, _, token = await new_user(client)
    auth = bearer(token)
    made = await client.post(
        "/api/v1/sessions/create",
        json={"userId": user_id, "agentId": "agent_456", "agentName": "CS Bot"},
        headers=auth,
    )
    assert made.status_code == 200, made.text
    data = made.json()["data"]
    assert data["status"] == "waiting_scan" and data["qrCode"].startswith("data:image/png;base64,")
    await scan(client, "agent_456", "6282222222222")
    for _ in range(200):
        status = await client.request(
            "GET", "/api/v1/sessions/status", json={"agentId": "agent_456"}, headers=auth
        )
        if status.json()["data"]["status"] == "connected":
            break
        await trio.sleep(0.05)
    assert status.json()["data"]["phoneNumber"] == "6282222222222"
    sent = await client.post(
        "/api/v1/messages/send",
        json={"agentId": "agent_456", "to": "628123456789", "message": "Hello", "type": "text"},
        headers=auth,
    )
    assert sent.status_code == 200, sent.text
    detail = await client.get("/api/v1/sessions/detail?agentId=agent_456", headers=auth)
    assert detail.status_code == 200, detail.text
    assert detail.json()["data"]["outgoingMessages"] == 1
    assert detail.json()["data"]["incomingMessages"] == 0
    assert detail.json()["data"]["sessionId"] == data["sessionId"]
    foreign = await client.post(
        "/api/v1/sessions/create",
        json={"userId": "somebody-else", "agentId": "agent_789"},
        headers=auth,
    )
    assert foreign.status_code == 403 and foreign.json()["error"]["code"] == "FORBIDDEN"
    missing = await client.request("DELETE", "/api/v1/sessions/delete", json={}, headers=auth)
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "INVALID_REQUEST"
    deleted = await client.request(
        "DELETE", "/api/v1/sessions/delete", json={"agentId": "agent_456"}, headers=auth
    )
    assert deleted.status_code == 200, deleted.text


async def test_other_tenant_sees_404_like_missing(running: Running) -> None:
    """Another user's session answers exactly as a missing one, by id and by agentId."""
    client = running.client
    _, _, alice = await new_user(client)
    _, _, bob = await new_user(client)
    made = await client.post(
        "/api/v1/sessions", json={"session_name": "Alice's"}, headers=bearer(alice)
    )
    session_id = made.json()["data"]["session_id"]
    theirs = await client.get(f"/api/v1/sessions/{session_id}", headers=bearer(bob))
    missing = await client.get(
        "/api/v1/sessions/00000000-0000-4000-8000-000000000000", headers=bearer(bob)
    )
    assert theirs.status_code == missing.status_code == 404
    strip = lambda body: {**body["error"], "traceId": None}  # noqa: E731
    assert strip(theirs.json()) == strip(missing.json())
    by_agent = await client.get(
        f"/api/v1/sessions/status?agentId={session_id}", headers=bearer(bob)
    )
    assert by_agent.status_code == 404
    listed = await client.get("/api/v1/sessions", headers=bearer(bob))
    assert listed.json()["data"] == []


@pytest.mark.parametrize("gateway_config", [{"auth": {"requests_per_minute": 3}}], indirect=True)
async def test_per_user_limit_answers_429_with_headers(running: Running) -> None:
    """Past the per-user budget: 429 RATE_LIMIT_EXCEEDED with Retry-After and RateLimit-*."""
    client = running.client
    _, _, token = await new_user(client)
    answers = [await client.get("/api/v1/sessions", headers=bearer(token)) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    refused = answers[-1]
    assert refused.json()["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["RateLimit-Limit"] == "3"
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert int(refused.headers["RateLimit-Reset"]) >= 1


async def test_pair_code_links_a_session_in_both_dialects(running: Running) -> None:
    """POST /sessions/{agentId}/pair-code and /api/v1/sessions/{id}/pair-code answer a code;
    typed on the phone, it links the session, which then connects."""
    client = running.client
    made = await client.post(
        "/sessions", json={"userId": "u-pair", "agentId": "pair-bot", "apikey": "K-pair"}
    )
    assert made.status_code == 201, made.text
    root = await client.post("/sessions/pair-bot/pair-code", json={"phone": "081333333333"})
    assert root.status_code == 200, root.text
    code = root.json()["data"]["pairCode"]
    assert re.fullmatch(r"[A-Z0-9]{4}-[A-Z0-9]{4}", code)
    typed = await client.post("/_sim/pair-code", json={"code": code, "phone": "6281333333333"})
    assert typed.status_code == 200, typed.text
    for _ in range(200):
        state = (await client.get("/sessions/pair-bot")).json()["data"]
        if state["status"] == "connected":
            break
        await trio.sleep(0.05)
    assert state["phoneNumber"] == "6281333333333"

    _, _, token = await new_user(client)
    session = await client.post(
        "/api/v1/sessions", json={"session_name": "by code"}, headers=bearer(token)
    )
    session_id = session.json()["data"]["session_id"]
    v1 = await client.post(
        f"/api/v1/sessions/{session_id}/pair-code",
        json={"phone": "6281444444444"},
        headers=bearer(token),
    )
    assert v1.status_code == 200, v1.text
    assert 0 < v1.json()["data"]["expires_in"] <= 120
    typed = await client.post(
        "/_sim/pair-code", json={"code": v1.json()["data"]["pair_code"], "phone": "6281444444444"}
    )
    assert typed.status_code == 200, typed.text
    connected = await wait_connected(client, session_id, bearer(token))
    assert connected["phone_number"] == "6281444444444"
    again = await client.post(
        f"/api/v1/sessions/{session_id}/pair-code",
        json={"phone": "6281444444444"},
        headers=bearer(token),
    )
    assert again.status_code == 409, again.text
