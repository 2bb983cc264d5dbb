"""Where the deployed contract (docs/contract/agents-api.md) was not met, mended: agent
names shared by one user, mentions by number in a group's text, 413 MEDIA_TOO_LARGE on the media
route, refused CORS preflights in the error shape, APP_BASE_URL in /openapi.json, the deployed
log levels."""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from gatewayd.config import Config
from gatewayd.errors import Conflict
from gatewayd.nursery.forwarder import ignore_reason
from gatewayd.nursery.mentions import mentions_agent
from gatewayd.store import agents as agents_store
from gatewayd.store.db import Connection, Database, open_database
from gatewayd.store.migrations import (
    MIGRATIONS_TABLE,
    migrate_down,
    migrate_up,
    migration_status,
)
from gatewayd.whatsapp.port import InboundMessage
from tests.daemon import Daemon
from tests.gateway_fixtures import Running, make_config
from tests.test_daemon import write_config

ROOT = Path(__file__).resolve().parent.parent
ME = "628123456789"
ME_LID = "200000000000042@lid"
GROUP = "120363000000000001@g.us"
ORIGIN = "https://dash.example.com"

# ------------------------------------------------------------------ two agents, one name


async def test_two_agents_of_one_user_share_a_name(database: Database) -> None:
    """One user may give two agents the same agentName; agentId stays unique."""
    first = await agents_store.create_agent(
        database, agent_id="sales-1", name="Sales", user_id="u1", api_key="k"
    )
    second = await agents_store.create_agent(
        database, agent_id="sales-2", name="Sales", user_id="u1", api_key="k"
    )
    assert (first.name, second.name) == ("Sales", "Sales") and first.id != second.id
    assert (await agents_store.get_agent(database, "sales-2")) == second
    with pytest.raises(Conflict) as info:
        await agents_store.create_agent(
            database, agent_id="sales-1", name="Other", user_id="u1", api_key="k"
        )
    assert isinstance(info.value.details, dict)
    assert info.value.details["constraint"] == "agents_agent_id_key"


async def _steps_to_revert_006(db: Database) -> int:
    """How many steps down reach 005: later migrations are reverted first (each on its own)."""
    return len([s for s in await migration_status(db) if s.applied and s.version >= 6])


def _names(conn: Connection) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT agent_id, user_id, name FROM agents ORDER BY agent_id").fetchall()


async def test_reverting_shared_names_fails_clearly_and_loses_nothing(pg_dsn: str) -> None:
    """Down past 006 with agents sharing a name stops with a conflict naming the constraint,
    keeps every row and the migration; once renamed, down restores the uniqueness."""
    async with open_database(pg_dsn) as db:
        await migrate_up(db)
        for agent_id in ("a1", "a2"):
            await agents_store.create_agent(
                db, agent_id=agent_id, name="Bot", user_id="u1", api_key="k"
            )
        before = await db.run(_names)
        with pytest.raises(Conflict) as info:
            await migrate_down(db, steps=await _steps_to_revert_006(db))
        assert isinstance(info.value.details, dict)
        assert info.value.details["constraint"] == "agents_user_id_name_key"
        assert any("cannot revert 006_agent_names" in note for note in info.value.__notes__)
        assert await db.run(_names) == before
        applied = await db.run(
            lambda c: c.execute(f"SELECT max(version) FROM {MIGRATIONS_TABLE}").fetchone()
        )
        assert applied is not None and applied[0] >= 6

        await db.run(lambda c: c.execute("UPDATE agents SET name = 'Bot 2' WHERE agent_id = 'a2'"))
        reverted = await migrate_down(db, steps=await _steps_to_revert_006(db))
        assert reverted[-1].version == 6
        # Below the newest schema the store's queries may not fit: plain SQL from here on.
        with pytest.raises(Conflict) as info:
            await db.run(_insert_bot, "a3")
        assert isinstance(info.value.details, dict)
        assert info.value.details["constraint"] == "agents_user_id_name_key"
        await migrate_up(db)
        await db.run(_insert_bot, "a3")


def _insert_bot(conn: Connection, agent_id: str) -> None:
    conn.execute(
        "INSERT INTO agents (agent_id, name, user_id, api_key) VALUES (%s, 'Bot', 'u1', 'k')",
        (agent_id,),
    )


# ------------------------------------------------------------------ mentions in the text


def group_message(text: str, mentioned: tuple[str, ...] = ()) -> InboundMessage:
    return InboundMessage(
        id="3EB0MENTION",
        chat=GROUP,
        sender="6281111111111@s.whatsapp.net",
        timestamp_ms=1_700_000_000_000,
        is_group=True,
        text=text,
        mentioned_jids=mentioned,
    )


