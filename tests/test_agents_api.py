"""The agents API (docs/contract/agents-api.md) end to end: real HTTP, real database, a real AI
backend on loopback, and the simulated WhatsApp network."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.lowlevel
from PIL import Image

from gatewayd.config import Config
from gatewayd.store import keys as keys_store
from gatewayd.whatsapp.sim import SimulatedWhatsApp
from tests.ai_backend import AIBackend, start_ai_backend
from tests.gateway_fixtures import Running, make_config

CUSTOMER = "6281111111111"
DEV = "62895619356936"
GROUP = "120363000000000001@g.us"


def png_bytes(size: int = 8) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture
async def ai(nursery: trio.Nursery) -> AIBackend:
    return await start_ai_backend(nursery)


@pytest.fixture
async def gateway_config(pg_dsn: str, ai: AIBackend, tmp_path: Path) -> Config:
    return make_config(
        pg_dsn,
        ai={"backend_url": ai.url, "timeout": 1.0},
        media={
            "allow_private_urls": True,
            "temp_dir": str(tmp_path / "previews"),
            "max_bytes": 64 * 1024,
        },
        forwarding={"developer_number": DEV},
        sessions={"qr_wait": 5.0, "create_qr_wait": 2.0},
    )


def sim_of(running: Running) -> SimulatedWhatsApp:
    backend = running.gateway.backend
    assert isinstance(backend, SimulatedWhatsApp)
    return backend


async def wait_status(running: Running, agent_id: str, status: str) -> None:
    with trio.fail_after(10):
        while True:
            handle = running.gateway.agents.get(agent_id)
            if handle is not None and handle.status == status:
                return
            await trio.sleep(0.01)


async def connect(
    running: Running,
    agent_id: str = "support-bot",
    phone: str = "628123450001",
    key: str = "API_KEY",
    user: str = "u1",
) -> None:
    r = await running.client.post(
        "/sessions",
        json={"userId": user, "agentId": agent_id, "agentName": agent_id.title(), "apikey": key},
    )
    assert r.status_code in (200, 201), r.text
    await wait_status(running, agent_id, "awaiting_qr")
    with trio.fail_after(10):
        while sim_of(running).current_qr(agent_id) is None:
            await trio.sleep(0.01)
    sim_of(running).scan(agent_id, phone)
    await wait_status(running, agent_id, "connected")


def auth(key: str = "API_KEY") -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def handled(running: Running, agent_id: str, message_id: str) -> str:
    """Wait until the forwarder is done with a message; its outcome."""
    with trio.fail_after(15):
        while True:
            row = await running.gateway.db.run(
                lambda conn: conn.execute(
                    "SELECT outcome FROM messages WHERE wa_message_id = %s AND handled_at IS NOT NULL",
                    (message_id,),
                ).fetchone()
            )
            if row is not None:
                return str(row[0])
            await trio.sleep(0.02)


def sent_texts(running: Running, agent_id: str = "support-bot") -> list[Any]:
    return [r for r in sim_of(running).sent(agent_id) if r.kind in ("text", "image")]


# ------------------------------------------------------------------------- sessions


async def test_create_session_returns_a_scannable_qr_and_status(running: Running) -> None:
    """POST /sessions answers 201 with a PNG QR; GET shows persisted status plus liveState."""
    r = await running.client.post(
        "/sessions",
        json={
            "userId": 123,
            "agentId": "support-bot",
            "agentName": "Support Bot",
            "apikey": "API_KEY",
        },
    )
    assert r.status_code == 201
    data = r.json()["data"]
    assert data["status"] == "awaiting_qr" and data["userId"] == "123"
    assert data["endpointUrlRun"].endswith("/agents/support-bot/execute")
    assert data["qr"]["contentType"] == "image/png"
    png = base64.b64decode(data["qr"]["base64"])
    assert png.startswith(b"\x89PNG")
    import zxingcpp

    decoded = zxingcpp.read_barcodes(Image.open(io.BytesIO(png)))
    assert decoded[0].text == sim_of(running).current_qr("support-bot").payload  # type: ignore[union-attr]

    status = (await running.client.get("/sessions/support-bot")).json()["data"]
    assert status["status"] == "awaiting_qr"
    assert status["liveState"]["isConnected"] is False and status["liveState"]["hasClient"] is True
    assert status["liveState"]["sessionState"] == "QR"
    assert status["liveState"]["qr"]["contentType"] == "image/png"

    sim_of(running).scan("support-bot", "628123450001")
    await wait_status(running, "support-bot", "connected")
    status = (await running.client.get("/sessions/support-bot")).json()["data"]
    assert status["liveState"] | {"qr": None} == {
        "isConnected": True,
        "sessionState": "CONNECTED",
        "isReady": True,
        "hasClient": True,
        "qr": None,
    }
    assert status["phoneNumber"] == "628123450001" and status["lastConnectedAt"]


async def test_create_prefers_latest_active_key_and_leaves_connected_alone(
    running: Running,
) -> None:
    """The user's latest active api_keys row wins over the body's apikey; a connected agent answers 200 without QR."""
    db = running.gateway.db
    await keys_store.add_key(db, "api_keys", "u7", "old-key")
    await keys_store.add_key(db, "api_keys", "u7", "inactive-key", is_active=False)
    await trio.sleep(0.01)
    await keys_store.add_key(db, "api_keys", "u7", "newest-key")
    await connect(running, "bot7", key="body-key", user="u7")
    r = await running.client.post(
        "/agents/bot7/messages", json={"to": CUSTOMER, "message": "x"}, headers=auth("newest-key")
    )
    assert r.status_code == 200
    r = await running.client.post(
        "/sessions", json={"userId": "u7", "agentId": "bot7", "agentName": "B"}
    )
    assert r.status_code == 200
    assert r.json()["data"]["status"] == "connected" and "qr" not in r.json()["data"]


async def test_create_without_any_key_or_with_bad_body_is_400(running: Running) -> None:
    """No key anywhere, a missing agentId or a bad type is INVALID_PAYLOAD."""
    r = await running.client.post(
        "/sessions", json={"userId": "nobody", "agentId": "a1", "agentName": "A"}
    )
    assert r.status_code == 400 and "API key" in r.json()["error"]["message"]
    r = await running.client.post(
        "/sessions", json={"userId": "u1", "agentName": "A", "apikey": "k"}
    )
    assert r.status_code == 400 and "agentId" in r.json()["error"]["message"]
    r = await running.client.post(
        "/sessions", json={"userId": True, "agentId": "a1", "apikey": "k"}
    )
    assert r.status_code == 400


async def test_existing_but_not_ready_session_is_reset(running: Running) -> None:
    """A session that exists but is not connected is reset: a new QR, the same record."""
    r = await running.client.post(
        "/sessions", json={"userId": "u1", "agentId": "bot-r", "agentName": "R", "apikey": "k1"}
    )
    assert r.status_code == 201
    first_qr = r.json()["data"]["qr"]["base64"]
    r = await running.client.post(
        "/sessions", json={"userId": "u1", "agentId": "bot-r", "agentName": "R2", "apikey": "k2"}
    )
    assert r.status_code == 200
    assert r.json()["data"]["agentName"] == "R2" and r.json()["data"]["qr"]["base64"] != first_qr
    r = await running.client.post(
        "/sessions", json={"userId": "u2", "agentId": "bot-r", "agentName": "X", "apikey": "k"}
    )
    assert r.status_code == 409  # another tenant cannot take the agentId over


async def test_qr_reconnect_and_delete(running: Running) -> None:
    """/qr of a connected agent has no QR; reconnect logs out and returns a new QR; delete removes everything."""
    await connect(running)
    r = await running.client.post("/sessions/support-bot/qr")
    assert r.status_code == 200 and r.json()["data"]["qr"] is None
    device = running.gateway.agents.get("support-bot").record.device_jid  # type: ignore[union-attr]
    r = await running.client.post("/sessions/support-bot/reconnect")
    assert r.status_code == 200
    assert r.json()["data"]["qr"]["contentType"] == "image/png"
    assert device not in await sim_of(running).known_devices()
    r = await running.client.post("/sessions/support-bot/qr")
    assert r.status_code == 200 and r.json()["data"]["qr"]["contentType"] == "image/png"
    r = await running.client.delete("/sessions/support-bot")
    assert r.status_code == 200 and r.json()["data"]["deleted"] is True
    for method, path in [
        ("GET", "/sessions/support-bot"),
        ("DELETE", "/sessions/support-bot"),
        ("POST", "/sessions/support-bot/reconnect"),
        ("POST", "/sessions/support-bot/qr"),
    ]:
        r = await running.client.request(method, path)
        assert r.status_code == 404 and r.json()["error"]["code"] == "SESSION_NOT_FOUND", path


async def test_admin_token_closes_the_session_routes(running: Running) -> None:
    """With server.admin_token set, /sessions* need it; the daemon answers 401 otherwise."""
    import attrs

    gateway = running.gateway
    gateway.config = attrs.evolve(
        gateway.config, server=attrs.evolve(gateway.config.server, admin_token="s3cret")
    )
    r = await running.client.get("/sessions/any")
    assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHORIZED"
    r = await running.client.get("/sessions/any", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    r = await running.client.get("/sessions/any", headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 404


# ------------------------------------------------------------------------- auth


async def test_bearer_auth_matrix(running: Running) -> None:
    """No header, wrong scheme, wrong key and another agent's key are 401; a rotated key passes after the re-sync."""
    await connect(running, "bot-a", "628123450001", key="key-a", user="ua")
    await connect(running, "bot-b", "628123450002", key="key-b", user="ub")
    body = {"to": CUSTOMER, "message": "hi"}
    cases = [
        {},
        {"Authorization": "Basic key-a"},
        {"Authorization": "Bearer nope"},
        auth("key-b"),
        {"Authorization": "Bearer"},
    ]
    for headers in cases:
        r = await running.client.post("/agents/bot-a/messages", json=body, headers=headers)
        assert r.status_code == 401, headers
        assert r.json()["error"]["code"] == "UNAUTHORIZED"
        assert r.json()["error"]["traceId"] == r.headers["x-request-id"]
    assert (
        await running.client.post("/agents/bot-a/messages", json=body, headers=auth("key-a"))
    ).status_code == 200
    # The other system rotates the user's key: first call 401 (and re-sync), then it passes.
    await keys_store.add_key(running.gateway.db, "api_keys", "ua", "key-a2")
    r = await running.client.post("/agents/bot-a/messages", json=body, headers=auth("key-a2"))
    assert r.status_code == 401
    with trio.fail_after(10):
        while (
            await running.client.post("/agents/bot-a/messages", json=body, headers=auth("key-a2"))
        ).status_code != 200:
            await trio.sleep(0.02)
    r = await running.client.post("/agents/bot-a/messages", json=body, headers=auth("key-a"))
    assert r.status_code == 401


