"""Poison over /api/v1 (issue 10): odd path ids, query parameters, credentials and bodies on
every /api/v1 route get a 4xx in the /api/v1 error shape — never a 5xx — and the daemon's log
never carries a PIN, a login token or an API key.

Real HTTP, real PostgreSQL, the simulated WhatsApp network (docs/contract/api-v1.md §2–§9).
Each test sends a table of requests and reports every case that went wrong at once.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import structlog.testing
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gatewayd.config import Config
from tests.gateway_fixtures import Running, make_config
from tests.loopback import serve_app
from tests.test_api_v1 import basic, bearer, new_user

BODY_LIMIT = 256 * 1024
#: Budgets high enough that a table of refused requests is never answered 429 instead.
LIMITS = {
    "requests_per_minute": 100_000,
    "anonymous_requests_per_minute": 100_000,
    "login_attempts_per_minute": 100_000,
    "login_attempts_global_per_minute": 100_000,
}
UNKNOWN_SESSION = "00000000-0000-4000-8000-000000000000"
JSON = {"content-type": "application/json"}

#: (label, method, path, keyword arguments of httpx's request)
Case = tuple[str, str, str, dict[str, Any]]


@pytest.fixture
async def gateway_config(pg_dsn: str, request: pytest.FixtureRequest) -> Config:
    sections: dict[str, dict[str, Any]] = {
        "server": {"body_limit": BODY_LIMIT},
        "auth": LIMITS,
        "sessions": {"create_qr_wait": 2.0},
    }
    for name, values in getattr(request, "param", {}).items():
        sections.setdefault(name, {}).update(values)
    return make_config(pg_dsn, **sections)


@pytest.fixture
async def user(running: Running) -> dict[str, str]:
    """A logged-in user with one session created (not started) and one API key."""
    client = running.client
    _, _, token = await new_user(client)
    made = await client.post(
        "/api/v1/sessions", json={"session_name": "poison"}, headers=bearer(token)
    )
    assert made.status_code == 201, made.text
    key = await client.post("/api/v1/keys", json={"name": "k"}, headers=bearer(token))
    assert key.status_code == 201, key.text
    return {
        "token": token,
        "session": made.json()["data"]["session_id"],
        "key": key.json()["data"]["key"],
        "key_id": key.json()["data"]["id"],
    }


def shape_problem(r: httpx.Response, status: int | None, code: str | None) -> str | None:
    """Why ``r`` is not a 4xx (``status`` if given) in the /api/v1 error shape, or None."""
    if not 400 <= r.status_code < 500 or (status is not None and r.status_code != status):
        return f"status {r.status_code} (want {status or '4xx'}): {r.text[:300]}"
    try:
        body = r.json()
    except ValueError:
        return f"status {r.status_code}, not JSON: {r.text[:300]!r}"
    error = body.get("error") if isinstance(body, dict) else None
    if set(body) != {"success", "error"} or body["success"] is not False:
        return f"not the /api/v1 error shape: {body}"
    if not isinstance(error, dict) or set(error) - {"details"} != {"code", "message", "traceId"}:
        return f"error object is {error}"
    if error["traceId"] != r.headers.get("x-request-id") or not error["message"]:
        return f"traceId or message wrong: {error}, header {r.headers.get('x-request-id')}"
    if code is not None and error["code"] != code:
        return f"code {error['code']} (want {code}): {error['message']}"
    return None


async def expect_refused(
    client: httpx.AsyncClient, cases: list[Case], status: int | None = None, code: str | None = None
) -> None:
    """Every case answers a 4xx (``status``/``code`` when given) in the /api/v1 error shape."""
    problems = []
    for label, method, path, kwargs in cases:
        try:
            r = await client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            problems.append(f"{label} ({method} {path[:80]}): no answer: {exc!r}")
            continue
        problem = shape_problem(r, status, code)
        if problem is not None:
            problems.append(f"{label} ({method} {path[:80]}): {problem}")
    assert not problems, "\n".join(problems)
    assert (await client.get("/health")).status_code == 200


#: Path ids that are no session: not a UUID, very long, NUL, unicode, encoded surrogates,
#: invalid UTF-8, a path escape, and a well-formed UUID nobody has.
ODD_IDS = [
    "not-a-uuid",
    "x" * 4000,
    "%00",
    UNKNOWN_SESSION[:-1] + "%00",
    "%C3%A9t%C3%A9%E2%9C%93",
    "%ED%A0%80",
    "%ff%fe",
    "%20",
    "-1",
    UNKNOWN_SESSION,
]

BY_ID_ROUTES = [
    ("GET", ""),
    ("PUT", ""),
    ("DELETE", ""),
    ("POST", "/start"),
    ("POST", "/reconnect"),
    ("GET", "/qr"),
    ("POST", "/send"),
    ("GET", "/messages"),
    ("POST", "/pair-code"),
]
#: A body every by-id route accepts, so only the id can be wrong.
GOOD_BODY = {"session_name": "n", "to": "6281234567890", "content": "x", "phone": "6281234567890"}


async def test_odd_session_ids_are_404_on_every_by_id_route(
    running: Running, user: dict[str, str]
) -> None:
    """An id that is no session of the user is 404 SESSION_NOT_FOUND on every by-id route."""
    auth = bearer(user["token"])
    cases: list[Case] = [
        (repr(odd[:20]), method, f"/api/v1/sessions/{odd}{suffix}", {"headers": auth} | body)
        for odd in ODD_IDS
        for method, suffix in BY_ID_ROUTES
        for body in [{"json": GOOD_BODY} if method in ("PUT", "POST") else {}]
    ]
    await expect_refused(running.client, cases, 404, "SESSION_NOT_FOUND")
    # An encoded '/' is a '/' to the router: no route matches, which is 404 NOT_FOUND.
    escape = f"/api/v1/sessions/..%2F..%2Fkeys/{user['key_id']}"
    await expect_refused(running.client, [("escape", "DELETE", escape, {"headers": auth})], 404)


async def test_odd_key_ids_are_404(running: Running, user: dict[str, str]) -> None:
    """DELETE /api/v1/keys/{id} with an id that is none of the user's keys is 404 NOT_FOUND,
    another user's key included; the key still works afterwards."""
    client = running.client
    _, _, other = await new_user(client)
    odd = ["abc", "0", "-1", "9" * 18, "9" * 19, "%D9%A3", "%00", "1%00", "x" * 4000, "1.0"]
    cases: list[Case] = [
        (repr(k[:20]), "DELETE", f"/api/v1/keys/{k}", {"headers": bearer(user["token"])})
        for k in odd
    ]
    cases.append(
        ("other's key", "DELETE", f"/api/v1/keys/{user['key_id']}", {"headers": bearer(other)})
    )
    await expect_refused(client, cases, 404, "NOT_FOUND")
    assert (await client.get("/api/v1/sessions", headers=bearer(user["key"]))).status_code == 200


