"""Live events over WebSocket (docs/contract/api-v1.md §11), with a real WebSocket client
(trio-websocket) against the real server (hypercorn on 127.0.0.1) of a daemon in sim mode."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    wrap_client_stream,
)

from gatewayd.nursery.bus import BusEvent
from tests.gateway_fixtures import Running
from tests.test_api_v1 import bearer, new_user, scan

AGENT_PHONE = "6281111111111"
CUSTOMER = "6289999999999"
GROUP = "120363000000000001@g.us"


@asynccontextmanager
async def open_ws(
    url: str, subprotocols: list[str] | None = None, *, receive_buffer: int | None = None
) -> AsyncIterator[WebSocketConnection]:
    """A trio-websocket client on a TCP stream of the test's own, closed on the way out
    (trio-websocket leaves its stream open when the server closed first).

    ``receive_buffer``: a small socket receive buffer, so a backlog stays on the server."""
    host, port, resource = _parts(url)
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    stream = trio.SocketStream(sock)
    try:
        await sock.connect((host, port))
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(
                nursery, stream, host, resource, subprotocols=subprotocols
            )
            try:
                yield ws
            finally:
                with trio.move_on_after(5) as cleanup:
                    cleanup.shield = True
                    await ws.aclose()
    finally:
        await stream.aclose()


def _parts(url: str) -> tuple[str, int, str]:
    found = re.fullmatch(r"ws://([^:/]+):(\d+)(/.*)", url)
    assert found is not None
    return found.group(1), int(found.group(2)), found.group(3)


def ws_base(running: Running) -> str:
    """The daemon's ws:// base URL (its app serves the WebSocket routes)."""
    return running.base_url.replace("http://", "ws://")


async def receive(ws: WebSocketConnection, timeout: float = 10.0) -> dict[str, Any]:
    with trio.fail_after(timeout):
        message = await ws.get_message()
    return dict(json.loads(message))


async def receive_until(
    ws: WebSocketConnection, kind: str, check: Any = None, timeout: float = 10.0
) -> dict[str, Any]:
    """The first frame of ``kind`` (that passes ``check``), skipping pings and others."""
    with trio.fail_after(timeout):
        while True:
            frame = await receive(ws, timeout)
            if frame["type"] == kind and (check is None or check(frame)):
                return frame


async def close_code(ws: WebSocketConnection, timeout: float = 10.0) -> int | None:
    """The code the server closed with (frames before the close are skipped)."""
    with trio.fail_after(timeout):
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed as closed:
            return closed.reason.code


async def started_session(running: Running, token: str, name: str = "Agent 1") -> str:
    client = running.client
    made = await client.post("/api/v1/sessions", json={"session_name": name}, headers=bearer(token))
    assert made.status_code == 201, made.text
    session_id = str(made.json()["data"]["session_id"])
    started = await client.post(f"/api/v1/sessions/{session_id}/start", headers=bearer(token))
    assert started.status_code == 200, started.text
    return session_id


async def started_session_only(running: Running, token: str) -> str:
    made = await running.client.post(
        "/api/v1/sessions", json={"session_name": "Idle"}, headers=bearer(token)
    )
    assert made.status_code == 201, made.text
    return str(made.json()["data"]["session_id"])


async def connected_session(running: Running, token: str, phone: str = AGENT_PHONE) -> str:
    session_id = await started_session(running, token)
    await scan(running.client, session_id, phone)
    for _ in range(200):
        got = await running.client.get(f"/api/v1/sessions/{session_id}", headers=bearer(token))
        if got.json()["data"]["status"] == "connected":
            return session_id
        await trio.sleep(0.05)
    raise AssertionError("the session did not connect")


async def gauge(running: Running) -> float:
    text = (await running.client.get("/metrics")).text
    found = re.search(r"^gatewayd_websocket_connections (\S+)$", text, re.MULTILINE)
    assert found is not None
    return float(found.group(1))