async def test_unknown_agent_is_404(running: Running) -> None:
    """Calls for an agent that does not exist are SESSION_NOT_FOUND."""
    r = await running.client.post(
        "/agents/ghost/messages", json={"to": CUSTOMER, "message": "x"}, headers=auth()
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "SESSION_NOT_FOUND"


# ------------------------------------------------------------------------- messages


async def test_send_text_private_group_and_quoted(running: Running) -> None:
    """Text goes to private chats and groups; quoteId makes a quoted reply; the answer carries the id."""
    await connect(running)
    for to in ("081111111111", "+6281111111111", "6281111111111", "6281111111111@c.us"):
        r = await running.client.post(
            "/agents/support-bot/messages", json={"to": to, "message": "Halo"}, headers=auth()
        )
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert data["to"] == "6281111111111@c.us" and data["messageId"]
    r = await running.client.post(
        "/agents/support-bot/messages", json={"to": GROUP, "message": "hi group"}, headers=auth()
    )
    assert r.status_code == 200
    inbound = sim_of(running).inject_text("support-bot", CUSTOMER, "please quote me")
    r = await running.client.post(
        "/agents/support-bot/messages",
        json={"to": CUSTOMER, "message": "Noted", "quoteId": f"false_{CUSTOMER}@c.us_{inbound.id}"},
        headers=auth(),
    )
    assert r.status_code == 200
    (noted,) = [s for s in sim_of(running).sent("support-bot") if s.text == "Noted"]
    assert noted.quote is not None and noted.quote.message_id == inbound.id
    sent = [s for s in sim_of(running).sent("support-bot") if s.kind == "text"]
    assert [s.to for s in sent[:5]] == [f"{CUSTOMER}@s.whatsapp.net"] * 4 + [GROUP]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"to": "not-a-number", "message": "x"}, "letters"),
        ({"to": "12", "message": "x"}, "short"),
        ({"to": "6281111111111@example.com", "message": "x"}, ""),
        ({"to": CUSTOMER}, "message"),
        ({"to": CUSTOMER, "message": ""}, "message"),
        ({"to": CUSTOMER, "message": "x", "quoteId": "bad id!"}, "quoteId"),
        ({"message": "x"}, "to"),
    ],
)
async def test_invalid_messages_are_400_even_when_not_connected(
    running: Running, body: dict[str, Any], fragment: str
) -> None:
    """Validation comes first: a bad body is INVALID_PAYLOAD whatever the session's state."""
    r = await running.client.post(
        "/sessions", json={"userId": "u1", "agentId": "offline", "apikey": "API_KEY"}
    )
    assert r.status_code == 201
    r = await running.client.post("/agents/offline/messages", json=body, headers=auth())
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "INVALID_PAYLOAD"
    assert fragment.lower() in r.json()["error"]["message"].lower()


