"""/api/v1 analytics through a real daemon (docs/contract/api-v1.md §10): the report's numbers
against what was put in (injected on the simulated network and written by the store), days and
peak hours in a time zone, weekly and monthly breakdowns, uptime from the status history, the
CSV export, the overview, validation and tenancy."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import trio

from gatewayd.config import Config
from gatewayd.store.db import Connection, Database
from gatewayd.store.executions import record_execution
from tests.gateway_fixtures import Running, make_config
from tests.test_api_v1 import bearer, new_user, scan, wait_connected

AGENT_PHONE = "6281111111111"
CUSTOMER = "6289999999999"
GROUP = "120363000000000001@g.us"


@pytest.fixture
async def gateway_config(pg_dsn: str, request: pytest.FixtureRequest) -> Config:
    """No AI forwarding (outcomes are recorded, no AI calls) and room for many requests."""
    sections: dict[str, dict[str, Any]] = {
        "forwarding": {"enabled": False},
        "auth": {"requests_per_minute": 10_000},
        "analytics": {"max_range_days": 400},
    }
    for name, values in getattr(request, "param", {}).items():
        sections[name] = {**sections.get(name, {}), **values}
    return make_config(pg_dsn, **sections)


@pytest.fixture
def api(running: Running) -> httpx.AsyncClient:
    """The client of the daemon, whose app serves the analytics routes."""
    return running.client


async def new_session(running: Running, token: str, name: str = "Agent 1") -> str:
    made = await running.client.post(
        "/api/v1/sessions", json={"session_name": name}, headers=bearer(token)
    )
    assert made.status_code == 201, made.text
    return str(made.json()["data"]["session_id"])


async def connect(running: Running, token: str, session_id: str) -> None:
    started = await running.client.post(
        f"/api/v1/sessions/{session_id}/start", headers=bearer(token)
    )
    assert started.status_code == 200, started.text
    await scan(running.client, session_id, AGENT_PHONE)
    await wait_connected(running.client, session_id, bearer(token))


async def insert_message(
    db: Database,
    session_id: str,
    at: datetime,
    *,
    direction: str = "inbound",
    kind: str = "text",
    group: bool = False,
) -> None:
    """A message row as the store writes one, at a chosen time."""

    def work(conn: Connection) -> None:
        conn.execute(
            "INSERT INTO messages (agent_id, direction, type, chat_jid, is_group, text,"
            " created_at) VALUES (%s, %s, %s, %s, %s, 'x', %s)",
            (uuid.UUID(session_id), direction, kind, GROUP if group else CUSTOMER, group, at),
        )

    await db.run(work)


async def insert_attempt(db: Database, session_id: str, at: datetime, ms: int, ok: bool) -> None:
    """One webhook try (and its delivery), as the dispatcher records them."""

    def work(conn: Connection) -> None:
        row = conn.execute(
            "INSERT INTO webhook_deliveries (agent_id, event, payload) VALUES"
            " (%s, 'message.received', '{}') RETURNING id",
            (uuid.UUID(session_id),),
        ).fetchone()
        assert row is not None
        conn.execute(
            "INSERT INTO webhook_attempts (delivery_id, agent_id, n, status_code, duration_ms,"
            " success, at) VALUES (%s, %s, 1, %s, %s, %s, %s)",
            (row[0], uuid.UUID(session_id), 200 if ok else 500, ms, ok, at),
        )

    await db.run(work)


async def report(
    api: httpx.AsyncClient, token: str, session_id: str, **params: str
) -> dict[str, Any]:
    got = await api.get(
        f"/api/v1/analytics/sessions/{session_id}", params=params, headers=bearer(token)
    )
    assert got.status_code == 200, got.text
    assert got.json()["success"] is True
    return dict(got.json()["data"])


async def test_report_counts_injected_messages_and_the_calls_made(
    running: Running, api: httpx.AsyncClient
) -> None:
    """Injected messages (private, group with and without a mention, by type), AI executions
    and webhook tries of today come back as 003's summary, peak hour, breakdown and types."""
    _, _, token = await new_user(running.client)
    session_id = await new_session(running, token)
    await connect(running, token, session_id)
    inject = f"/_sim/agents/{session_id}/inject"
    bodies: list[dict[str, Any]] = [
        {"kind": "text", "from": CUSTOMER, "text": "one"},
        {"kind": "text", "from": CUSTOMER, "text": "two"},
        {"kind": "image", "from": CUSTOMER, "text": "a photo"},
        {"kind": "document", "from": CUSTOMER},
        {"kind": "text", "from": CUSTOMER, "group": GROUP, "text": "hi", "mentions": [AGENT_PHONE]},
        {"kind": "text", "from": CUSTOMER, "group": GROUP, "text": "not for you"},
    ]
    for body in bodies:
        assert (await running.client.post(inject, json=body)).status_code == 200
    db = running.gateway.db
    now = datetime.now(UTC)
    for seconds, status in ((0.2, "success"), (0.4, "success"), (0.6, "timeout")):
        await record_execution(
            db, uuid.UUID(session_id), request={}, response=None, duration=seconds, status=status
        )
    await insert_attempt(db, session_id, now, 100, True)
    await insert_attempt(db, session_id, now, 300, False)
    with trio.fail_after(10):  # the forwarder records outcomes (and so mentions) just after
        while (data := await report(api, token, session_id))["summary"]["group_mentions"] < 1:
            await trio.sleep(0.05)
    today = now.date().isoformat()
    assert data["session_id"] == session_id and data["session_name"] == "Agent 1"
    assert data["period"] == "daily" and data["end_date"] == today
    assert data["start_date"] == (now.date() - timedelta(days=29)).isoformat()
    summary = data["summary"]
    assert {k: v for k, v in summary.items() if k != "uptime_percentage"} == {
        "total_messages": 6,
        "messages_handled_by_ai": 3,
        "success_rate": 60.0,
        "average_response_time_ms": 320,  # (200 + 400 + 600 + 100 + 300) / 5
        "private_messages": 4,
        "group_messages": 2,
        "group_mentions": 1,
        "total_errors": 2,
    }
    assert 0 < summary["uptime_percentage"] <= 100
    assert data["handled_by"] == {"ai_forwarder": 2, "webhook": 1}
    assert data["message_types"] == {"text": 4, "image": 1, "document": 1, "audio": 0, "video": 0}
    peak = data["peak_hours"]
    assert sum(p["count"] for p in peak) == 6
    assert {p["hour"] for p in peak} <= {now.hour, datetime.now(UTC).hour}
    assert len(data["daily_breakdown"]) == 30
    assert data["daily_breakdown"][-1] == {
        "date": today,
        "total_messages": 6,
        "ai_handled": 3,
        "avg_response_time_ms": 320,
        "errors": 2,
    }
    assert all(day["total_messages"] == 0 for day in data["daily_breakdown"][:-1])