async def test_query_token_gets_state_then_qr_and_status_updates(
    running: Running, nursery: trio.Nursery
) -> None:
    """A ?token= client gets the status and the showing QR first, then connected on a scan."""
    base = ws_base(running)
    _, _, token = await new_user(running.client)
    session_id = await started_session(running, token)
    async with open_ws(f"{base}/ws/sessions/{session_id}?token={token}") as ws:
        first = await receive(ws)
        assert first["type"] == "status_update" and first["session_id"] == session_id
        assert first["data"]["status"] == "qr" and first["data"]["status_detail"] == "awaiting_qr"
        assert first["timestamp"].endswith("Z")
        qr = await receive(ws)
        assert qr["type"] == "qr_update"
        assert qr["data"]["qr_code"].startswith("data:image/png;base64,")
        assert 0 < qr["data"]["expires_in"] <= 60
        await scan(running.client, session_id, AGENT_PHONE)
        connected = await receive_until(
            ws, "status_update", lambda f: f["data"]["status"] == "connected"
        )
        assert connected["data"]["phone_number"] == AGENT_PHONE
        assert connected["data"]["device_info"] is not None


async def test_subprotocol_credential_is_accepted_and_echoed(
    running: Running, nursery: trio.Nursery
) -> None:
    """The credential may come as a Sec-WebSocket-Protocol value; the chosen one is echoed."""
    base = ws_base(running)
    _, _, token = await new_user(running.client)
    key = await running.client.post("/api/v1/keys", json={"name": "ws"}, headers=bearer(token))
    api_key = key.json()["data"]["key"]
    session_id = await connected_session(running, token)
    url = f"{base}/ws/sessions/{session_id}"
    async with open_ws(url, subprotocols=["bearer", token]) as ws:
        assert ws.subprotocol == "bearer"
        first = await receive(ws)
        assert first["type"] == "status_update" and first["data"]["status"] == "connected"
    async with open_ws(url, subprotocols=[api_key]) as ws:
        assert ws.subprotocol == api_key
        assert (await receive(ws))["data"]["phone_number"] == AGENT_PHONE


async def test_inbound_message_is_pushed_with_mentions_and_quote(
    running: Running, nursery: trio.Nursery
) -> None:
    """An injected group message arrives as message_received with its mention and quote."""
    base = ws_base(running)
    _, _, token = await new_user(running.client)
    session_id = await connected_session(running, token)
    async with open_ws(f"{base}/ws/sessions/{session_id}?token={token}") as ws:
        await receive_until(ws, "status_update")
        injected = await running.client.post(
            f"/_sim/agents/{session_id}/inject",
            json={
                "kind": "text",
                "from": CUSTOMER,
                "group": GROUP,
                "text": f"@{AGENT_PHONE} is the blue one in stock?",
                "mentions": [AGENT_PHONE],
                "pushName": "John",
                "quote": {
                    "id": "3EB0ORIG",
                    "sender": f"{AGENT_PHONE}@s.whatsapp.net",
                    "chat": GROUP,
                    "text": "Hi",
                },
            },
        )
        assert injected.status_code == 200, injected.text
        got = await receive_until(ws, "message_received")
        data = got["data"]
        assert data["message_id"] == injected.json()["data"]["id"]
        assert data["from"] == CUSTOMER and data["from_name"] == "John"
        assert data["type"] == "text" and data["content"].endswith("in stock?")
        assert data["is_mention"] is True and data["mentioned_numbers"] == [AGENT_PHONE]
        assert data["is_group"] is True and data["group_id"] == GROUP.partition("@")[0]
        assert data["quoted_message"] == {
            "id": "3EB0ORIG",
            "from": AGENT_PHONE,
            "content": "Hi",
            "type": "text",
        }
        assert got["timestamp"].endswith("Z")
        await running.client.post(
            f"/_sim/agents/{session_id}/inject",
            json={"kind": "text", "from": CUSTOMER, "text": "private hello"},
        )
        private = (await receive_until(ws, "message_received"))["data"]
        assert private["content"] == "private hello"
        assert private["is_mention"] is False and private["quoted_message"] is None