def mentioned(text: str, *, country: str = "62", phone: str | None = ME) -> bool:
    own = {f"{phone}@s.whatsapp.net", ME_LID} if phone else {ME_LID}
    return mentions_agent(
        group_message(text), own_jids=own, own_phone=phone, default_country_code=country
    )


@pytest.mark.parametrize(
    "text",
    [
        f"@{ME} tolong",
        f"tolong {ME} bantu",
        f"{ME}",
        "hubungi +62 812-3456-789 ya",
        "+62 (812) 3456 789",
        "+628123456789?",
        "0812 3456 789",
        "(0812) 3456-789",
        "0812.3456.789, thanks",
        "no wa: 08123456789",
        "wa.me/628123456789",
        "@200000000000042 hi",
    ],
)
def test_the_text_naming_the_agents_number_is_a_mention(text: str) -> None:
    """The agent's number in a group's text counts, with or without @, +62 or 0… forms."""
    assert mentioned(text)


@pytest.mark.parametrize(
    "text",
    [
        "hi all",
        "6281234567890",  # a longer number that contains it
        "16281234567890",
        "9628123456789",
        "08123456789012",
        "x628123456789",  # glued to letters
        "628123456789abc",
        "62812345678",  # one digit short
        "628 1234\n56789",  # split over two lines
        "200000000000042 hi",  # a LID counts only as @<lid>
        "@2000000000000421",
    ],
)
def test_a_number_that_merely_contains_it_is_not_a_mention(text: str) -> None:
    """A longer number, a number glued to letters or spread over lines does not count."""
    assert not mentioned(text)


def test_the_national_form_follows_the_configured_country_code() -> None:
    """0… is read with whatsapp.default_country_code: 07700 900123 is +44 7700 900123 for 44."""
    uk = "447700900123"
    assert mentioned("ring 07700 900123", country="44", phone=uk)
    assert not mentioned("ring 07700 900123", country="62", phone=uk)
    assert mentioned("ring +44 7700 900123", country="62", phone=uk)


def test_ignore_reason_forwards_a_group_message_naming_the_number() -> None:
    """The forwarder's filter lets a bare-number mention through, and still ignores the rest."""
    own = {f"{ME}@s.whatsapp.net"}
    kwargs: dict[str, Any] = {"own_jids": own, "own_phone": ME, "default_country_code": "62"}
    assert ignore_reason(group_message("tolong 0812-3456-789"), **kwargs) is None
    assert ignore_reason(group_message("hi 62812345678901"), **kwargs) == "group_without_mention"
    by_list = group_message("hi", mentioned=(f"{ME}@s.whatsapp.net",))
    assert ignore_reason(by_list, **kwargs) is None


# ------------------------------------------------------------------ HTTP edge

