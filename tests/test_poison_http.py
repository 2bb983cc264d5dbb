"""Poison over HTTP (issue 8, item 3): whatever bytes a client sends — NUL, lone surrogates,
invalid UTF-8, huge or deeply nested JSON, odd numbers, duplicate keys, wrong content types,
odd path parameters — get a 4xx in the documented error shape before anything is sent to
WhatsApp or the AI is called; no agent restarts and the daemon answers normally afterwards.

Real HTTP, real PostgreSQL, a real AI backend on loopback, the simulated WhatsApp network.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio

from gatewayd.config import Config
from gatewayd.http.errors import classify
from gatewayd.store.db import map_exceptions
from tests.ai_backend import AIBackend, start_ai_backend
from tests.gateway_fixtures import Running, make_config
from tests.test_agents_api import CUSTOMER, auth, connect, png_bytes, sim_of

BODY_LIMIT = 256 * 1024
TO = f'"to":"{CUSTOMER}"'.encode()
DEEP = 100_000
JSON = {"content-type": "application/json"}
#: Words that would mean the database's wording reached a client.
DATABASE_WORDS = ("postgres", "psycopg", "sqlstate", "byte sequence", "jsonb", "utf8", "0x00")


@pytest.fixture
async def ai(nursery: trio.Nursery) -> AIBackend:
    return await start_ai_backend(nursery)


@pytest.fixture
async def gateway_config(pg_dsn: str, ai: AIBackend, tmp_path: Path) -> Config:
    return make_config(
        pg_dsn,
        server={"body_limit": BODY_LIMIT},
        ai={"backend_url": ai.url, "timeout": 2.0},
        media={"temp_dir": str(tmp_path / "previews"), "max_bytes": 64 * 1024},
        sessions={"qr_wait": 5.0, "create_qr_wait": 2.0},
    )


def refused(r: httpx.Response, status: int, code: str, *mentions: str) -> None:
    """``r`` is ``status`` in the documented shape, naming ``mentions``, no database wording."""
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "traceId"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["traceId"] == r.headers["x-request-id"]
    message = body["error"]["message"]
    for mention in mentions:
        assert mention in message, (mention, message)
    assert not any(word in message.lower() for word in DATABASE_WORDS), message


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


#: (case id, raw body, Content-Type or None, status, code, words the message must contain)
MESSAGE_CASES: list[tuple[str, bytes, str | None, int, str, tuple[str, ...]]] = [
    (
        "lone surrogate",
        b"{" + TO + b',"message":"hi \\ud800"}',
        "application/json",
        400,
        "INVALID_PAYLOAD",
        ("'message'", "surrogate"),
    ),
    (
        "low surrogate",
        b"{" + TO + b',"message":"\\udfff hi"}',
        "application/json",
        400,
        "INVALID_PAYLOAD",
        ("'message'", "surrogate"),
    ),
    (
        "NUL",
        b"{" + TO + b',"message":"a\\u0000b"}',
        "application/json",
        400,
        "INVALID_PAYLOAD",
        ("'message'", "NUL"),
    ),
    (
        "NUL in quoteId",
        b"{" + TO + b',"message":"x","quoteId":"AB\\u0000CD"}',
        None,
        400,
        "INVALID_PAYLOAD",
        ("'quoteId'",),
    ),
    (
        "surrogate in to",
        b'{"to":"62811\\ud800","message":"x"}',
        None,
        400,
        "INVALID_PAYLOAD",
        ("'to'",),
    ),
    (
        "NUL in an unread field",
        b"{" + TO + b',"message":"x","extra":{"k":["\\u0000"]}}',
        None,
        400,
        "INVALID_PAYLOAD",
        ("'extra.k[0]'",),
    ),
    (
        "surrogate in a key",
        b"{" + TO + b',"message":"x","\\ud800":1}',
        None,
        400,
        "INVALID_PAYLOAD",
        ("key",),
    ),
    (
        "invalid UTF-8",
        b"{" + TO + b',"message":"\xff\xfe caf\xe9"}',
        "application/json",
        400,
        "INVALID_PAYLOAD",
        ("UTF-8", "0xff"),
    ),
    (
        "100k nested arrays",
        b"{" + TO + b',"message":"x","a":' + nested(DEEP) + b"}",
        None,
        400,
        "INVALID_PAYLOAD",
        ("nests deeper",),
    ),
    (
        "100 nested arrays",
        b"{" + TO + b',"message":"x","a":' + nested(100) + b"}",
        None,
        400,
        "INVALID_PAYLOAD",
        ("nests deeper",),
    ),
    ("array body", b'["hi"]', None, 400, "INVALID_PAYLOAD", ("JSON object",)),
    ("string body", b'"hi"', None, 400, "INVALID_PAYLOAD", ("JSON object",)),
    ("null body", b"null", None, 400, "INVALID_PAYLOAD", ("JSON object",)),
    ("empty body", b"", None, 400, "INVALID_PAYLOAD", ("JSON object",)),
    ("1e999", b"{" + TO + b',"message":"x","n":1e999}', None, 400, "INVALID_PAYLOAD", ("1e999",)),
    ("NaN", b"{" + TO + b',"message":"x","n":NaN}', None, 400, "INVALID_PAYLOAD", ("NaN",)),
    (
        "-Infinity",
        b"{" + TO + b',"message":"x","n":-Infinity}',
        None,
        400,
        "INVALID_PAYLOAD",
        ("Infinity",),
    ),
    (
        "5000-digit integer",
        b"{" + TO + b',"message":"x","n":' + b"9" * 5000 + b"}",
        None,
        400,
        "INVALID_PAYLOAD",
        ("not valid JSON",),
    ),
    (
        "duplicate key",
        b"{" + TO + b',"message":"a","message":"b"}',
        None,
        400,
        "INVALID_PAYLOAD",
        ("'message' more than once",),
    ),
    (
        "text/plain",
        b"{" + TO + b',"message":"x"}',
        "text/plain",
        415,
        "UNSUPPORTED_MEDIA_TYPE",
        ("application/json", "text/plain"),
    ),
    (
        "form",
        b"to=1&message=x",
        "application/x-www-form-urlencoded",
        415,
        "UNSUPPORTED_MEDIA_TYPE",
        ("application/json",),
    ),
    (
        "huge body",
        b"{" + TO + b',"message":"' + b"x" * BODY_LIMIT + b'"}',
        None,
        413,
        "PAYLOAD_TOO_LARGE",
        (str(BODY_LIMIT),),
    ),
]


async def nothing_happened(running: Running, ai: AIBackend, agent_id: str = "support-bot") -> None:
    """Nothing was sent, the AI was not called, the agent never restarted, and the daemon
    still serves: a normal send goes out."""
    assert sim_of(running).sent(agent_id) == []
    assert ai.calls == []
    handle = running.gateway.agents.get(agent_id)
    assert handle is not None and handle.restarts == 0 and handle.connected
    r = await running.client.post(
        f"/agents/{agent_id}/messages",
        json={"to": CUSTOMER, "message": "still here"},
        headers=auth(),
    )
    assert r.status_code == 200, r.text
    assert [s.text for s in sim_of(running).sent(agent_id)] == ["still here"]
    assert (await running.client.get("/health")).status_code == 200


async def test_poisoned_message_bodies_are_refused_before_sending(
    running: Running, ai: AIBackend
) -> None:
    """Every poisoned /messages body is a 4xx naming the problem; nothing is sent, no restart."""
    await connect(running)
    for case, body, content_type, status, code, mentions in MESSAGE_CASES:
        headers = auth() | ({"content-type": content_type} if content_type else {})
        r = await running.client.post("/agents/support-bot/messages", content=body, headers=headers)
        try:
            refused(r, status, code, *mentions)
            if status == 413:  # the unread rest is on the wire: the connection must not be reused
                assert r.headers["connection"] == "close"
        except AssertionError as exc:
            raise AssertionError(f"case {case!r}: {exc}") from None
    await nothing_happened(running, ai)


RUN_CASES: list[tuple[str, bytes, tuple[str, ...]]] = [
    (
        "NUL in nested metadata",
        b'{"message":"hi","sessionId":"'
        + CUSTOMER.encode()
        + b'","metadata":{"chat_name":"VIP\\u0000"}}',
        ("'metadata.chat_name'", "NUL"),
    ),
    (
        "surrogate in a parameters list",
        b'{"input":"hi","parameters":{"tags":["ok","\\udbff"]}}',
        ("'parameters.tags[1]'",),
    ),
    ("NUL in the message", b'{"message":"\\u0000"}', ("'message'",)),
    ("NUL in a key", b'{"message":"hi","metadata":{"a\\u0000b":1}}', ("'metadata (a key)'",)),
    ("surrogate pair split by NUL", b'{"message":"\\ud83d\\u0000\\ude00"}', ("'message'",)),
    ("invalid UTF-8", b'{"message":"\xc3\x28"}', ("UTF-8",)),
    ("deep metadata", b'{"message":"hi","metadata":' + nested(DEEP) + b"}", ("nests deeper",)),
    ("1e999", b'{"message":"hi","parameters":{"max_steps":1e999}}', ("out of range",)),
    ("duplicate sessionId", b'{"message":"hi","sessionId":"1","sessionId":"2"}', ("'sessionId'",)),
]


async def test_poisoned_run_bodies_never_reach_the_ai(running: Running, ai: AIBackend) -> None:
    """NUL, lone surrogates and the rest anywhere in a /run body are 400 before the AI call."""
    await connect(running)
    for case, body, mentions in RUN_CASES:
        r = await running.client.post(
            "/agents/support-bot/run", content=body, headers=auth() | JSON
        )
        try:
            refused(r, 400, "INVALID_PAYLOAD", *mentions)
        except AssertionError as exc:
            raise AssertionError(f"case {case!r}: {exc}") from None
    rows = await running.gateway.db.run(
        lambda conn: conn.execute("SELECT count(*) FROM ai_executions").fetchone()
    )
    assert rows == (0,)
    await nothing_happened(running, ai)


async def test_an_ai_answer_with_nul_is_stored_cleaned_and_replied_cleaned(
    running: Running, ai: AIBackend
) -> None:
    """NUL in the AI's answer: /run answers 200, the execution is stored cleaned with the
    original kept, and a forwarded message's reply goes out with U+FFFD."""
    await connect(running)
    ai.reply = "a\x00b"
    r = await running.client.post("/agents/support-bot/run", json={"message": "hi"}, headers=auth())
    assert r.status_code == 200, r.text
    [(reply, escaped)] = await running.gateway.db.run(
        lambda conn: conn.execute(
            "SELECT response->>'reply', response->'$escaped' FROM ai_executions"
        ).fetchall()
    )
    assert reply == "a\ufffdb" and escaped == {"reply": '"a\\u0000b"'}
    inbound = sim_of(running).inject_text("support-bot", CUSTOMER, "question")
    from tests.test_agents_api import handled

    assert await handled(running, "support-bot", inbound.id) == "replied"
    assert sim_of(running).sent("support-bot")[-1].text == "a\ufffdb"
    assert running.gateway.agents.get("support-bot").restarts == 0  # type: ignore[union-attr]


