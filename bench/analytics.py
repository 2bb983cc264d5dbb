"""Whether analytics stay as cheap at 10 M messages as at 100 k (issue 12, item 3).

    .venv/bin/python bench/analytics.py [--sizes 100k,1M,10M] [--requests 200] [--keep]

Fills an embedded PostgreSQL in a temporary directory with 1,000 agents of 100 users and
messages over the last 90 days, generated in SQL (bench/analytics_fill.py): first 100 k, then
grown to each next size, one INSERT per million rows so the rollup triggers
(sql/009_analytics.up.sql) fire as they do in production, only in bigger statements. After
each size: VACUUM ANALYZE, then the real daemon in-process (sim mode, its HTTP server on a
loopback port) and, over HTTP, for one user owning 10 sessions, interleaved:

* trivial     GET /api/v1/sessions/{id}                        (one owned-row lookup)
* session     GET /api/v1/analytics/sessions/{id}              (90 days, daily)
* overview    GET /api/v1/analytics/overview

p50/p95 of each, and each analytics endpoint's p50 over the trivial request's p50 measured in
the same run: the cost that grows with the data, if any, shows as that ratio rising. The
answer asked for: the ratio at the largest size within 2x of the ratio at the smallest.

The load switches off nothing: the same indexes, triggers and constraints as production. Only
``max_wal_size`` is raised (fewer checkpoints while loading); query settings are defaults.
``--keep`` leaves the data directory (its path is printed) instead of deleting it.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import analytics_fill as fill  # bench/analytics_fill.py, beside this script
import httpx
import psycopg
import trio

from gatewayd.config import Config
from gatewayd.daemon import Gateway, run_gateway
from gatewayd.log import configure_logging
from gatewayd.store.db import open_database
from gatewayd.store.embedded import EmbeddedPostgres
from gatewayd.store.migrations import migrate_up
from gatewayd.usecases import identity

USER = "bench-user-000"
KINDS = ("trivial", "session", "overview")
WARMUP = 20


def parse_size(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text.rstrip("km")) * scale)


def label(size: int) -> str:
    return f"{size // 1_000_000}M" if size >= 1_000_000 else f"{size // 1_000}k"


def gateway_config(dsn: str, data_dir: Path) -> Config:
    return Config.from_mapping(
        {
            "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace": 2.0},
            "database": {"url": dsn, "data_dir": str(data_dir)},
            "log": {"level": "warning", "format": "console"},
            "whatsapp": {"mode": "sim", "device_dir": str(data_dir / "devices")},
            "auth": {
                "jwt_secret": "bench-only-jwt-secret-0123456789abcdef",
                # The benchmark is one user asking many times; the limit is not what it measures.
                "requests_per_minute": 1_000_000,
            },
        }
    )


async def prepare(dsn: str) -> tuple[str, list[str]]:
    """Schema, tenants, and an API key of USER; the key and USER's session ids."""
    async with open_database(dsn, max_size=2) as db:
        await migrate_up(db)
        issued = await identity.create_key(db, USER, "bench")
    with psycopg.connect(dsn) as conn:
        # Fewer checkpoints while loading gigabytes; no effect on the queries measured.
        conn.autocommit = True
        conn.execute("ALTER SYSTEM SET max_wal_size = '8GB'")
        conn.execute("SELECT pg_reload_conf()")
        conn.autocommit = False
        fill.tenants(conn)
        rows = conn.execute(
            "SELECT id::text FROM agents WHERE user_id = %s ORDER BY agent_id", (USER,)
        ).fetchall()
    return issued.key, [str(row[0]) for row in rows]


def load(dsn: str, size: int) -> dict[str, float]:
    """Grow to ``size`` messages and VACUUM ANALYZE; row counts and seconds taken."""
    with psycopg.connect(dsn) as conn:
        added, seconds = fill.grow(conn, size)
        vacuum = fill.vacuum_analyze(conn)
        counts = {
            table: float(fill.count(conn, table))
            for table in ("messages", "ai_executions", "webhook_attempts", "analytics_hourly")
        }
    return {**counts, "added": float(added), "load_s": seconds, "vacuum_s": vacuum}