async def test_other_tenant_unknown_session_and_bad_tokens_are_refused(
    running: Running, nursery: trio.Nursery
) -> None:
    """Another user's session and an unknown one close 4404; a bad or missing token 4401."""
    base = ws_base(running)
    _, _, owner = await new_user(running.client)
    _, _, stranger = await new_user(running.client)
    session_id = await started_session(running, owner)
    cases = [
        (f"/ws/sessions/{session_id}?token={stranger}", 4404),
        ("/ws/sessions/00000000-0000-4000-8000-000000000000?token=" + owner, 4404),
        ("/ws/sessions/not-a-uuid?token=" + owner, 4404),
        (f"/ws/sessions/{session_id}?token=forged.jwt.value", 4401),
        (f"/ws/sessions/{session_id}?token=gwd_unknownkey", 4401),
        (f"/ws/sessions/{session_id}", 4401),
        ("/ws/sessions", 4401),
    ]
    for path, expected in cases:
        async with open_ws(base + path) as ws:
            assert await close_code(ws) == expected, path


async def test_all_sessions_stream_shows_only_the_users_sessions(
    running: Running, nursery: trio.Nursery
) -> None:
    """/ws/sessions streams every session of the user (one made later too), none of another's."""
    base = ws_base(running)
    _, _, token = await new_user(running.client)
    _, _, other = await new_user(running.client)
    first = await connected_session(running, token)
    foreign = await started_session(running, other, "Not yours")
    async with open_ws(f"{base}/ws/sessions?token={token}") as ws:
        opening = await receive(ws)
        assert opening["type"] == "status_update" and opening["session_id"] == first
        later = await started_session(running, token, "Agent 2")
        qr = await receive_until(ws, "qr_update", lambda f: f["session_id"] == later)
        assert qr["data"]["qr_code"].startswith("data:image/png;base64,")
        await scan(running.client, foreign, "6283333333333")
        await running.client.post(
            f"/_sim/agents/{first}/inject",
            json={"kind": "text", "from": CUSTOMER, "text": "to the first"},
        )
        message = await receive_until(ws, "message_received")
        assert message["session_id"] == first
        await scan(running.client, later, "6284444444444")
        await receive_until(ws, "status_update", lambda f: f["data"]["status"] == "connected")
        seen = [message, qr]
        with trio.move_on_after(0.5):
            while True:
                seen.append(await receive(ws))
    assert foreign not in {frame.get("session_id") for frame in seen}


@pytest.mark.parametrize(
    "gateway_config", [{"websocket": {"ping_interval": 30.0, "queue": 4}}], indirect=True
)
async def test_slow_reader_is_closed_1013_while_another_keeps_receiving(
    running: Running, nursery: trio.Nursery
) -> None:
    """A client that stops reading is closed with 1013; a reading client gets every event."""
    base = ws_base(running)
    _, _, token = await new_user(running.client)
    session_id = await connected_session(running, token)
    url = f"{base}/ws/sessions/{session_id}?token={token}"
    bus = running.gateway.bus
    registry = running.gateway.services.metrics.registry

    def slow_closes() -> float:
        return registry.get_sample_value("gatewayd_websocket_closed_slow_total") or 0.0

    big = "x" * 65536
    async with open_ws(url, receive_buffer=4096) as slow, open_ws(url) as fast:
        await receive(slow)  # the current state: the slow one is subscribed
        await receive(fast)
        before = slow_closes()
        published = after_slow = 0
        # Publish in step with the fast client until the slow one is found out, then more.
        with trio.fail_after(60):
            while slow_closes() == before or published < after_slow + 20:
                if slow_closes() == before:
                    after_slow = published
                bus.publish(_message(session_id, published, big))  # never waits for a socket
                published += 1
                frame = await receive_until(fast, "message_received")
                assert frame["data"]["message_id"] == str(published - 1)
        assert slow_closes() == before + 1
        assert await close_code(slow, timeout=30) == 1013
    print(f"slow reader found out after {after_slow} events of {len(big)} bytes")