async def test_outbound_messages_are_not_counted_in_the_report(
    running: Running, api: httpx.AsyncClient
) -> None:
    """Sent messages count in none of the report's message figures (private, group, types)."""
    _, _, token = await new_user(running.client)
    session_id = await new_session(running, token)
    db = running.gateway.db
    at = datetime(2024, 3, 10, 12, 0, tzinfo=UTC)
    await insert_message(db, session_id, at)
    await insert_message(db, session_id, at, direction="outbound", kind="image")
    await insert_message(db, session_id, at, direction="outbound", group=True)
    data = await report(api, token, session_id, start_date="2024-03-10", end_date="2024-03-10")
    summary = data["summary"]
    assert summary["total_messages"] == 1
    assert (summary["private_messages"], summary["group_messages"]) == (1, 0)
    assert data["message_types"] == {"text": 1, "image": 0, "document": 0, "audio": 0, "video": 0}


async def test_time_zone_moves_a_message_across_midnight(
    running: Running, api: httpx.AsyncClient
) -> None:
    """A message at 23:30 UTC is on the 10th in UTC and on the 11th at 06 in Jakarta; a
    half-hour zone counts whole UTC hours at their middle (the nearest hour)."""
    _, _, token = await new_user(running.client)
    session_id = await new_session(running, token)
    db = running.gateway.db
    await insert_message(db, session_id, datetime(2024, 3, 10, 23, 30, tzinfo=UTC))
    await insert_message(db, session_id, datetime(2024, 3, 10, 18, 10, tzinfo=UTC))
    days = {"start_date": "2024-03-10", "end_date": "2024-03-11"}

    def per_day(data: dict[str, Any]) -> list[tuple[str, int]]:
        return [(d["date"], d["total_messages"]) for d in data["daily_breakdown"]]

    utc = await report(api, token, session_id, **days)
    assert per_day(utc) == [("2024-03-10", 2), ("2024-03-11", 0)]
    assert utc["peak_hours"] == [{"hour": 18, "count": 1}, {"hour": 23, "count": 1}]
    jakarta = await report(api, token, session_id, tz="Asia/Jakarta", **days)
    assert per_day(jakarta) == [("2024-03-10", 0), ("2024-03-11", 2)]
    assert jakarta["peak_hours"] == [{"hour": 1, "count": 1}, {"hour": 6, "count": 1}]
    # Kolkata is +05:30: 18:10 UTC is 23:40 local, but its hour 18:00-19:00 UTC is counted
    # at its middle, 00:00 on the 11th.
    kolkata = await report(api, token, session_id, tz="Asia/Kolkata", **days)
    assert per_day(kolkata) == [("2024-03-10", 0), ("2024-03-11", 2)]
    assert kolkata["peak_hours"] == [{"hour": 0, "count": 1}, {"hour": 5, "count": 1}]