async def measure(
    config: Config, key: str, sessions: list[str], requests: int
) -> dict[str, list[float]]:
    """Milliseconds per request of each kind, against the daemon started on ``config``."""
    today = datetime.now(UTC).date()
    window = {
        "period": "daily",
        "start_date": str(today - timedelta(days=89)),
        "end_date": str(today),
    }

    def request(kind: str, i: int) -> tuple[str, dict[str, str]]:
        session = sessions[i % len(sessions)]
        if kind == "trivial":
            return f"/api/v1/sessions/{session}", {}
        if kind == "session":
            return f"/api/v1/analytics/sessions/{session}", window
        return "/api/v1/analytics/overview", {}

    times: dict[str, list[float]] = {}
    async with trio.open_nursery() as nursery:
        gateway: Gateway = await nursery.start(
            lambda task_status: run_gateway(
                config, environ={}, handle_signals=False, task_status=task_status
            )
        )
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(
            base_url=gateway.http_binds[0], headers=headers, timeout=60
        ) as client:
            probe = await client.get("/api/v1/analytics/overview")
            kinds = KINDS if probe.status_code != 404 else KINDS[:1]
            if probe.status_code == 404:
                print("   (the analytics endpoints are not served: the trivial request only)")
            for i in range(WARMUP + requests):
                for kind in kinds:
                    path, params = request(kind, i)
                    begin = time.perf_counter()
                    answer = await client.get(path, params=params)
                    elapsed = (time.perf_counter() - begin) * 1000
                    if answer.status_code != 200:
                        raise SystemExit(f"{kind}: {answer.status_code} {answer.text[:300]}")
                    if i >= WARMUP:
                        times.setdefault(kind, []).append(elapsed)
                    if i == 0 and kind != "trivial":
                        show(kind, answer.json()["data"])
        gateway.request_stop()
    return times


def show(kind: str, data: dict[str, Any]) -> None:
    """What one answer said, so the figures are seen to come from the data loaded."""
    if kind == "session":
        summary = data["summary"]
        print(
            f"   session {data['session_name']!r}, 90 days: {summary['total_messages']:,} messages,"
            f" {summary['messages_handled_by_ai']:,} handled, {summary['group_mentions']:,}"
            f" mentions, uptime {summary['uptime_percentage']} %,"
            f" {len(data['daily_breakdown'])} days"
        )
    else:
        print(
            f"   overview: {data['total_sessions']} sessions,"
            f" {data['total_messages_this_month']:,} messages this month,"
            f" success {data['overall_success_rate']} %"
        )


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def report(size: int, loaded: dict[str, float], times: dict[str, list[float]]) -> dict[str, Any]:
    p50 = {kind: pct(values, 50) for kind, values in times.items()}
    p95 = {kind: pct(values, 95) for kind, values in times.items()}
    print(
        f"\n== {label(size)} messages: {loaded['messages']:,.0f} messages,"
        f" {loaded['ai_executions']:,.0f} AI executions,"
        f" {loaded['webhook_attempts']:,.0f} webhook tries,"
        f" {loaded['analytics_hourly']:,.0f} rollup rows"
    )
    print(
        f"   load of {loaded['added']:,.0f} messages: {loaded['load_s']:.1f} s"
        f" ({loaded['added'] / max(loaded['load_s'], 1e-9):,.0f} messages/s),"
        f" VACUUM ANALYZE {loaded['vacuum_s']:.1f} s"
    )
    print(f"   {'request':<10} {'p50 ms':>8} {'p95 ms':>8} {'p50/trivial':>12}")
    for kind in p50:
        ratio = p50[kind] / p50["trivial"]
        print(f"   {kind:<10} {p50[kind]:8.2f} {p95[kind]:8.2f} {ratio:11.2f}x")
    return {"size": size, "p50": p50, "p95": p95}


async def main(sizes: list[int], requests: int, keep: bool) -> None:
    configure_logging("warning", "console")
    tmp = Path(tempfile.mkdtemp(prefix="gatewayd-bench-analytics-"))
    server = EmbeddedPostgres(tmp / "pg")
    dsn = await trio.to_thread.run_sync(server.start)
    results: list[dict[str, Any]] = []
    try:
        key, sessions = await prepare(dsn)
        config = gateway_config(dsn, tmp / "daemon")
        print(f"1,000 agents of 100 users; measuring {USER} ({len(sessions)} sessions),")
        print(f"{requests} requests of each kind after {WARMUP} warm-up rounds, interleaved")
        for size in sorted(sizes):
            loaded = await trio.to_thread.run_sync(load, dsn, size)
            results.append(report(size, loaded, await measure(config, key, sessions, requests)))
    finally:
        await trio.to_thread.run_sync(server.stop)
        if keep:
            print(f"\ndata kept in {tmp} (EmbeddedPostgres({tmp / 'pg'}) starts it again)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if len(results) > 1:
        first, last = results[0], results[-1]
        print(f"\nratio p50/trivial, {label(first['size'])} → {label(last['size'])}:")
        for kind in [kind for kind in KINDS[1:] if kind in first["p50"] and kind in last["p50"]]:
            a = first["p50"][kind] / first["p50"]["trivial"]
            b = last["p50"][kind] / last["p50"]["trivial"]
            verdict = "within 2x" if b <= 2 * a else "NOT within 2x"
            print(f"   {kind:<10} {a:6.2f}x → {b:6.2f}x  ({b / a:.2f}x: {verdict})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100k,1M,10M", help="message counts, ascending")
    parser.add_argument("--requests", type=int, default=200, help="measured requests per kind")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args()
    trio.run(main, [parse_size(s) for s in args.sizes.split(",")], args.requests, args.keep)