MEDIA_MAX = 64 * 1024
MEDIA_LIMIT = -(-MEDIA_MAX * 4 // 3) + 64 * 1024


@pytest.fixture
async def gateway_config(pg_dsn: str) -> Config:
    return make_config(
        pg_dsn,
        server={
            "body_limit": 4096,
            "cors_origins": [ORIGIN],
            "base_url": "https://wa.example.com/gw/",
        },
        media={"max_bytes": MEDIA_MAX},
    )


async def chunks(total: int) -> AsyncIterator[bytes]:
    for _ in range(total // 4096):
        yield b"y" * 4096


async def test_oversized_media_body_is_413_media_too_large(running: Running) -> None:
    """/agents/{id}/media refuses a body past 4/3 of media.max_bytes with MEDIA_TOO_LARGE."""
    client = running.client
    r = await client.post("/agents/bot/media", content=b"x" * (MEDIA_LIMIT + 1))
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "MEDIA_TOO_LARGE"
    assert str(MEDIA_LIMIT) in r.json()["error"]["message"]
    # Chunked, no length to check: counted while the (authorised) route reads it.
    r = await client.post(
        "/sessions", json={"userId": "u1", "agentId": "bot", "agentName": "Bot", "apikey": "K"}
    )
    assert r.status_code in (200, 201), r.text
    r = await client.post(
        "/agents/bot/media",
        content=chunks(MEDIA_LIMIT + 8192),
        headers={"Authorization": "Bearer K", "Content-Type": "application/json"},
    )
    assert "content-length" not in r.request.headers
    assert r.status_code == 413 and r.json()["error"]["code"] == "MEDIA_TOO_LARGE"
    # Base64 of an image at media.max_bytes gets past the (smaller) server.body_limit …
    r = await client.post("/agents/bot/media", content=b"x" * (MEDIA_MAX * 4 // 3))
    assert r.status_code != 413 and r.json()["error"]["code"] == "UNAUTHORIZED"
    # … and every other route keeps server.body_limit and its own code.
    r = await client.post("/agents/bot/messages", content=b"x" * 5000)
    assert r.status_code == 413 and r.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"


async def preflight(
    client: httpx.AsyncClient, path: str, origin: str = ORIGIN, **extra: str
) -> httpx.Response:
    headers = {"Origin": origin, "Access-Control-Request-Method": "POST"}
    headers.update({k.replace("_", "-"): v for k, v in extra.items()})
    return await client.options(path, headers=headers)


async def test_refused_preflight_answers_in_the_dialects_error_shape(running: Running) -> None:
    """A refused preflight (origin, method, header) is 403 CORS_REJECTED in the path's shape."""
    client = running.client
    r = await preflight(client, "/agents/bot/messages", origin="https://evil.example")
    assert r.status_code == 403
    trace = r.headers["x-request-id"]
    assert r.json() == {
        "error": {
            "code": "CORS_REJECTED",
            "message": "Cross-origin requests from this origin are not allowed",
            "traceId": trace,
        }
    }
    assert "access-control-allow-origin" not in r.headers
    r = await preflight(client, "/api/v1/sessions", origin="https://evil.example")
    assert r.status_code == 403
    body = r.json()
    assert body["success"] is False and body["error"]["code"] == "CORS_REJECTED"
    assert body["error"]["traceId"] == r.headers["x-request-id"]

    r = await preflight(client, "/agents/bot/messages", Access_Control_Request_Method="TRACE")
    assert r.status_code == 403 and r.json()["error"]["code"] == "CORS_REJECTED"
    assert "Method not allowed" in r.json()["error"]["message"]
    r = await preflight(
        client, "/api/v1/keys", Access_Control_Request_Headers="authorization, x-evil"
    )
    assert r.status_code == 403 and r.json()["success"] is False
    assert "x-evil" in r.json()["error"]["message"]

    r = await preflight(
        client,
        "/api/v1/keys",
        Access_Control_Request_Headers="Authorization, X-API-Key, content-type, idempotency-key",
    )
    assert r.status_code == 204, r.text
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "X-API-Key" in r.headers["access-control-allow-headers"]


async def test_base_url_is_the_server_of_the_openapi_document(running: Running) -> None:
    """With server.base_url (APP_BASE_URL) set, /openapi.json and /docs name it as the server."""
    r = await running.client.get("/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    served = r.json()
    assert served["servers"] == [
        {"url": "https://wa.example.com/gw", "description": "this deployment (server.base_url)"}
    ]
    shipped = json.loads((ROOT / "openapi.json").read_text(encoding="utf-8"))
    assert {**served, "servers": shipped["servers"]} == shipped
    page = (await running.client.get("/docs")).text
    assert "<code>https://wa.example.com/gw</code>" in page
    assert "http://localhost:3000" not in page

    # Live: a reload that clears it serves the shipped document again.
    gateway: Any = running.gateway
    gateway.config = attrs.evolve(
        gateway.config, server=attrs.evolve(gateway.config.server, base_url="")
    )
    r = await running.client.get("/openapi.json")
    assert r.content == (ROOT / "openapi.json").read_bytes()


# ------------------------------------------------------------------ log levels, live


async def test_deployed_level_names_apply_at_start_and_on_reload(
    tmp_path: Path, pg_dsn: str, nursery: trio.Nursery
) -> None:
    """A daemon started at level "trace" logs debug lines; a SIGHUP to "WARN" stops them."""
    config = tmp_path / "gatewayd.toml"
    write_config(config, pg_dsn, level="trace")
    daemon = await Daemon.start(nursery, ["--config", str(config)])
    try:
        async with httpx.AsyncClient(base_url=daemon.base_url) as client:
            mark = len(daemon.lines)
            assert (await client.get("/health")).status_code == 200
            request = await daemon.wait_for("gatewayd.http.request", after=mark)
            assert request["level"] == "debug"

            write_config(config, pg_dsn, level="WARN")
            mark = len(daemon.lines)
            daemon.signal(signal.SIGHUP)
            changed = await daemon.wait_for("gatewayd.config.changed", after=mark)
            assert (changed["key"], changed["old"], changed["new"]) == (
                "log.level",
                "debug",
                "warning",
            )
            assert (await client.get("/health")).status_code == 200
            # An error line (a rejected reload) marks the point the request was logged by.
            config.write_text("[server]\nbogus = 1\n")
            daemon.signal(signal.SIGHUP)
            await daemon.wait_for("gatewayd.config.rejected", after=mark)
            events = {line.get("event") for line in daemon.lines[mark:]}
            assert "gatewayd.http.request" not in events
            assert "gatewayd.config.reloaded" not in events  # info, below warning
    finally:
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0
