"""Every /api/v1 route × every kind of credential (issue 10, Part 2 item 4): none, malformed,
revoked key, expired login token, another tenant's, the right one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from gatewayd.usecases.tokens import issue_token
from tests.gateway_fixtures import Running
from tests.test_api_v1 import basic, bearer, new_user

S = "{session}"
A = "{agent}"

#: (method, path, JSON body or None, whether the route targets one session).
ROUTES: list[tuple[str, str, Any, bool]] = [
    ("GET", "/api/v1/sessions", None, False),
    ("POST", "/api/v1/sessions", {"session_name": "x"}, False),
    ("GET", f"/api/v1/sessions/{S}", None, True),
    ("PUT", f"/api/v1/sessions/{S}", {"session_name": "renamed"}, True),
    ("GET", f"/api/v1/sessions/{S}/qr", None, True),
    ("GET", f"/api/v1/sessions/{S}/messages", None, True),
    ("POST", f"/api/v1/sessions/{S}/send", {"to": "6281234567890", "content": "hi"}, True),
    ("POST", f"/api/v1/sessions/{S}/pair-code", {"phone": "6281234567890"}, True),
    ("POST", f"/api/v1/sessions/{S}/start", None, True),
    ("POST", f"/api/v1/sessions/{S}/reconnect", None, True),
    ("GET", "/api/v1/sessions/status", {"agentId": A}, True),
    ("GET", "/api/v1/sessions/detail", {"agentId": A}, True),
    ("POST", "/api/v1/messages/send", {"agentId": A, "to": "6281234567890", "message": "hi"}, True),
    (
        "POST",
        "/api/v1/langchain/execute",
        {"agentId": A, "apiKey": "k", "langchainUrl": "http://127.0.0.1:9/x", "input": {}},
        True,
    ),
    ("PUT", "/api/v1/sessions/reconnect", {"agentId": A}, True),
    ("POST", "/api/v1/sessions/create", {"agentId": A}, False),
    ("GET", "/api/v1/keys", None, False),
    ("POST", "/api/v1/keys", {"name": "k"}, False),
    ("DELETE", "/api/v1/keys/{key}", None, True),
    ("POST", "/api/v1/auth/logout", None, False),
    ("DELETE", "/api/v1/sessions/delete", {"agentId": A}, True),
    ("DELETE", f"/api/v1/sessions/{S}", None, True),
]

CREDENTIALS = ["none", "malformed", "revoked_key", "expired_jwt", "other_tenant", "right"]


def _fill(path: str, body: Any, ids: dict[str, str]) -> tuple[str, Any]:
    def sub(text: str) -> str:
        return text.replace(S, ids["session"]).replace(A, ids["agent"]).replace("{key}", ids["key"])

    if isinstance(body, dict):
        body = {k: sub(v) if isinstance(v, str) else v for k, v in body.items()}
    return sub(path), body


@pytest.mark.parametrize(
    "gateway_config",
    [{"auth": {"anonymous_requests_per_minute": 10_000, "requests_per_minute": 10_000}}],
    indirect=True,
)
async def test_every_route_refuses_what_it_must(running: Running) -> None:
    """No, malformed, revoked, expired credentials are 401 everywhere; another tenant's
    credential never reaches this tenant's session (404 like a missing one); the right one
    passes authentication and tenancy."""
    client: httpx.AsyncClient = running.client
    owner, pin, _ = await new_user(client)
    _, other_pin, _ = await new_user(client)

    async def login(as_pin: str = pin) -> str:
        answer = await client.post("/api/v1/auth/login", headers=basic(as_pin))
        return str(answer.json()["data"]["token"])

    token = await login()
    revoked = (await client.post("/api/v1/keys", json={}, headers=bearer(token))).json()["data"]
    await client.delete(f"/api/v1/keys/{revoked['id']}", headers=bearer(token))
    secrets = running.gateway.services.secrets
    expired, _ = issue_token(secrets, owner, ttl=3600, now=datetime.now(UTC) - timedelta(hours=2))
    made = await client.post("/api/v1/sessions", json={"session_name": "s"}, headers=bearer(token))
    session_id = made.json()["data"]["session_id"]
    agent_made = await client.post(
        "/api/v1/sessions/create", json={"agentId": "matrix-agent"}, headers=bearer(token)
    )
    assert agent_made.status_code == 200, agent_made.text

    failures: list[str] = []
    for method, template, body, targeted in ROUTES:
        spare = (await client.post("/api/v1/keys", json={}, headers=bearer(token))).json()
        ids = {"session": session_id, "agent": "matrix-agent", "key": spare["data"]["id"]}
        path, filled = _fill(template, body, ids)
        for kind in CREDENTIALS:
            headers = {
                "none": {},
                "malformed": {"Authorization": "Token abc"},
                "revoked_key": {"X-API-Key": revoked["key"]},
                "expired_jwt": bearer(expired),
                "other_tenant": bearer(await login(other_pin)),
                "right": bearer(await login()),
            }[kind]
            answer = (
                await client.request(method, path, json=filled, headers=headers)
                if filled is not None
                else await client.request(method, path, headers=headers)
            )
            status = answer.status_code
            code = answer.json().get("error", {}).get("code") if status >= 400 else None
            expected: str
            if kind in ("none", "malformed", "expired_jwt"):
                ok = status == 401 and code == "UNAUTHORIZED"
                expected = "401 UNAUTHORIZED"
            elif kind == "revoked_key":
                ok = status == 401 and code == "INVALID_API_KEY"
                expected = "401 INVALID_API_KEY"
            elif kind == "other_tenant" and targeted:
                ok = status == 404 and code in ("SESSION_NOT_FOUND", "NOT_FOUND")
                expected = "404"
            else:
                ok = status not in (401, 403, 404) and status < 500
                expected = "authorized, not 404, not 5xx"
            if template.startswith("/api/v1/sessions/create") and kind == "other_tenant":
                # agentId taken by another user: a conflict, never the owner's session.
                ok = status == 409 and code == "CONFLICT"
                expected = "409 CONFLICT"
            if not ok:
                failures.append(
                    f"{method} {template} [{kind}] → {status} {code}; expected {expected}"
                )
            if kind == "right" and template == f"/api/v1/sessions/{S}" and method == "DELETE":
                break
    assert failures == []
