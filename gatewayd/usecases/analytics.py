"""Analytics of sessions (docs/contract/api-v1.md §10), read from the hourly rollups only.

Every answer is computed from ``analytics_hourly`` rows (one per agent and UTC hour with traffic)
and the status history, never from the messages table, so its cost grows with the hours in the
range, not with the number of stored messages. Days, weeks, months and peak hours are those of a
time zone: an hour bucket belongs to the local date and hour of its middle, so a zone whose
offset is not whole hours (Asia/Kolkata, +05:30) gets its day boundaries at the nearest UTC hour.

"Handled" counts both ways a message is handled: the AI forwarder's executions and webhook
deliveries (every try: a delivery that failed twice and then succeeded is two errors and one
handled call). Response times are the mean duration of those calls.

The overview, which a dashboard asks for often, reads its sessions from memory while they run
(gatewayd/usecases/user_sessions.py ``user_records``) and its figures from the rollups at most
once per ``OVERVIEW_TTL`` for the same user, zone and day (:class:`OverviewCache`), so its
figures may be up to a second old.
"""

from __future__ import annotations

import uuid
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Literal

import attrs
import trio

from gatewayd.errors import InvalidPayload
from gatewayd.store import analytics as analytics_store
from gatewayd.store.agents import AgentRecord
from gatewayd.store.analytics import HourRow
from gatewayd.store.db import Database
from gatewayd.usecases.core import Services
from gatewayd.usecases.user_sessions import user_records

Period = Literal["daily", "weekly", "monthly"]
PERIODS: tuple[Period, ...] = ("daily", "weekly", "monthly")
MESSAGE_TYPES = ("text", "image", "document", "audio", "video")
#: How many sessions the overview ranks.
TOP_SESSIONS = 5
#: How many days the per-session report covers when no start is given.
DEFAULT_DAYS = 30
#: How old an overview's message and call figures may be (same user, zone, local day and
#: sessions). They are read from the rollups, which database triggers write on other modules'
#: inserts that nothing here can watch; so this is a bound on their age, not an invalidation,
#: and kept short: figures younger than ``OVERVIEW_TTL`` are answered again, and while they
#: are read anew the previous ones are answered for as long as they are younger than twice
#: that; never older. (A dashboard asks again a second after each message, see
#: dashboard/src/pages/Dashboard.tsx: it always gets figures that include the message.) The
#: sessions and ``active_sessions`` are as of the request.
OVERVIEW_TTL = 0.5
#: Overviews kept at most (least recently asked for dropped first).
OVERVIEW_CACHE_SIZE = 4096

_HOUR = timedelta(hours=1)


@attrs.frozen
class ReportQuery:
    """``GET /api/v1/analytics/sessions/{id}``: dates are local to ``tz``, both inclusive;
    None means the default (the last 30 days, ending today)."""

    period: Period
    start: date | None
    end: date | None
    tz: tzinfo


@attrs.define
class Tally:
    """Counters summed over some hour buckets."""

    inbound: int = 0
    private: int = 0
    group: int = 0
    mentions: int = 0
    types: dict[str, int] = attrs.field(factory=lambda: dict.fromkeys(MESSAGE_TYPES, 0))
    ai_ok: int = 0
    ai_failed: int = 0
    ai_ms: int = 0
    webhook_ok: int = 0
    webhook_failed: int = 0
    webhook_ms: int = 0

    def add(self, row: HourRow) -> None:
        self.inbound += row.inbound
        self.private += row.private_messages
        self.group += row.group_messages
        self.mentions += row.group_mentions
        for kind in MESSAGE_TYPES:
            self.types[kind] += getattr(row, f"type_{kind}")
        self.ai_ok += row.ai_ok
        self.ai_failed += row.ai_failed
        self.ai_ms += row.ai_ms_sum
        self.webhook_ok += row.webhook_ok
        self.webhook_failed += row.webhook_failed
        self.webhook_ms += row.webhook_ms_sum

    @property
    def handled(self) -> int:
        return self.ai_ok + self.webhook_ok

    @property
    def errors(self) -> int:
        return self.ai_failed + self.webhook_failed

    @property
    def success_rate(self) -> float:
        """Successful calls over all calls, in percent (0 when there were none)."""
        calls = self.handled + self.errors
        return round(100 * self.handled / calls, 1) if calls else 0.0

    @property
    def average_ms(self) -> int:
        """The mean duration of the calls, in whole milliseconds (0 when there were none)."""
        calls = self.handled + self.errors
        return round((self.ai_ms + self.webhook_ms) / calls) if calls else 0


@attrs.frozen
class Bucket:
    """One entry of the breakdown: a day, a week (its Monday) or a month (its first day)."""

    date: date
    tally: Tally


@attrs.frozen
class SessionReport:
    record: AgentRecord
    period: Period
    start: date
    end: date
    summary: Tally
    uptime_percentage: float
    #: Inbound messages per local hour of day with any, in hour order.
    peak_hours: list[tuple[int, int]]
    breakdown: list[Bucket]


@attrs.frozen
class SessionRank:
    record: AgentRecord
    month: Tally