FORGED_CURSORS = [
    {"t": "x", "i": 1},
    {"t": "2024-01-01T00:00:00+00:00", "i": 0},
    {"t": "2024-01-01T00:00:00+00:00", "i": 1e300},
    {"t": "2024-01-01T00:00:00+00:00", "i": True},
    {"t": "2024-01-01T00:00:00", "i": 1},
    {"t": "2024-01-01T00:00:00+00:00", "i": 2**63},
    {"t": "2024-01-01T00:00:00+00:00"},
    [1, 2],
]


def b64(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


BAD_QUERIES = [
    "limit=abc",
    "limit=0",
    "limit=10000",
    "limit=-1",
    "limit=",
    "limit=1.5",
    "limit=%C2%B2",  # '²': str.isdigit() says yes, int() says no
    "limit=%EF%BC%95",  # a fullwidth 5
    "limit=" + "9" * 5000,  # past int()'s digit limit
    "limit=%00",
    "since=garbage",
    "since=%00",
    "since=Z",
    "since=2024-01-01T00:00:00%2B99:00",
    "until=2024-13-99",
    "until=" + "9" * 5000,
    "cursor=!!!",
    "cursor=%00",
    "cursor=" + "A" * 10_000,
    "cursor=%C3%A9",
    "direction=x",
    "direction=%00",
    "direction=INCOMING",
    "type=x",
    "type=%00",
    "type=TEXT",
    *(f"cursor={b64(forged)}" for forged in FORGED_CURSORS),
]

#: Odd but meaningful: a valid answer, not an error.
ODD_GOOD_QUERIES = [
    "limit=200",
    "since=0001-01-01T00:00:00%2B14:00",
    "until=9999-12-31T23:59:59-23:59",
    "since=2024-01-01",
    f"cursor={b64({'t': '0001-01-01T00:00:00+14:00', 'i': 1})}",
    f"cursor={b64({'t': '9999-12-31T23:59:59.999999-23:59', 'i': 2**63 - 1})}",
    "limit=1&limit=2&x=%00&y=%ff",
]


async def test_odd_message_log_queries_are_400(running: Running, user: dict[str, str]) -> None:
    """Every bad message-log parameter is 400 INVALID_REQUEST naming the field; odd but valid
    ones (extreme times, extreme cursors) answer a page."""
    client, auth = running.client, bearer(user["token"])
    path = f"/api/v1/sessions/{user['session']}/messages"
    cases: list[Case] = [(q[:40], "GET", f"{path}?{q}", {"headers": auth}) for q in BAD_QUERIES]
    await expect_refused(client, cases, 400, "INVALID_REQUEST")
    for query in BAD_QUERIES:
        details = (await client.get(f"{path}?{query}", headers=auth)).json()["error"]["details"]
        assert details["field"] == query.partition("=")[0], (query[:40], details)
    for query in ODD_GOOD_QUERIES:
        r = await client.get(f"{path}?{query}", headers=auth)
        assert r.status_code == 200, (query, r.text)
        assert r.json()["data"] == {"messages": [], "next_cursor": None}


AGENT_ROUTES = [
    ("GET", "/api/v1/sessions/status"),
    ("GET", "/api/v1/sessions/detail"),
    ("PUT", "/api/v1/sessions/reconnect"),
    ("DELETE", "/api/v1/sessions/delete"),
    ("POST", "/api/v1/messages/send"),
    ("POST", "/api/v1/langchain/execute"),
    ("POST", "/api/v1/sessions/create"),
]
#: Everything else the body-reading routes need, so only ``agentId`` can be wrong.
AGENT_BODY = {
    "to": "6281234567890",
    "message": "x",
    "langchainUrl": "https://example.com/x",
    "apiKey": "k",
    "input": {},
}


async def test_odd_agent_ids_are_400(running: Running, user: dict[str, str]) -> None:
    """A missing or malformed agentId, in the query or the body, is 400 on every agent route."""
    auth = bearer(user["token"])
    query_ids = ["%00", "a" * 10_240, "", "%ED%A0%80", "a%20b", "%C3%A4"]
    body_ids: list[object] = [None, True, [], {}, "", " ", "x" * 10_000, "a b", "ä", 1.5, -1]
    cases: list[Case] = []
    for method, path in AGENT_ROUTES:
        for odd in query_ids:
            cases.append(
                (
                    f"query {odd[:12]!r}",
                    method,
                    f"{path}?agentId={odd}",
                    {"headers": auth, "json": AGENT_BODY},
                )
            )
        for value in body_ids:
            body = AGENT_BODY | {"agentId": value}
            cases.append(
                (f"body {str(value)[:12]!r}", method, path, {"headers": auth, "json": body})
            )
        raw = b'{"agentId":"a\\u0000b"}'
        cases.append(("body NUL", method, path, {"headers": auth | JSON, "content": raw}))
    await expect_refused(running.client, cases, 400, "INVALID_REQUEST")
    missing = await running.client.get("/api/v1/sessions/status?agentId=nobody", headers=auth)
    assert shape_problem(missing, 404, "SESSION_NOT_FOUND") is None, missing.text


def basic_raw(raw: bytes) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


async def test_odd_login_credentials_are_401(running: Running) -> None:
    """Garbage base64, non-UTF-8, an empty or huge PIN, NUL, another scheme: 401 UNAUTHORIZED."""
    odd_headers: list[dict[str, Any]] = [
        {},
        {"Authorization": "Basic !!!!"},
        {"Authorization": "Basic QUFBQUFBOg"},  # padding missing
        {"Authorization": "Basic"},
        {"Authorization": "Bearer QUFBQUFBOg=="},
        {"Authorization": b"Basic \xff\xfe"},
        basic_raw(b"\xff\xfe\xfd:"),
        basic_raw(b":"),
        basic_raw(b"\x00AAAAA:"),
        basic_raw(b"A" * 10_000 + b":"),
        basic_raw("ÄÖÜ123:".encode()),
        basic_raw(b"no colon at all"),
    ]
    cases: list[Case] = [
        (f"login {i}", "POST", "/api/v1/auth/login", {"headers": h})
        for i, h in enumerate(odd_headers)
    ]
    await expect_refused(running.client, cases, 401, "UNAUTHORIZED")


async def test_undecodable_basic_credentials_count_as_failed_logins(running: Running) -> None:
    """Basic credentials that are not base64 or not UTF-8 are failed logins: counted as
    malformed (and so throttled) like a malformed PIN, with the same message."""
    registry = running.gateway.metrics.registry

    def malformed() -> float:
        labels = {"reason": "malformed"}
        return registry.get_sample_value("gatewayd_login_failures_total", labels) or 0.0

    before = malformed()
    answers = [
        await running.client.post("/api/v1/auth/login", headers=headers)
        for headers in [{"Authorization": "Basic !!!!"}, basic_raw(b"\xff\xfe:")]
    ]
    assert malformed() - before == 2
    assert [a.json()["error"]["message"] for a in answers] == ["invalid PIN"] * 2


async def test_odd_credentials_are_401(running: Running, user: dict[str, str]) -> None:
    """Odd Bearer tokens and X-API-Keys on a user route are 401 in the error shape."""
    forged_key = "gwd_" + "A" * 43
    odd_headers: list[dict[str, Any]] = [
        {},
        {"Authorization": "Basic " + base64.b64encode(b"AAAAAA:").decode()},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer a b c"},
        {"Authorization": f"Bearer {user['token'][:-2]} {user['token'][-2:]}"},
        {"Authorization": "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."},
        {"Authorization": "Bearer a.b.c"},
        {"Authorization": "Bearer ...."},
        {"Authorization": b"Bearer \xc3\xa9\xff"},
        {"Authorization": "Bearer gwd_"},
        {"Authorization": "Bearer gwd_" + "x" * 5000},
        {"Authorization": "Bearer " + "x" * 5000},
        {"Authorization": f"Bearer {forged_key}"},
        {"X-API-Key": forged_key},
        {"X-API-Key": b"gwd_\xff\xfe"},
        {"X-API-Key": b"\xc3\xa9"},
        {"X-API-Key": "x" * 5000},
        {"Authorization": "Bearer nope", "X-API-Key": user["key"]},
    ]
    cases: list[Case] = [
        (f"credential {i}", method, path, {"headers": h})
        for i, h in enumerate(odd_headers)
        for method, path in [
            ("GET", "/api/v1/sessions"),
            ("GET", f"/api/v1/sessions/{user['session']}"),
            ("POST", "/api/v1/keys"),
            ("GET", "/api/v1/sessions/status?agentId=x"),
            ("POST", "/api/v1/auth/logout"),
        ]
    ]
    await expect_refused(running.client, cases, 401)


async def test_a_100_kb_credential_is_refused_without_a_5xx(
    running: Running, user: dict[str, str]
) -> None:
    """A 100 KB Bearer token or X-API-Key is a 4xx (or a closed connection), never a 5xx, and
    the daemon serves the next request."""
    client = running.client
    for headers in [{"Authorization": "Bearer " + "x" * 100_000}, {"X-API-Key": "y" * 100_000}]:
        try:
            r = await client.get("/api/v1/sessions", headers=headers)
        except httpx.HTTPError:
            continue  # refused by the HTTP server before any handler: acceptable
        assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    assert (await client.get("/api/v1/sessions", headers=bearer(user["token"]))).status_code == 200


#: http(s) URLs that no HTTP client can open: an unclosed bracket, an empty host.
UNPARSABLE_URLS = ["http://[::1/x", "https://@/x"]


def bodies_for(path: str, good: dict[str, Any], bad: list[dict[str, Any]]) -> list[Case]:
    return [(f"{path} {json.dumps(b)[:60]}", "POST", path, {"json": good | b}) for b in bad]


RAW_BODIES: list[tuple[str, bytes, dict[str, str]]] = [
    ("not JSON", b"session_name=x", JSON),
    ("array", b'[{"session_name":"x"}]', JSON),
    ("string", b'"x"', JSON),
    ("null", b"null", JSON),
    ("empty", b"", JSON),
    ("nested", b'{"session_name":' + b"[" * 10_000 + b"]" * 10_000 + b"}", JSON),
    ("NUL", b'{"session_name":"a\\u0000"}', JSON),
    ("surrogate", b'{"session_name":"a\\ud800"}', JSON),
    ("invalid UTF-8", b'{"session_name":"\xff"}', JSON),
    ("duplicate key", b'{"session_name":"a","session_name":"b"}', JSON),
    ("NaN", b'{"session_name":"a","n":NaN}', JSON),
    ("text/plain", b'{"session_name":"a"}', {"content-type": "text/plain"}),
    ("huge", b'{"session_name":"' + b"x" * BODY_LIMIT + b'"}', JSON),
]


async def test_unreadable_bodies_are_refused_on_every_body_route(
    running: Running, user: dict[str, str]
) -> None:
    """A body that is not a JSON object (or too big, or not JSON) is a 4xx on every route
    that reads one."""
    auth = bearer(user["token"])
    session = f"/api/v1/sessions/{user['session']}"
    routes = [
        ("POST", "/api/v1/sessions"),
        ("PUT", session),
        ("POST", f"{session}/send"),
        ("POST", f"{session}/pair-code"),
        ("POST", "/api/v1/keys"),
        ("POST", "/api/v1/sessions/create"),
        ("POST", "/api/v1/messages/send"),
        ("POST", "/api/v1/langchain/execute"),
        ("GET", "/api/v1/sessions/status"),
        ("DELETE", "/api/v1/sessions/delete"),
    ]
    cases: list[Case] = [
        (label, method, path, {"headers": auth | headers, "content": raw})
        for method, path in routes
        for label, raw, headers in RAW_BODIES
        if not (label == "empty" and (path == "/api/v1/keys" or method in ("GET", "DELETE")))
    ]
    await expect_refused(running.client, cases)


async def test_wrong_field_types_on_dashboard_routes_are_400(
    running: Running, user: dict[str, str]
) -> None:
    """Every field of the dashboard family's bodies, of the wrong type or shape, is 400."""
    client, auth = running.client, bearer(user["token"])
    session = f"/api/v1/sessions/{user['session']}"
    names: list[dict[str, Any]] = [
        {"session_name": v} for v in (5, None, "", " ", "x" * 101, [], {}, True)
    ]
    hooks: list[dict[str, Any]] = [
        {"webhook_url": v}
        for v in (
            5,
            [],
            "not a url",
            "javascript:alert(1)",
            "http://",
            "http://" + "a" * 10_240,
            "ftp://example.com/x",
            "file:///etc/passwd",
            "http://a b/",
            "//example.com/x",
        )
    ]
    cases = bodies_for("/api/v1/sessions", {"session_name": "n"}, names + hooks)
    cases += [
        (f"PUT {json.dumps(b)[:60]}", "PUT", session, {"json": b})
        for b in [{}, {"other": 1}, *names, *hooks]
    ]
    send = f"{session}/send"
    text = {"to": "6281234567890", "type": "text", "content": "x"}
    image = {"to": "6281234567890", "type": "image"}
    cases += bodies_for(
        send,
        text,
        [
            *({"to": v} for v in ({}, [], True, None, 1.5, "", "abc", "+", "1" * 1000)),
            *({"type": v} for v in ("sticker", "x", 5, [], None, "TEXT")),
            *({"content": v} for v in (5, [], "", " ", None)),
            *({"quoted_message_id": v} for v in (5, [], "x" * 200, "!!!", "é" * 10)),
            {"filename": 5},
            {"filename": "x" * 300},
        ],
    )
    private = [
        "http://127.0.0.1/x.png",
        "http://10.0.0.1/a.jpg",
        "http://localhost/x",
        "http://[::1]/x",
        "http://169.254.169.254/latest/meta-data",
        "http://2130706433/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://0.0.0.0/x",
    ]
    cases += bodies_for(
        send,
        image,
        [
            {},
            *(
                {"media_url": v}
                for v in (5, [], "", "javascript:alert(1)", "file:///etc/passwd", "ftp://x/y")
            ),
            *({"media_url": v} for v in UNPARSABLE_URLS),
            *({"media_url": v} for v in private),
            *({"media_url": v, "type": t} for v in private[:1] for t in ("document", "audio")),
        ],
    )
    cases += bodies_for(
        f"{session}/pair-code",
        {},
        [{}, *({"phone": v} for v in ({}, [], True, "abc", "", "1" * 100, None))],
    )
    cases += bodies_for(
        "/api/v1/keys", {}, [{"name": v} for v in (5, [], {}, "", " ", "x" * 101, "a\u0007b")]
    )
    await expect_refused(
        client, [(lbl, m, p, kw | {"headers": auth}) for lbl, m, p, kw in cases], 400
    )
    # Nothing was stored: the session kept its name and has no webhook.
    got = (await client.get(session, headers=auth)).json()["data"]
    assert (got["session_name"], got["webhook_url"]) == ("poison", None)
    listed = (await client.get("/api/v1/sessions", headers=auth)).json()["data"]
    assert [s["session_id"] for s in listed] == [user["session"]]


async def test_wrong_field_types_on_agent_routes_are_400(
    running: Running, user: dict[str, str]
) -> None:
    """Every field of the agent family's bodies, of the wrong type or shape, is 400, and
    another user's agentId is 409 on create; the Langchain URL and key are checked before any
    request goes out."""
    client, auth = running.client, bearer(user["token"])
    agent = user["session"]  # a dashboard session's agentId is its id in text
    cases = bodies_for(
        "/api/v1/sessions/create",
        {"agentId": "poison-agent"},
        [
            *({"agentName": v} for v in (5, "", " ", "x" * 201, [], None)),
            *({"userId": v} for v in ([], {}, 1.5, True)),
        ],
    )
    cases += bodies_for(
        "/api/v1/messages/send",
        {"agentId": agent, "to": "6281234567890", "message": "x"},
        [
            *({"type": v} for v in ("image", 5, [], None)),
            *({"to": v} for v in ({}, [], True, None, "abc")),
            *({"message": v} for v in (5, None, "", [], {})),
        ],
    )
    cases += bodies_for(
        "/api/v1/langchain/execute",
        {"agentId": agent, "langchainUrl": "https://example.com/x", "apiKey": "k", "input": {}},
        [
            *({"input": v} for v in ("text", [], None, 5, True)),
            *(
                {"langchainUrl": v}
                for v in (
                    "file:///etc/passwd",
                    "ftp://example.com/x",
                    "javascript:alert(1)",
                    "http://",
                    "//example.com/x",
                    "http://[::1",
                    "https://example.com/" + "x" * 3000,
                    5,
                    None,
                    "",
                    "http://127.0.0.1:1/x",
                    "http://[::1]:1/x",
                    "http://10.1.2.3/x",
                )
            ),
            *({"langchainUrl": v} for v in UNPARSABLE_URLS),
            *({"apiKey": v} for v in (None, 5, "", [], "k" * 5000)),
            *({"sessionId": v} for v in ({}, [], True, "abc")),
        ],
    )
    idempotency = [
        ("idempotency " + repr(v)[:20], "POST", "/api/v1/messages/send",
         {"json": {"agentId": agent, "to": "6281234567890", "message": "x"},
          "headers": {"Idempotency-Key": v}})
        for v in ("a b", b"\xc3\xa9", "x" * 300, "")
    ]  # fmt: skip
    cases = [(lbl, m, p, kw | {"headers": auth}) for lbl, m, p, kw in cases]
    cases += [(lbl, m, p, kw | {"headers": auth | kw["headers"]}) for lbl, m, p, kw in idempotency]
    missing_key = {"agentId": agent, "langchainUrl": "https://example.com/x", "input": {}}
    cases.append(
        (
            "apiKey missing",
            "POST",
            "/api/v1/langchain/execute",
            {"json": missing_key, "headers": auth},
        )
    )
    await expect_refused(client, cases, 400, "INVALID_REQUEST")
    _, _, other = await new_user(client)
    taken = await client.post(
        "/api/v1/sessions/create", json={"agentId": agent}, headers=bearer(other)
    )
    assert shape_problem(taken, 409, "CONFLICT") is None, taken.text
    rows = await running.gateway.db.run(
        lambda conn: conn.execute("SELECT count(*) FROM ai_executions").fetchone()
    )
    assert rows == (0,)
    assert running.gateway.agents.get("poison-agent") is None


@pytest.fixture
async def langchain_url(nursery: trio.Nursery) -> AsyncIterator[str]:
    """A Langchain endpoint on loopback that answers every POST with ``{"output": "ok"}``."""

    async def answer(request: Request) -> JSONResponse:
        return JSONResponse({"output": "ok"})

    yield await serve_app(nursery, Starlette(routes=[Route("/run", answer, methods=["POST"])]))


@pytest.mark.parametrize("gateway_config", [{"media": {"allow_private_urls": True}}], indirect=True)
async def test_a_langchain_key_that_cannot_be_a_header_is_400(
    running: Running, user: dict[str, str], langchain_url: str
) -> None:
    """An apiKey with a line break or non-ASCII text (it goes out in a header) is 400, not a
    5xx; a plain key reaches the endpoint."""
    client, auth = running.client, bearer(user["token"])
    body = {"agentId": user["session"], "langchainUrl": f"{langchain_url}/run", "input": {}}
    ok = await client.post("/api/v1/langchain/execute", json=body | {"apiKey": "k"}, headers=auth)
    assert ok.status_code == 200, ok.text
    cases: list[Case] = [
        (
            repr(key),
            "POST",
            "/api/v1/langchain/execute",
            {"json": body | {"apiKey": key}, "headers": auth},
        )
        for key in ("k\r\nX-Injected: 1", "k\nx", "ключ", "k\x7f", "k\u2028")
    ]
    await expect_refused(client, cases, 400, "INVALID_REQUEST")


async def test_logout_with_an_api_key_is_400(running: Running, user: dict[str, str]) -> None:
    """Logging out with an API key instead of a login token is 400 INVALID_REQUEST."""
    r = await running.client.post("/api/v1/auth/logout", headers={"X-API-Key": user["key"]})
    assert shape_problem(r, 400, "INVALID_REQUEST") is None, r.text


async def test_the_log_never_carries_a_pin_token_or_key(running: Running) -> None:
    """After logins (right and wrong), key creation and use by both headers, a refused key and
    a logout, no PIN, login token or API key appears in the daemon's log or an error message."""
    client = running.client
    wrong_key = "gwd_" + "W" * 43
    with structlog.testing.capture_logs() as logs:
        made = await client.post("/api/v1/auth/generate-pin")
        pin = made.json()["data"]["pin"]
        login = await client.post("/api/v1/auth/login", headers=basic(pin))
        token = login.json()["data"]["token"]
        wrong_pin = "ZZZZZ9" if pin != "ZZZZZ9" else "ZZZZZ8"
        refused_login = await client.post("/api/v1/auth/login", headers=basic(wrong_pin))
        created = await client.post("/api/v1/keys", json={"name": "ci"}, headers=bearer(token))
        key = created.json()["data"]["key"]
        used = [
            await client.get("/api/v1/sessions", headers=bearer(key)),
            await client.get("/api/v1/sessions", headers={"X-API-Key": key}),
            await client.get("/api/v1/keys", headers=bearer(token)),
        ]
        refused_key = await client.get("/api/v1/sessions", headers={"X-API-Key": wrong_key})
        forged = await client.get("/api/v1/sessions", headers=bearer(token[:-4] + "AAAA"))
        out = await client.post("/api/v1/auth/logout", headers=bearer(token))
        after = await client.get("/api/v1/sessions", headers=bearer(token))
    assert [r.status_code for r in used] == [200, 200, 200], [r.text for r in used]
    assert (refused_login.status_code, refused_key.status_code, forged.status_code) == (401,) * 3
    assert (out.status_code, after.status_code) == (200, 401)
    assert logs, "nothing was captured: the test would prove nothing"
    text = repr(logs)
    signature = token.rsplit(".", 1)[1]
    for secret in (pin, wrong_pin, token, signature, key, key[12:], wrong_key):
        assert secret not in text, f"{secret[:8]}… is in the log"
    for answer in (refused_login, refused_key, forged, after):
        assert wrong_key not in answer.text and token not in answer.text
        assert wrong_pin not in answer.text


NEVER_FETCHABLE = (
    "http://xn--/x",  # a malformed IDNA A-label
    "http://a:99999/x",
    "http://a:-1/x",
    "http://%00/x",
    "http://a..b/x",
    "http://[/x",
    "http://" + "a" * 300 + ".com/x",
    "http://user:pa55@exa mple.com/x",
)


async def test_a_url_that_can_never_be_fetched_is_400(
    running: Running, user: dict[str, str]
) -> None:
    """A media or Langchain URL that no fetch could ever reach (bad host, bad port) is 400, not
    a 500 or an upstream error, and nothing is tried."""
    auth = bearer(user["token"])
    cases: list[Case] = []
    for url in NEVER_FETCHABLE:
        cases.append(
            (
                f"media_url {url[:40]}",
                "POST",
                f"/api/v1/sessions/{user['session']}/send",
                {"json": {"to": "6281234567890", "type": "image", "media_url": url}},
            )
        )
        cases.append(
            (
                f"langchainUrl {url[:40]}",
                "POST",
                "/api/v1/langchain/execute",
                {
                    "json": {
                        "agentId": user["session"],
                        "langchainUrl": url,
                        "apiKey": "k",
                        "input": {},
                    }
                },
            )
        )
    cases = [(lbl, m, p, kw | {"headers": auth}) for lbl, m, p, kw in cases]
    await expect_refused(running.client, cases, 400, "INVALID_REQUEST")
