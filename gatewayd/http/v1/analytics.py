"""/api/v1 analytics: one session's report (JSON or CSV) and the overview of all of a user's
sessions (docs/contract/api-v1.md §10). The numbers come from gatewayd/usecases/analytics.py;
this module reads the query and shapes the answers."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, date, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gatewayd.errors import InvalidPayload
from gatewayd.http.request import services
from gatewayd.http.v1.common import authed, ok
from gatewayd.usecases import analytics, user_sessions
from gatewayd.usecases.analytics import PERIODS, Period, ReportQuery, SessionReport, Tally
from gatewayd.usecases.identity import Principal

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
#: What an IANA zone name is made of; anything else is refused before the zone files are read.
_ZONE = re.compile(r"[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+){0,3}")
#: Dates far enough from the calendar's ends that a range around them cannot overflow.
_FIRST, _LAST = date(1970, 1, 1), date(9998, 12, 31)
CSV_COLUMNS = ("date", "total_messages", "ai_handled", "avg_response_time_ms", "errors")


def _bad(field: str, message: str) -> InvalidPayload:
    return InvalidPayload(message, details={"field": field})


def _date(params: QueryParams, field: str) -> date | None:
    value = params.get(field)
    if value is None:
        return None
    try:
        if _DATE.fullmatch(value) is None:
            raise ValueError(value)
        parsed = date.fromisoformat(value)
    except ValueError:
        raise _bad(field, f"'{field}' must be a date as YYYY-MM-DD") from None
    if not _FIRST <= parsed <= _LAST:
        raise _bad(field, f"'{field}' must be between {_FIRST} and {_LAST}")
    return parsed


def time_zone(params: QueryParams, default: str) -> tzinfo:
    """The ``tz`` parameter (an IANA name), else the configured default."""
    name = params.get("tz", default)
    try:
        if len(name) > 64 or _ZONE.fullmatch(name) is None:
            raise ValueError(name)
        return ZoneInfo(name)
    except (KeyError, ValueError, OSError):  # ZoneInfoNotFoundError is a KeyError
        raise _bad("tz", "'tz' must be an IANA time zone name, such as Asia/Jakarta") from None


def _period(params: QueryParams) -> Period:
    value = params.get("period", "daily")
    if value not in PERIODS:
        raise _bad("period", f"'period' must be one of {', '.join(PERIODS)}")
    return value


def _format(params: QueryParams) -> str:
    value = params.get("format", "json")
    if value not in ("json", "csv"):
        raise _bad("format", "'format' must be json or csv")
    return value


def _calls(tally: Tally) -> dict[str, Any]:
    return {
        "messages_handled_by_ai": tally.handled,
        "success_rate": tally.success_rate,
        "average_response_time_ms": tally.average_ms,
    }


def _report_data(report: SessionReport) -> dict[str, Any]:
    summary = report.summary
    return {
        "session_id": str(report.record.id),
        "session_name": report.record.name,
        "period": report.period,
        "start_date": report.start.isoformat(),
        "end_date": report.end.isoformat(),
        "summary": {
            "total_messages": summary.inbound,
            **_calls(summary),
            "private_messages": summary.private,
            "group_messages": summary.group,
            "group_mentions": summary.mentions,
            "uptime_percentage": report.uptime_percentage,
            "total_errors": summary.errors,
        },
        "peak_hours": [{"hour": hour, "count": count} for hour, count in report.peak_hours],
        "daily_breakdown": [_bucket(bucket) for bucket in report.breakdown],
        "message_types": dict(summary.types),
        # [ours] What "handled" counted: successful AI forwarder calls and webhook tries.
        "handled_by": {"ai_forwarder": summary.ai_ok, "webhook": summary.webhook_ok},
    }


def _bucket(bucket: analytics.Bucket) -> dict[str, Any]:
    return {
        "date": bucket.date.isoformat(),
        "total_messages": bucket.tally.inbound,
        "ai_handled": bucket.tally.handled,
        "avg_response_time_ms": bucket.tally.average_ms,
        "errors": bucket.tally.errors,
    }


def breakdown_csv(report: SessionReport) -> str:
    """The breakdown as CSV: a header row, then one row per day, week or month. Only dates
    and numbers: no cell can be read as a spreadsheet formula."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for bucket in report.breakdown:
        row = _bucket(bucket)
        writer.writerow([row[column] for column in CSV_COLUMNS])
    return out.getvalue()


async def session_analytics(request: Request, principal: Principal) -> Response:
    found = services(request)
    params = request.query_params
    query = ReportQuery(
        period=_period(params),
        start=_date(params, "start_date"),
        end=_date(params, "end_date"),
        tz=time_zone(params, found.config.analytics.timezone),
    )
    kind = _format(params)
    record = await user_sessions.read_session(
        found, principal.user_id, request.path_params["session_id"]
    )
    report = await analytics.session_report(found, record, query, datetime.now(UTC))
    if kind == "csv":
        name = f"analytics-{record.id}-{report.period}-{report.start}-{report.end}.csv"
        return Response(
            breakdown_csv(report),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
    return ok(_report_data(report), "Analytics retrieved successfully")


async def overview(request: Request, principal: Principal) -> Response:
    found = services(request)
    tz = time_zone(request.query_params, found.config.analytics.timezone)
    seen = await analytics.overview(found, principal.user_id, tz, datetime.now(UTC))
    data = {
        "total_sessions": seen.total_sessions,
        "active_sessions": seen.active_sessions,
        "total_messages_today": seen.today,
        "total_messages_this_week": seen.this_week,
        "total_messages_this_month": seen.this_month,
        "avg_response_time_ms": seen.month.average_ms,
        "overall_success_rate": seen.month.success_rate,
        "top_performing_sessions": [
            {
                "session_id": str(rank.record.id),
                "session_name": rank.record.name,
                "total_messages": rank.month.inbound,
                "success_rate": rank.month.success_rate,
                "avg_response_time_ms": rank.month.average_ms,
            }
            for rank in seen.top
        ],
    }
    return ok(data, "Analytics overview retrieved successfully")


def analytics_routes() -> list[BaseRoute]:
    return [
        Route("/api/v1/analytics/overview", authed(overview), methods=["GET"]),
        Route(
            "/api/v1/analytics/sessions/{session_id}",
            authed(session_analytics),
            methods=["GET"],
        ),
    ]