async def test_not_connected_is_409_and_full_queue_is_429_at_once(running: Running) -> None:
    """A valid send to an unconnected session is SESSION_NOT_READY; with 500 waiting the next is RATE_LIMITED."""
    import attrs

    r = await running.client.post(
        "/sessions", json={"userId": "u1", "agentId": "offline", "apikey": "API_KEY"}
    )
    r = await running.client.post(
        "/agents/offline/messages", json={"to": CUSTOMER, "message": "x"}, headers=auth()
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "SESSION_NOT_READY"

    gateway = running.gateway
    gateway.config = attrs.evolve(
        gateway.config,
        agents=attrs.evolve(gateway.config.agents, send_rate_per_minute=0.001, send_burst=1),
    )
    await connect(running)
    gateway.agents.reconfigure(gateway.config)
    handle = gateway.agents.get("support-bot")
    assert handle is not None
    from gatewayd.nursery.commands import Outgoing

    await gateway.agents.send(
        "support-bot", Outgoing(to=f"{CUSTOMER}@s.whatsapp.net", text="burst")
    )
    async with trio.open_nursery() as nursery:
        for i in range(500):
            message = Outgoing(to=f"{CUSTOMER}@s.whatsapp.net", text=f"q{i}")
            nursery.start_soon(gateway.agents.send, "support-bot", message)
        with trio.fail_after(60):
            while handle.queue_depth() < 500:  # each send writes its row, then queues
                await trio.sleep(0.01)
        with trio.fail_after(5):  # "at once": no waiting for the bucket
            r = await running.client.post(
                "/agents/support-bot/messages",
                json={"to": CUSTOMER, "message": "x"},
                headers=auth(),
            )
        nursery.cancel_scope.cancel()
    assert r.status_code == 429 and r.json()["error"]["code"] == "RATE_LIMITED"
    assert (
        'whatsapp_errors_total{code="RATE_LIMITED"} 1.0'
        in (await running.client.get("/metrics")).text
    )


# ------------------------------------------------------------------------- media


async def test_media_from_base64_keeps_a_preview(running: Running, tmp_path: Path) -> None:
    """A base64 image is sent with its caption; a preview is kept unless save_to_temp is false."""
    await connect(running)
    png = png_bytes()
    body = {
        "to": CUSTOMER,
        "caption": "Invoice #123",
        "data": base64.b64encode(png).decode(),
        "filename": "sample.png",
        "mimeType": "image/png",
    }
    r = await running.client.post("/agents/support-bot/media", json=body, headers=auth())
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert Path(data["previewPath"]).read_bytes() == png
    assert Path(data["previewPath"]).parent == tmp_path / "previews"
    last = sim_of(running).sent("support-bot")[-1]
    assert (last.kind, last.text, last.media_size, last.mimetype) == (
        "image",
        "Invoice #123",
        len(png),
        "image/png",
    )
    r = await running.client.post(
        "/agents/support-bot/media", json={**body, "save_to_temp": False}, headers=auth()
    )
    assert r.status_code == 200 and r.json()["data"]["previewPath"] is None
    data_url = "data:image/png;base64," + base64.b64encode(png).decode()
    r = await running.client.post(
        "/agents/support-bot/media",
        json={"to": CUSTOMER, "data": data_url, "mimetype": "image/jpeg"},
        headers=auth(),
    )
    assert (
        r.status_code == 200 and r.json()["data"]["mimetype"] == "image/png"
    )  # by content, not by claim


async def test_media_that_is_not_an_image_or_too_large_is_refused(running: Running) -> None:
    """Not an image by content is 400; over media.max_bytes is 413 MEDIA_TOO_LARGE, before readiness."""
    r = await running.client.post(
        "/sessions", json={"userId": "u1", "agentId": "offline", "apikey": "API_KEY"}
    )
    pdf = base64.b64encode(b"%PDF-1.4 not an image" * 10).decode()
    r = await running.client.post(
        "/agents/offline/media",
        json={"to": CUSTOMER, "data": pdf, "mimetype": "image/jpeg"},
        headers=auth(),
    )
    assert r.status_code == 400 and "image" in r.json()["error"]["message"]
    big = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"0" * 70_000).decode()
    r = await running.client.post(
        "/agents/offline/media", json={"to": CUSTOMER, "data": big}, headers=auth()
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "MEDIA_TOO_LARGE"
    r = await running.client.post("/agents/offline/media", json={"to": CUSTOMER}, headers=auth())
    assert r.status_code == 400
    png = base64.b64encode(png_bytes()).decode()
    r = await running.client.post(
        "/agents/offline/media", json={"to": CUSTOMER, "data": png}, headers=auth()
    )
    assert r.status_code == 409  # valid: now the session's state decides


async def test_media_from_url_with_size_limits_and_address_guard(
    running: Running, nursery: trio.Nursery
) -> None:
    """URL media is fetched; too large by header or while streaming is 413; a refused address is 400."""
    from starlette.applications import Starlette
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    from tests.loopback import serve_app

    png = png_bytes()

    async def image(request: Any) -> Response:
        return Response(png, media_type="image/png")

    async def declared_big(request: Any) -> Response:
        return Response(b"\x89PNG" + b"0" * 100_000, media_type="image/png")

    class Chunks:
        """20 chunks of 8 KiB with no Content-Length; an iterator, not a generator, so a
        client that stops reading leaves nothing to finalise."""

        def __init__(self) -> None:
            self.left = 20

        def __aiter__(self) -> Chunks:
            return self

        async def __anext__(self) -> bytes:
            if self.left == 0:
                raise StopAsyncIteration
            self.left -= 1
            return b"0" * 8192

    async def streamed_big(request: Any) -> Response:
        return StreamingResponse(Chunks(), media_type="image/png")

    app = Starlette(
        routes=[
            Route("/img.png", image),
            Route("/big.png", declared_big),
            Route("/stream.png", streamed_big),
        ]
    )
    base = await serve_app(nursery, app)
    binds = [base]
    await connect(running)
    r = await running.client.post(
        "/agents/support-bot/media",
        json={"to": CUSTOMER, "url": f"{binds[0]}/img.png"},
        headers=auth(),
    )
    assert r.status_code == 200, r.text
    assert sim_of(running).sent("support-bot")[-1].media_size == len(png)
    for path in ("/big.png", "/stream.png"):
        r = await running.client.post(
            "/agents/support-bot/media",
            json={"to": CUSTOMER, "url": binds[0] + path},
            headers=auth(),
        )
        assert r.status_code == 413 and r.json()["error"]["code"] == "MEDIA_TOO_LARGE", path
    import attrs

    gateway = running.gateway
    gateway.config = attrs.evolve(
        gateway.config, media=attrs.evolve(gateway.config.media, allow_private_urls=False)
    )
    for url in (
        f"{binds[0]}/img.png",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1/x.png",
    ):
        r = await running.client.post(
            "/agents/support-bot/media", json={"to": CUSTOMER, "url": url}, headers=auth()
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == "INVALID_PAYLOAD", url


# ------------------------------------------------------------------------- forwarding


async def test_private_message_is_forwarded_with_typing_and_reply(
    running: Running, ai: AIBackend
) -> None:
    """A private text goes to the AI (Bearer, X-Request-ID, Idempotency-Key, 001 payload) with typing;
    the reply is sent back."""
    await connect(running)
    inbound = sim_of(running).inject_text(
        "support-bot", CUSTOMER, "Hello assistant!", push_name="Customer"
    )
    assert await handled(running, "support-bot", inbound.id) == "replied"
    call = ai.calls[-1]
    assert call.path == "/agents/support-bot/execute"
    assert call.headers["authorization"] == "Bearer API_KEY"
    assert len(call.headers["x-request-id"]) >= 8
    assert call.headers["idempotency-key"] == inbound.id  # the WhatsApp message id
    assert call.body["message"] == "Hello assistant!"
    assert call.body["sessionId"] == f"{CUSTOMER}@c.us"
    assert call.body["metadata"]["whatsapp_name"] == "Customer"
    actions = [(r.kind, r.typing, r.text) for r in sim_of(running).sent("support-bot")]
    assert actions == [
        ("typing", True, None),
        ("typing", False, None),
        ("text", None, "Hello from the AI"),
    ]
    rows = await running.gateway.db.run(
        lambda conn: conn.execute(
            "SELECT status, request->>'message', trace_id FROM ai_executions"
        ).fetchall()
    )
    assert rows == [("success", "Hello assistant!", call.headers["x-request-id"])]


@pytest.mark.parametrize(
    ("inject", "outcome"),
    [
        (
            lambda sim, me: sim.inject_status("support-bot", CUSTOMER, "my status"),
            "ignored:status_broadcast",
        ),
        (
            lambda sim, me: sim.inject_newsletter("support-bot", "120363999@newsletter", "news"),
            "ignored:newsletter",
        ),
        (
            lambda sim, me: sim.inject_text("support-bot", CUSTOMER, "hi all", group=GROUP),
            "ignored:group_without_mention",
        ),
        (
            lambda sim, me: sim.inject_text(
                "support-bot",
                CUSTOMER,
                "@bot hi",
                group=GROUP,
                mentions=[f"{me['phone']}@s.whatsapp.net"],
            ),
            "replied",
        ),
        (
            lambda sim, me: sim.inject_text(
                "support-bot", CUSTOMER, "hi lid", group=GROUP, mentions=[me["lid"]]
            ),
            "replied",
        ),
        (
            lambda sim, me: sim.inject_text(
                "support-bot", CUSTOMER, f"tolong @{me['phone']} bantu", group=GROUP
            ),
            "replied",
        ),
        (lambda sim, me: sim.inject_media("support-bot", "image", CUSTOMER), "ignored:media"),
        (
            lambda sim, me: sim.inject_media(
                "support-bot", "image", CUSTOMER, caption="what is this?"
            ),
            "replied",
        ),
        (
            lambda sim, me: sim.inject_text("support-bot", "628123450001", "note to self"),
            "ignored:from_me",
        ),
        (
            lambda sim, me: sim.inject_text("support-bot", CUSTOMER, "typo fixed", is_edit=True),
            "ignored:edit",
        ),
    ],
    ids=[
        "status",
        "newsletter",
        "group-no-mention",
        "group-mention-phone",
        "group-mention-lid",
        "group-mention-in-text",
        "media-no-caption",
        "media-caption",
        "from-me",
        "edit",
    ],
)
async def test_forwarding_filters(
    running: Running, ai: AIBackend, inject: Any, outcome: str
) -> None:
    """Status, channels, own messages and unmentioned groups are ignored; DMs and mentions go to the AI."""
    await connect(running)
    record = running.gateway.agents.get("support-bot").record  # type: ignore[union-attr]
    me = {"phone": record.phone_number, "lid": record.lid}
    inbound = inject(sim_of(running), me)
    assert await handled(running, "support-bot", inbound.id) == outcome
    replies = [r for r in sim_of(running).sent("support-bot") if r.kind == "text"]
    assert bool(replies) == (outcome == "replied")
    assert len(ai.calls) == (1 if outcome == "replied" else 0)
    if outcome == "replied" and inbound.is_group:
        assert replies[0].to == GROUP and replies[0].quote.message_id == inbound.id  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("status", "delay", "reason"), [(200, 3.0, "TIMEOUT"), (500, 0.0, "ERROR")]
)
async def test_ai_failure_reports_to_the_developer_and_never_the_user(
    running: Running, ai: AIBackend, status: int, delay: float, reason: str
) -> None:
    """On AI timeout or 500 the user gets nothing; the developer number gets agentId, from, text, reason, traceId."""
    await connect(running)
    ai.status, ai.delay = status, delay
    with running.gateway.bus.subscribe("support-bot") as events:
        inbound = sim_of(running).inject_text("support-bot", CUSTOMER, "are you there?")
        assert await handled(running, "support-bot", inbound.id) == f"failed:{reason}"
        async for event in events:  # the report is queued, then sent by the agent's outbox
            if event.kind == "sent":
                break
    texts = [r for r in sim_of(running).sent("support-bot") if r.kind == "text"]
    assert [t.to for t in texts] == [f"{DEV}@s.whatsapp.net"]
    report = texts[0].text or ""
    for part in (
        "support-bot",
        f"{CUSTOMER}@c.us",
        "are you there?",
        f"reason: {reason}",
        f"traceId: {ai.calls[-1].headers['x-request-id']}",
        "timestamp: ",
    ):
        assert part in report, part
    typing = [r.typing for r in sim_of(running).sent("support-bot") if r.kind == "typing"]
    assert typing == [True, False]
    rows = await running.gateway.db.run(
        lambda conn: conn.execute("SELECT status FROM ai_executions").fetchall()
    )
    assert rows == [("timeout" if reason == "TIMEOUT" else "error",)]


async def test_replies_and_a_report_between_them_go_out_once_each_in_order(
    running: Running, ai: AIBackend
) -> None:
    """Replies are handed to the outbox in memory once it has read every queued row; a report
    (queued without that hand-over) between two replies still goes out, each row once, in
    the order they were queued, and every AI call is recorded, the answered ones with their
    replies."""
    await connect(running)
    sim = sim_of(running)
    outcomes = []
    for n, status in enumerate((200, 200, 500, 200, 200)):
        ai.status, ai.reply = status, f"answer {n}"
        inbound = sim.inject_text("support-bot", CUSTOMER, f"question {n}")
        outcomes.append(await handled(running, "support-bot", inbound.id))
    assert outcomes == ["replied", "replied", "failed:ERROR", "replied", "replied"]
    texts = [(r.to, r.text) for r in sim.sent("support-bot") if r.kind == "text"]
    user, dev = f"{CUSTOMER}@s.whatsapp.net", f"{DEV}@s.whatsapp.net"
    assert [to for to, _ in texts] == [user, user, dev, user, user]
    assert [text for to, text in texts if to == user] == [f"answer {n}" for n in (0, 1, 3, 4)]
    executions = await running.gateway.db.run(
        lambda conn: conn.execute("SELECT status FROM ai_executions ORDER BY id").fetchall()
    )
    assert [e for (e,) in executions] == ["success", "success", "error", "success", "success"]
    statuses = await running.gateway.db.run(
        lambda conn: conn.execute(
            "SELECT status, count(*) FROM messages WHERE direction = 'outbound' GROUP BY status"
        ).fetchall()
    )
    assert statuses == [("sent", 5)]


async def test_restart_between_persisting_and_forwarding_forwards_once(
    pg_dsn: str, ai: AIBackend, gateway_config: Config, nursery: trio.Nursery
) -> None:
    """A message persisted by one daemon and never handled is forwarded by the next, exactly once."""
    from gatewayd.daemon import run_gateway
    from gatewayd.store import agents as agents_store
    from gatewayd.store import messages as messages_store
    from gatewayd.whatsapp.port import InboundMessage

    async def start() -> Any:
        return await nursery.start(
            lambda task_status: run_gateway(
                gateway_config, environ={}, handle_signals=False, task_status=task_status
            )
        )

    gateway = await start()
    record = await agents_store.create_agent(
        gateway.db, agent_id="bot-x", name="X", user_id="u", api_key="k"
    )
    message = InboundMessage(
        id="3EB0CRASHED00",
        chat=f"{CUSTOMER}@s.whatsapp.net",
        sender=f"{CUSTOMER}@s.whatsapp.net",
        timestamp_ms=1_700_000_000_000,
        text="lost?",
    )
    # What the event handler does first, then the process "dies" before the forwarder ran.
    await messages_store.insert_inbound(gateway.db, record.id, message)
    await agents_store.set_device(
        gateway.db, record.id, device_jid="628999:1@s.whatsapp.net", phone_number="628999"
    )
    gateway.request_stop()
    await gateway.agents.finished.wait()
    for _ in range(2):
        gateway = await start()
        with trio.fail_after(15):
            while len(ai.calls) < 1:
                await trio.sleep(0.02)
        await trio.sleep(0.3)
        gateway.request_stop()
        await gateway.agents.finished.wait()
    assert [c.body["message"] for c in ai.calls] == ["lost?"]


# ------------------------------------------------------------------------- /run


@pytest.mark.parametrize(
    "body",
    [
        {
            "message": "Hello assistant!",
            "sessionId": f"{CUSTOMER}@c.us",
            "memory_enable": True,
            "metadata": {"whatsapp_name": "Customer", "chat_name": "VIP Support"},
        },
        {"input": "Hello assistant!", "parameters": {"max_steps": 5}, "session_id": CUSTOMER},
    ],
    ids=["001", "004"],
)
async def test_run_calls_the_ai_and_sends_the_reply(
    running: Running, ai: AIBackend, body: dict[str, Any]
) -> None:
    """Both the 001 and the 004 body call the AI with Bearer auth and send the reply to the session JID."""
    await connect(running)
    r = await running.client.post(
        "/agents/support-bot/run", json=body, headers={**auth(), "X-Request-ID": "run-1"}
    )
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data["reply"] == "Hello from the AI" and data["replySent"] is True
    call = ai.calls[-1]
    assert (
        call.headers["authorization"] == "Bearer API_KEY"
        and call.headers["x-request-id"] == "run-1"
    )
    assert (
        call.body["message"] == "Hello assistant!" and call.body["sessionId"] == f"{CUSTOMER}@c.us"
    )
    assert sim_of(running).sent("support-bot")[-1].text == "Hello from the AI"


@pytest.mark.parametrize(
    ("status", "delay", "code", "http"),
    [(200, 3.0, "AI_TIMEOUT", 504), (500, 0.0, "AI_DOWNSTREAM_ERROR", 502)],
)
async def test_run_maps_ai_failures(
    running: Running, ai: AIBackend, status: int, delay: float, code: str, http: int
) -> None:
    """An AI timeout is 504 AI_TIMEOUT, an AI error 502 AI_DOWNSTREAM_ERROR; nothing is sent."""
    await connect(running)
    ai.status, ai.delay = status, delay
    r = await running.client.post(
        "/agents/support-bot/run", json={"message": "x", "sessionId": CUSTOMER}, headers=auth()
    )
    assert r.status_code == http and r.json()["error"]["code"] == code
    assert not [s for s in sim_of(running).sent("support-bot") if s.kind == "text"]
    metrics = (await running.client.get("/metrics")).text
    assert f'whatsapp_errors_total{{code="{code}"}} 1.0' in metrics
    assert "whatsapp_ai_latency_seconds_count 1.0" in metrics


async def test_run_with_unreachable_ai_is_bad_gateway(running: Running) -> None:
    """An AI endpoint that refuses connections is 502 BAD_GATEWAY; a bad body is 400 first."""
    await connect(running)
    await running.gateway.db.run(
        lambda conn: (
            conn.execute(
                "UPDATE agents SET endpoint_url_run = 'http://127.0.0.1:9/run' WHERE agent_id = 'support-bot'"
            )
            and None
        )
    )
    r = await running.client.post("/agents/support-bot/run", json={"message": "x"}, headers=auth())
    assert r.status_code == 502 and r.json()["error"]["code"] == "BAD_GATEWAY"
    r = await running.client.post("/agents/support-bot/run", json={"message": 5}, headers=auth())
    assert r.status_code == 400 and r.json()["error"]["code"] == "INVALID_PAYLOAD"


async def test_cleanup_timer_deletes_old_previews(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Every 30 min previews older than 24 h go; fresh ones and other files stay; times change live."""
    import os

    import attrs

    from gatewayd.nursery.cleanup import PREVIEW_PREFIX, run_cleanup

    base = 1_800_000_000.0
    config = Config.from_mapping({"media": {"temp_dir": str(tmp_path)}})
    files = {"old": 25 * 3600, "soon": 24 * 3600 - 2700, "fresh": 60}
    for name, age in files.items():
        path = tmp_path / f"{PREVIEW_PREFIX}{name}.png"
        path.write_bytes(b"x")
        os.utime(path, (base - age, base - age))
    (tmp_path / "not-ours.png").write_bytes(b"x")
    os.utime(tmp_path / "not-ours.png", (base - 99 * 3600, base - 99 * 3600))

    def left() -> set[str]:
        return {p.name for p in tmp_path.iterdir()}

    async def settles_to(expected: set[str]) -> bool:
        # The deletion runs in a worker thread, and the virtual clock does not wait for
        # threads: give the round real time to finish without letting virtual time pass.
        import time

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if left() == expected:
                return True
            await trio.lowlevel.checkpoint()
        return False

    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_cleanup(
                lambda: config, now=lambda: base + trio.current_time(), task_status=task_status
            )
        )
        await trio.sleep(1799)
        assert len(left()) == 4
        await trio.sleep(2)  # t = 1801: the first round ran at 1800
        assert await settles_to(
            {f"{PREVIEW_PREFIX}soon.png", f"{PREVIEW_PREFIX}fresh.png", "not-ours.png"}
        )
        await trio.sleep(1800)  # t = 3601: "soon" is 24 h 15 min old now
        assert await settles_to({f"{PREVIEW_PREFIX}fresh.png", "not-ours.png"})
        config = attrs.evolve(
            config, media=attrs.evolve(config.media, cleanup_interval=60.0, preview_ttl=3600.0)
        )
        await trio.sleep(1800 + 60)  # the old interval ends, the new one (60 s) and ttl (1 h) apply
        assert await settles_to({"not-ours.png"})
        nursery.cancel_scope.cancel()


async def test_a_retry_with_the_same_idempotency_key_is_not_sent_again(running: Running) -> None:
    """POST /messages twice with one Idempotency-Key: one WhatsApp message, the same answer."""
    await connect(running)
    headers = auth() | {"Idempotency-Key": "invoice-991"}
    body = {"to": CUSTOMER, "message": "Your invoice"}
    first = await running.client.post("/agents/support-bot/messages", json=body, headers=headers)
    again = await running.client.post("/agents/support-bot/messages", json=body, headers=headers)
    assert first.status_code == again.status_code == 200, (first.text, again.text)
    assert again.json()["data"]["messageId"] == first.json()["data"]["messageId"]
    texts = [r.text for r in sim_of(running).sent("support-bot") if r.kind == "text"]
    assert texts == ["Your invoice"]
    bad = await running.client.post(
        "/agents/support-bot/messages", json=body, headers=auth() | {"Idempotency-Key": "a b"}
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "INVALID_PAYLOAD"


async def test_a_mention_by_lid_counts_even_when_pairing_did_not_capture_the_lid(
    running: Running, ai: AIBackend
) -> None:
    """The agent's LID, missing from its record, is looked up once and cached; a group message
    mentioning that LID is then forwarded."""
    await connect(running)
    gateway = running.gateway
    handle = gateway.agents.get("support-bot")
    assert handle is not None
    own = sim_of(running).account("support-bot")
    assert own is not None and own.lid
    await gateway.db.run(
        lambda conn: conn.execute("UPDATE agents SET lid = NULL WHERE agent_id = 'support-bot'")
    )
    handle.record = attrs.evolve(handle.record, lid=None)
    message = sim_of(running).inject_text(
        "support-bot", CUSTOMER, "hi lid", group=GROUP, mentions=[own.lid]
    )
    assert await handled(running, "support-bot", message.id) == "replied"
    [(lid,)] = await gateway.db.run(
        lambda conn: conn.execute(
            "SELECT lid FROM agents WHERE agent_id = 'support-bot'"
        ).fetchall()
    )
    assert lid == own.lid


async def test_one_person_is_one_conversation_whether_addressed_by_lid_or_phone(
    running: Running, ai: AIBackend
) -> None:
    """A message that arrived addressed by a LID the adapter could not resolve yet goes to the
    AI under the person's phone JID once the store knows it, like their phone-addressed ones."""
    await connect(running)
    sim = sim_of(running)
    first = sim.inject_text("support-bot", "77700011122233@lid", "by lid")
    assert first.chat == "77700011122233@lid"  # unresolved when it arrived
    sim.add_contact("6281999888777", lid="77700011122233")  # learned before it is forwarded
    assert await handled(running, "support-bot", first.id) == "replied"
    second = sim.inject_text("support-bot", "6281999888777", "by phone")
    assert await handled(running, "support-bot", second.id) == "replied"
    keys = [call.body["sessionId"] for call in ai.calls]
    assert keys == ["6281999888777@c.us", "6281999888777@c.us"]