async def test_valid_unicode_still_goes_through(running: Running, ai: AIBackend) -> None:
    """Astral characters (a surrogate pair in JSON), other control characters and a BOM pass."""
    await connect(running)
    body = b"\xef\xbb\xbf{" + TO + b',"message":"smile \\ud83d\\ude00 \\u0007 caf\xc3\xa9"}'
    r = await running.client.post("/agents/support-bot/messages", content=body, headers=auth())
    assert r.status_code == 200, r.text
    assert sim_of(running).sent("support-bot")[-1].text == "smile \U0001f600 \x07 café"
    r = await running.client.post(
        "/agents/support-bot/run",
        content=b'{"message":"\\ud83d\\ude00","metadata":{"n":1e308}}',
        headers=auth() | {"content-type": "application/vnd.api+json; charset=utf-8"},
    )
    assert r.status_code == 200, r.text
    assert ai.calls[-1].body["message"] == "\U0001f600"


async def test_poisoned_media_bodies_are_refused(running: Running, ai: AIBackend) -> None:
    """A NUL caption or a lone surrogate in a filename is 400 before any media is sent."""
    import base64

    await connect(running)
    data = base64.b64encode(png_bytes()).decode().encode()
    for field, value in [(b"caption", b"a\\u0000"), (b"filename", b"x\\udc80.png")]:
        body = b"{" + TO + b',"data":"' + data + b'","' + field + b'":"' + value + b'"}'
        r = await running.client.post("/agents/support-bot/media", content=body, headers=auth())
        refused(r, 400, "INVALID_PAYLOAD", f"'{field.decode()}'")
    await nothing_happened(running, ai)