@attrs.frozen
class Overview:
    total_sessions: int
    active_sessions: int
    today: int
    this_week: int
    this_month: int
    #: Every session's calls this month together.
    month: Tally
    top: list[SessionRank]


def period_start(day: date, period: Period) -> date:
    if period == "weekly":
        return day - timedelta(days=day.weekday())
    if period == "monthly":
        return day.replace(day=1)
    return day


def _utc_midnight(day: date, tz: tzinfo) -> datetime:
    return datetime.combine(day, time(), tzinfo=tz).astimezone(UTC)


def _hours_covering(first: date, last: date, tz: tzinfo) -> tuple[datetime, datetime]:
    """UTC hour bounds wide enough for every bucket whose local date is in [first, last]
    (callers filter by local date: the store puts a bucket in the local day of its middle)."""
    start = _utc_midnight(first, tz).replace(minute=0, second=0, microsecond=0) - _HOUR
    end = _utc_midnight(last + timedelta(days=1), tz).replace(minute=0, second=0, microsecond=0)
    return start, end + 2 * _HOUR


def _bad(field: str, message: str) -> InvalidPayload:
    return InvalidPayload(message, details={"field": field})


def resolve_range(query: ReportQuery, today: date, max_days: int) -> tuple[date, date]:
    """The query's dates with defaults applied; InvalidPayload naming the field when reversed
    or longer than ``max_days``."""
    end = query.end if query.end is not None else today
    try:
        start = query.start if query.start is not None else end - timedelta(days=DEFAULT_DAYS - 1)
    except OverflowError:
        raise _bad("end_date", "'end_date' is out of range") from None
    if end < start:
        field = "end_date" if query.end is not None else "start_date"
        raise _bad(field, f"'end_date' ({end}) is before 'start_date' ({start})")
    if (end - start).days + 1 > max_days:
        raise _bad("end_date", f"the range is longer than {max_days} days")
    return start, end


def uptime_percentage(
    history: Sequence[tuple[str, datetime]], start: datetime, end: datetime
) -> float:
    """Share of [start, end] spent connected, in percent with one decimal. Time before the
    first recorded status (the session did not exist yet) is not part of the range."""
    if not history:
        return 0.0
    begin = max(start, history[0][1])
    if end <= begin:
        return 0.0
    connected = 0.0
    for index, (status, at) in enumerate(history):
        until = history[index + 1][1] if index + 1 < len(history) else end
        lo, hi = max(at, begin), min(until, end)
        if status == "connected" and hi > lo:
            connected += (hi - lo).total_seconds()
    return round(100 * connected / (end - begin).total_seconds(), 1)


def _breakdown(
    days: Iterable[tuple[date, HourRow]], query: ReportQuery, start: date, end: date
) -> tuple[Tally, list[Bucket]]:
    summary = Tally()
    buckets: dict[date, Tally] = {}
    day = start
    while day <= end:  # every bucket of the range, the empty ones too (a chart's x axis)
        buckets.setdefault(period_start(day, query.period), Tally())
        day += timedelta(days=1)
    for local_day, row in days:
        if not start <= local_day <= end:
            continue
        summary.add(row)
        buckets[period_start(local_day, query.period)].add(row)
    return summary, [Bucket(d, t) for d, t in sorted(buckets.items())]


def zone_name(tz: tzinfo) -> str:
    """The IANA name of a zone, as PostgreSQL takes it."""
    return str(getattr(tz, "key", None) or "UTC")


async def session_report(
    services: Services, record: AgentRecord, query: ReportQuery, now: datetime
) -> SessionReport:
    """The report of one session (the caller has checked it is the user's)."""
    start, end = resolve_range(
        query, now.astimezone(query.tz).date(), services.config.analytics.max_range_days
    )
    lo, hi = _hours_covering(start, end, query.tz)
    # Summed per local day and hour of the day by the database: what is read here is at most
    # one row a day and 24 hours, however busy the session was.
    zone = zone_name(query.tz)
    days = await analytics_store.local_days(services.db, [record.id], lo, hi, zone)
    summary, buckets = _breakdown(days, query, start, end)
    by_hour = await analytics_store.local_hours(
        services.db, [record.id], (start, end), lo, hi, zone
    )
    peaks = sorted(by_hour.items())
    range_start = _utc_midnight(start, query.tz)
    range_end = min(_utc_midnight(end + timedelta(days=1), query.tz), now)
    history = await analytics_store.status_history(services.db, record.id, range_start, range_end)
    return SessionReport(
        record=record,
        period=query.period,
        start=start,
        end=end,
        summary=summary,
        uptime_percentage=uptime_percentage(history, range_start, range_end),
        peak_hours=peaks,
        breakdown=buckets,
    )


def _is_connected(services: Services, record: AgentRecord) -> bool:
    handle = services.agents.get(record.agent_id)
    return handle is not None and handle.connected