async def test_weekly_and_monthly_breakdowns_start_on_monday_and_the_first(
    running: Running, api: httpx.AsyncClient
) -> None:
    """Weekly entries are dated by their Monday, monthly ones by their first day."""
    _, _, token = await new_user(running.client)
    session_id = await new_session(running, token)
    db = running.gateway.db
    for day in (date(2024, 2, 29), date(2024, 3, 4), date(2024, 3, 10), date(2024, 3, 11)):
        await insert_message(db, session_id, datetime(day.year, day.month, day.day, 9, tzinfo=UTC))
    span = {"start_date": "2024-02-28", "end_date": "2024-03-12"}
    weekly = await report(api, token, session_id, period="weekly", **span)
    assert [(d["date"], d["total_messages"]) for d in weekly["daily_breakdown"]] == [
        ("2024-02-26", 1),
        ("2024-03-04", 2),
        ("2024-03-11", 1),
    ]
    monthly = await report(api, token, session_id, period="monthly", **span)
    assert [(d["date"], d["total_messages"]) for d in monthly["daily_breakdown"]] == [
        ("2024-02-01", 1),
        ("2024-03-01", 3),
    ]
    assert monthly["summary"]["total_messages"] == 4


async def test_uptime_comes_from_the_status_history(
    running: Running, api: httpx.AsyncClient
) -> None:
    """Connected from 06:00 to 18:00 of a day is 50 % uptime for that day, 25 % over two."""
    _, _, token = await new_user(running.client)
    session_id = await new_session(running, token)
    history = [
        ("disconnected", datetime(2024, 3, 9, 12, tzinfo=UTC)),
        ("connected", datetime(2024, 3, 10, 6, tzinfo=UTC)),
        ("disconnected", datetime(2024, 3, 10, 18, tzinfo=UTC)),
    ]

    def work(conn: Connection) -> None:
        for status, at in history:
            conn.execute(
                "INSERT INTO agent_status_history (agent_id, status, at) VALUES (%s, %s, %s)",
                (uuid.UUID(session_id), status, at),
            )

    await running.gateway.db.run(work)
    one = await report(api, token, session_id, start_date="2024-03-10", end_date="2024-03-10")
    assert one["summary"]["uptime_percentage"] == 50.0
    two = await report(api, token, session_id, start_date="2024-03-10", end_date="2024-03-11")
    assert two["summary"]["uptime_percentage"] == 25.0
    before = await report(api, token, session_id, start_date="2024-03-01", end_date="2024-03-08")
    assert before["summary"]["uptime_percentage"] == 0.0


async def test_csv_exports_the_breakdown(running: Running, api: httpx.AsyncClient) -> None:
    """format=csv answers text/csv with a header row and the JSON breakdown's rows."""
    _, _, token = await new_user(running.client)
    session_id = await new_session(running, token)
    db = running.gateway.db
    await insert_message(db, session_id, datetime(2024, 3, 10, 9, tzinfo=UTC))
    await insert_attempt(db, session_id, datetime(2024, 3, 10, 9, 5, tzinfo=UTC), 250, True)
    span = {"start_date": "2024-03-09", "end_date": "2024-03-11"}
    got = await api.get(
        f"/api/v1/analytics/sessions/{session_id}",
        params={**span, "format": "csv"},
        headers=bearer(token),
    )
    assert got.status_code == 200, got.text
    assert got.headers["content-type"].startswith("text/csv")
    assert got.headers["content-disposition"].startswith("attachment; filename=")
    assert ".csv" in got.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(got.text)))
    expected = (await report(api, token, session_id, **span))["daily_breakdown"]
    assert [{k: str(v) for k, v in entry.items()} for entry in expected] == rows
    assert rows[1] == {
        "date": "2024-03-10",
        "total_messages": "1",
        "ai_handled": "1",
        "avg_response_time_ms": "250",
        "errors": "0",
    }