async def test_poisoned_session_bodies_create_nothing(running: Running) -> None:
    """NUL or a lone surrogate in userId, agentName or apikey is 400; no session is created."""
    good = b'"agentId":"bot-p","userId":"u1","agentName":"P","apikey":"k"'
    for field, value in [
        (b"userId", b"u\\u0000"),
        (b"agentName", b"P\\ud800"),
        (b"apikey", b"k\\u0000"),
        (b"agentId", b"bot\\u0000"),
    ]:
        body = b"{" + good.replace(b'"' + field + b'":"', b'"' + field + b'":"' + value, 1) + b"}"
        r = await running.client.post("/sessions", content=body, headers=JSON)
        refused(r, 400, "INVALID_PAYLOAD", f"'{field.decode()}'")
    refused(await running.client.get("/sessions/bot-p"), 404, "SESSION_NOT_FOUND")
    assert running.gateway.agents.get("bot-p") is None
    r = await running.client.post(
        "/sessions", content=b"{" + good + b"}", headers={"content-type": "text/plain"}
    )
    refused(r, 415, "UNSUPPORTED_MEDIA_TYPE")


@pytest.mark.parametrize(
    "path",
    [
        "/agents/%00/messages",
        "/agents/bot%00x/run",
        "/agents/%ff%fe/messages",
        "/agents/%ED%A0%80/media",
        "/sessions/%00",
        "/sessions/%C3%28/reconnect",
        "/sessions/%ED%B2%80/qr",
    ],
)
async def test_odd_path_parameters_are_4xx(running: Running, path: str) -> None:
    """An agent id with NUL, invalid UTF-8 or an encoded surrogate is a 4xx, never a 500."""
    method = "GET" if path.startswith("/sessions/%00") else "POST"
    r = await running.client.request(
        method, path, content=b'{"to":"1","message":"x"}', headers=auth() | JSON
    )
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert set(r.json()["error"]) == {"code", "message", "traceId"}
    assert (await running.client.get("/health")).status_code == 200