@attrs.define
class _Kept:
    overview: Overview
    #: The rows it was computed from (mostly the very objects asked with: ``user_records``
    #: answers them from memory while they are unchanged).
    records: list[AgentRecord]
    #: trio clock: when its figures were read.
    read_at: float

    def suits(self, records: list[AgentRecord], now: float, max_age: float) -> bool:
        return (
            now - self.read_at < max_age
            and len(self.records) == len(records)
            and all(a is b or a == b for a, b in zip(self.records, records, strict=True))
        )


Key = tuple[str, str, date]


class OverviewCache:
    """Overviews by user, zone and local day, answered again while their figures are young
    (``OVERVIEW_TTL``) and the user's sessions are the rows they were computed from (a
    session created, renamed or deleted since computes it again); bounded in size.

    One computation per key at a time: when the figures have aged, the first request reads
    them anew, and requests meanwhile are answered the previous figures (if younger than
    twice the TTL) or wait for the new ones; so a dashboard full of clients costs one read
    of the rollups per TTL, and none of them waits on it but the one that reads.
    """

    def __init__(self, *, size: int = OVERVIEW_CACHE_SIZE, ttl: float = OVERVIEW_TTL) -> None:
        self.size = size
        self.ttl = ttl
        self._kept: OrderedDict[Key, _Kept] = OrderedDict()  # least recently asked first
        self._computing: dict[Key, trio.Event] = {}

    def __len__(self) -> int:
        return len(self._kept)

    async def get(
        self, key: Key, records: list[AgentRecord], work: Callable[[], Awaitable[Overview]]
    ) -> Overview:
        """The overview for ``key`` computed from ``records``: kept, or ``work()``."""
        kept = self._kept.get(key)
        now = trio.current_time()
        if kept is not None:
            self._kept.move_to_end(key)
            if kept.suits(records, now, self.ttl):
                return kept.overview
        running = self._computing.get(key)
        if running is not None:
            if kept is not None and kept.suits(records, now, 2 * self.ttl):
                return kept.overview  # being read anew: the previous figures meanwhile
            await running.wait()
            kept = self._kept.get(key)
            if kept is not None and kept.suits(records, trio.current_time(), 2 * self.ttl):
                return kept.overview
            return await work()  # computed for other rows, or failed: ours, without waiting
        done = self._computing[key] = trio.Event()
        try:
            read_at = trio.current_time()
            seen = await work()
            self._kept[key] = _Kept(seen, records, read_at)
            self._kept.move_to_end(key)
            while len(self._kept) > self.size:
                self._kept.popitem(last=False)
            return seen
        finally:
            del self._computing[key]
            done.set()


_overviews: weakref.WeakKeyDictionary[Database, OverviewCache] = weakref.WeakKeyDictionary()


def overview_cache(db: Database) -> OverviewCache:
    """The overviews computed on ``db`` lately (one cache per open database)."""
    cache = _overviews.get(db)
    if cache is None:
        cache = _overviews[db] = OverviewCache()
    return cache


async def overview(services: Services, user_id: str, tz: tzinfo, now: datetime) -> Overview:
    """All of the user's sessions: today, this week (from Monday) and this month in ``tz``;
    the sessions and ``active_sessions`` as of now, the figures younger than twice
    ``OVERVIEW_TTL`` (:class:`OverviewCache`)."""
    records = await user_records(services, user_id)
    today = now.astimezone(tz).date()
    key = (user_id, zone_name(tz), today)
    seen = await overview_cache(services.db).get(
        key, records, lambda: _overview(services, records, tz, today)
    )
    active = sum(_is_connected(services, record) for record in records)
    return attrs.evolve(seen, active_sessions=active)


async def _overview(
    services: Services, records: list[AgentRecord], tz: tzinfo, today: date
) -> Overview:
    week, month_start = period_start(today, "weekly"), period_start(today, "monthly")
    days: list[tuple[date, HourRow]] = []
    if records:
        # Summed per session and local day by the database: a row per session and day.
        lo, hi = _hours_covering(min(week, month_start), today, tz)
        ids = [r.id for r in records]
        days = await analytics_store.local_days(services.db, ids, lo, hi, zone_name(tz))
    months: dict[uuid.UUID, Tally] = {record.id: Tally() for record in records}
    total = Tally()
    today_count = week_count = 0
    for day, row in days:
        if day > today:
            continue
        if day >= month_start:
            months[row.agent_id].add(row)
            total.add(row)
        week_count += row.inbound if day >= week else 0
        today_count += row.inbound if day == today else 0
    ranked = sorted(
        (SessionRank(record, months[record.id]) for record in records),
        key=lambda rank: (-rank.month.inbound, rank.record.name, str(rank.record.id)),
    )
    return Overview(
        total_sessions=len(records),
        active_sessions=0,  # as of the request: see ``overview``
        today=today_count,
        this_week=week_count,
        this_month=total.inbound,
        month=total,
        top=[rank for rank in ranked if rank.month.inbound][:TOP_SESSIONS],
    )


__all__ = [
    "PERIODS",
    "Bucket",
    "Overview",
    "OverviewCache",
    "ReportQuery",
    "SessionRank",
    "SessionReport",
    "Tally",
    "overview",
    "overview_cache",
    "period_start",
    "resolve_range",
    "session_report",
    "uptime_percentage",
]