def _message(agent_id: str, index: int, text: str) -> BusEvent:
    return BusEvent(
        agent_id,
        "message",
        {
            "id": str(index),
            "chat": f"{CUSTOMER}@s.whatsapp.net",
            "sender": f"{CUSTOMER}@s.whatsapp.net",
            "text": text,
        },
    )


@pytest.mark.parametrize(
    "gateway_config", [{"websocket": {"ping_interval": 0.2, "queue": 8}}], indirect=True
)
async def test_idle_connection_gets_pings(running: Running, nursery: trio.Nursery) -> None:
    """A connection without events gets a ping frame every ping_interval."""
    base = ws_base(running)
    _, _, token = await new_user(running.client)
    session_id = await connected_session(running, token)
    async with open_ws(f"{base}/ws/sessions/{session_id}?token={token}") as ws:
        assert (await receive(ws))["type"] == "status_update"
        assert (await receive(ws))["type"] == "ping"
        assert (await receive(ws))["type"] == "ping"


async def test_open_sockets_gauge_and_a_vanished_peer(
    running: Running, nursery: trio.Nursery
) -> None:
    """/metrics counts open sockets; one whose peer vanishes without a close is let go."""
    base = ws_base(running)
    _, _, token = await new_user(running.client)
    session_id = await connected_session(running, token)
    url = f"{base}/ws/sessions/{session_id}?token={token}"
    assert await gauge(running) == 0
    async with open_ws(url) as one:
        await receive(one)
        await _wait_gauge(running, 1)
        async with open_ws(url) as two:
            await receive(two)
            await _wait_gauge(running, 2)
        raw = await _raw_handshake(url)
        await _wait_gauge(running, 2)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        raw.close()  # a reset, no close frame: the peer is simply gone
        await _wait_gauge(running, 1)
    await _wait_gauge(running, 0)


async def _wait_gauge(running: Running, value: float) -> None:
    with trio.fail_after(10):
        while await gauge(running) != value:
            await trio.sleep(0.05)


async def _raw_handshake(url: str) -> trio.socket.SocketType:
    host, port, resource = _parts(url)
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await sock.connect((host, port))
    request = (
        f"GET {resource} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    )
    await sock.send(request.encode())
    answer = b""
    with trio.fail_after(10):
        while b"\r\n\r\n" not in answer:
            answer += await sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 101")
    return sock


@pytest.mark.parametrize("gateway_config", [{"auth": {"requests_per_minute": 3}}], indirect=True)
async def test_handshake_spends_the_request_budget(running: Running, nursery: trio.Nursery) -> None:
    """Each handshake counts as a request: past the user's budget it closes 4429."""
    base = ws_base(running)
    _, _, token = await new_user(running.client)
    await started_session_only(running, token)  # one request of the three
    for _ in range(2):
        async with open_ws(f"{base}/ws/sessions?token={token}") as ws:
            assert (await receive(ws))["type"] == "status_update"
    async with open_ws(f"{base}/ws/sessions?token={token}") as ws:
        assert await close_code(ws) == 4429


async def test_stopping_daemon_closes_sockets_1001(running: Running, nursery: trio.Nursery) -> None:
    """When the daemon stops, open sockets are closed with 1001 instead of waiting out the grace."""
    base = ws_base(running)
    _, _, token = await new_user(running.client)
    await started_session_only(running, token)
    async with open_ws(f"{base}/ws/sessions?token={token}") as ws:
        assert (await receive(ws))["type"] == "status_update"
        running.gateway.request_stop()
        assert await close_code(ws) == 1001