async def test_overview_sums_the_users_sessions_by_calendar_period(
    running: Running, api: httpx.AsyncClient
) -> None:
    """Today, this week and this month (in the zone asked) sum every session of the user and
    no one else's; active counts the connected ones; the top list ranks by this month."""
    _, _, token = await new_user(running.client)
    _, _, other = await new_user(running.client)
    busy = await new_session(running, token, "busy")
    quiet = await new_session(running, token, "quiet")
    idle = await new_session(running, token, "idle")
    stranger = await new_session(running, other, "stranger")
    await connect(running, token, busy)
    tz = ZoneInfo("Asia/Jakarta")
    now = datetime.now(UTC)
    today = now.astimezone(tz).date()
    month_start = datetime.combine(today.replace(day=1), datetime.min.time(), tz)
    times = [now, now - timedelta(days=3), month_start + timedelta(minutes=40)]
    times += [now - timedelta(days=45)]
    db = running.gateway.db
    for at in times:
        await insert_message(db, busy, at)
        await insert_message(db, stranger, at)
    await insert_message(db, quiet, now)
    await insert_attempt(db, quiet, now, 400, True)
    await insert_attempt(db, busy, now, 200, False)
    local = [at.astimezone(tz).date() for at in times]
    week_start = today - timedelta(days=today.weekday())
    got = await api.get(
        "/api/v1/analytics/overview", params={"tz": "Asia/Jakarta"}, headers=bearer(token)
    )
    assert got.status_code == 200, got.text
    data = got.json()["data"]
    busy_month = sum(today.replace(day=1) <= d <= today for d in local)
    assert data == {
        "total_sessions": 3,
        "active_sessions": 1,
        "total_messages_today": sum(d == today for d in local) + 1,
        "total_messages_this_week": sum(week_start <= d <= today for d in local) + 1,
        "total_messages_this_month": busy_month + 1,
        "avg_response_time_ms": 300,
        "overall_success_rate": 50.0,
        "top_performing_sessions": [
            {
                "session_id": busy,
                "session_name": "busy",
                "total_messages": busy_month,
                "success_rate": 0.0,
                "avg_response_time_ms": 200,
            },
            {
                "session_id": quiet,
                "session_name": "quiet",
                "total_messages": 1,
                "success_rate": 100.0,
                "avg_response_time_ms": 400,
            },
        ],
    }
    assert idle not in str(data)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"start_date": "2024-13-01"}, "start_date"),
        ({"start_date": "yesterday"}, "start_date"),
        ({"end_date": "2024-1-5"}, "end_date"),
        ({"end_date": "0001-01-01"}, "end_date"),
        ({"start_date": "2024-03-10", "end_date": "2024-03-01"}, "end_date"),
        ({"start_date": "2023-01-01", "end_date": "2024-03-01"}, "end_date"),
        ({"tz": "Mars/Olympus_Mons"}, "tz"),
        ({"tz": "../../etc/passwd"}, "tz"),
        ({"tz": ""}, "tz"),
        ({"period": "hourly"}, "period"),
        ({"format": "xlsx"}, "format"),
    ],
)
async def test_bad_queries_are_400_naming_the_field(
    running: Running, api: httpx.AsyncClient, params: dict[str, str], field: str
) -> None:
    """Bad dates, reversed or too long ranges, unknown zones and periods are 400s naming
    the field."""
    _, _, token = await new_user(running.client)
    session_id = await new_session(running, token)
    got = await api.get(
        f"/api/v1/analytics/sessions/{session_id}", params=params, headers=bearer(token)
    )
    assert got.status_code == 400, got.text
    error = got.json()["error"]
    assert error["code"] == "INVALID_REQUEST" and error["details"] == {"field": field}
    assert field in error["message"] or field == "end_date"
    if field == "tz":
        overview = await api.get("/api/v1/analytics/overview", params=params, headers=bearer(token))
        assert overview.status_code == 400 and overview.json()["error"]["details"] == {
            "field": "tz"
        }


async def test_another_users_session_is_not_found(running: Running, api: httpx.AsyncClient) -> None:
    """Another user's session, a missing one and a non-UUID all answer 404 SESSION_NOT_FOUND,
    with or without format=csv; no credential is 401."""
    _, _, owner = await new_user(running.client)
    _, _, intruder = await new_user(running.client)
    session_id = await new_session(running, owner)
    for target in (session_id, str(uuid.uuid4()), "not-a-uuid"):
        for params in ({}, {"format": "csv"}):
            got = await api.get(
                f"/api/v1/analytics/sessions/{target}", params=params, headers=bearer(intruder)
            )
            assert got.status_code == 404, got.text
            assert got.json()["error"]["code"] == "SESSION_NOT_FOUND"
    anonymous = await api.get(f"/api/v1/analytics/sessions/{session_id}")
    assert anonymous.status_code == 401
    assert (await api.get("/api/v1/analytics/overview")).status_code == 401