async def test_odd_query_strings_and_headers_are_harmless(running: Running, ai: AIBackend) -> None:
    """%00 and invalid UTF-8 in query strings, and non-ASCII bytes in headers, change nothing."""
    await connect(running)
    for path in ["/health?x=%00&y=%ff", "/sessions/support-bot?x=%00%ED%A0%80", "/metrics?%ff"]:
        r = await running.client.get(path)
        assert r.status_code == 200, (path, r.text)
    r = await running.client.post(
        "/agents/support-bot/messages?x=%00",
        json={"to": CUSTOMER, "message": "q"},
        headers={"Authorization": b"Bearer \xff\xfe", "X-Request-ID": b"\xff\x01"},
    )
    refused(r, 401, "UNAUTHORIZED")
    assert r.headers["x-request-id"].isalnum()
    assert sim_of(running).sent("support-bot") == []
    await nothing_happened(running, ai)


async def test_database_wording_never_reaches_a_client(running: Running) -> None:
    """A real PostgreSQL error classifies to a fixed message: its wording stays in the log."""

    def fail(conn: object) -> None:
        with map_exceptions():
            conn.execute("SELECT %s::text", ("a\x00b",))  # type: ignore[attr-defined]

    def reject_jsonb(conn: object) -> None:
        with map_exceptions():
            conn.execute('SELECT \'{"a": "\\u0000"}\'::jsonb')  # type: ignore[attr-defined]

    for action in (fail, reject_jsonb):
        try:
            await running.gateway.db.run(action)
        except Exception as exc:  # noqa: BLE001 - whatever the store raised, classify it
            status, code, message, details = classify(exc)
        else:
            raise AssertionError("PostgreSQL accepted NUL")
        assert status == 500 and code == "INTERNAL" and details is None
        assert message == "Internal server error"


async def test_sim_bodies_may_carry_poison_text_but_not_poison_json(running: Running) -> None:
    """Under /_sim/ (what WhatsApp sends) NUL and lone surrogates pass the edge; deep JSON does not."""
    r = await running.client.post(
        "/_sim/contacts",
        content=b'{"phone":"' + CUSTOMER.encode() + b'","pushName":"a\\u0000\\ud800"}',
        headers=JSON,
    )
    assert r.status_code == 200, r.text
    r = await running.client.post(
        "/_sim/contacts", content=b'{"phone":"1","x":' + nested(DEEP) + b"}", headers=JSON
    )
    refused(r, 400, "INVALID_PAYLOAD", "nests deeper")
