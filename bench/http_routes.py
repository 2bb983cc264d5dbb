"""How close gatewayd's HTTP routes come to a bare Starlette route (issue 14, item 1).

    flock /tmp/bench.lock .venv/bin/python bench/http_routes.py [--duration 8] [--connections 16]
        [--p99-connections 64] [--agents 100] [--sessions 10] [--only health,v1-jwt]

Starts, in one run and side by side:

* the bare route: ``GET /ping`` of bench/bare_app.py, Starlette on hypercorn's trio worker
  configured as gatewayd's (its own process): the ceiling;
* gatewayd: a real ``gatewayd run --whatsapp sim`` child on an embedded PostgreSQL, with
  ``--agents`` agents created on the agents API (``POST /sessions``) and paired on the
  simulated network (``POST /_sim/agents/{id}/scan``), and an /api/v1 user (PIN, login
  token, API key) owning ``--sessions`` started and paired sessions with a few messages.

Then drives each route with wrk (the Debian package: C, epoll, two threads; it uses a
fraction of a core at these rates, so the server is what is measured) for ``--duration``
seconds after a ``--warmup``, once at ``--connections`` (req/s, p50, p99, ratio of req/s to
the bare route) and once at ``--p99-connections`` (p99 against the bare route's p99 at the
same concurrency). Requests that are spread over many agents or carry a body go through
bench/wrk/spread.lua.

The bench's config raises two limits so that they are not what is measured, and says so in
its output: ``agents.send_rate_per_minute``/``send_burst`` (each agent's send bucket; the
sends are spread over every agent, so no bucket is ever the limit) and
``auth.requests_per_minute`` (the /api/v1 per-user limit, 100 a minute by default).

Targets (issue 14): the 404 path (middleware only) ≥ 0.8 of the bare route's req/s; every
read ≥ 0.5; p99 at ``--p99-connections`` ≤ 4× the bare route's p99.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/browser.py

import argparse
import concurrent.futures
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable

import attrs
import httpx
from embedded import on_embedded_postgres  # bench/embedded.py, beside this script

from tests.browser import SimDaemon, write_sim_config

HERE = Path(__file__).resolve().parent
WRK = "/usr/bin/wrk"
SPREAD = HERE / "wrk" / "spread.lua"

MIDDLEWARE_TARGET = 0.8
READ_TARGET = 0.5
P99_TARGET = 4.0

#: What the bench's config sets (see the docstring).
BENCH_CONFIG = """
[agents]
send_rate_per_minute = 600000.0
send_burst = 100000

[auth]
requests_per_minute = 1000000000
"""


@attrs.frozen
class Target:
    """One route as wrk drives it."""

    name: str
    label: str
    method: str
    #: The path, or a file of requests for bench/wrk/spread.lua.
    path: str = ""
    requests: Path | None = None
    headers: tuple[str, ...] = ()
    expect: int = 200
    #: "ceiling", "middleware", "read" or "write": which ratio target applies.
    kind: str = "read"
    bare: bool = False


@attrs.frozen
class Result:
    requests: int
    rps: float
    p50: float  # ms
    p99: float  # ms
    unexpected: int  # answers with another status than expected, plus socket errors


# --------------------------------------------------------------------------- wrk


_UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)([a-z]+)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNIT[unit]


def parse_wrk(output: str, expect: int) -> Result:
    """Requests, req/s and the latency percentiles from ``wrk --latency``'s report."""
    total = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    found = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    non_2xx = int(found.group(1)) if found else 0
    unexpected = total - non_2xx if expect >= 300 else non_2xx
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if errors:
        unexpected += sum(int(n) for n in errors.groups())
    return Result(total, rps, p50, p99, unexpected)


def wrk(base_url: str, target: Target, *, connections: int, duration: float, threads: int) -> str:
    command = [
        WRK,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        "--timeout",
        "10s",
    ]
    for header in target.headers:
        command += ["-H", header]
    if target.requests is not None:
        command += ["-s", str(SPREAD), base_url, "--", target.method, str(target.requests)]
    else:
        assert target.method == "GET", "a bodiless request from the command line is a GET"
        command.append(base_url + target.path)
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return done.stdout


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class BareApp:
    """bench/bare_app.py in a process of its own."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "bare_app.py"), "--port", str(free_port())],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().split()
        assert line and line[0] == "listening", f"bench/bare_app.py said {line!r}"
        self.base_url = line[1]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        assert self.process.stdout is not None
        self.process.stdout.close()


# --------------------------------------------------------------------------- setup


@attrs.frozen
class World:
    """What the setup made: who calls, and what."""

    agents: list[tuple[str, str]]  # (agent id, its key)
    token: str
    api_key: str
    sessions: list[str]


def _parallel(count: int, work: Callable[[int], None]) -> None:
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        for done in [pool.submit(work, n) for n in range(count)]:
            done.result()


def _wait_connected(http: httpx.Client, path: str, connected: Callable[[dict], bool]) -> None:
    deadline = time.monotonic() + 60
    while True:
        r = http.get(path)
        if r.status_code == 200 and connected(r.json()["data"]):
            return
        assert time.monotonic() < deadline, f"{path} did not connect: {r.text}"
        time.sleep(0.05)


def populate(daemon: SimDaemon, agents: int, sessions: int) -> World:
    """``agents`` paired agents of the agents API, and an /api/v1 user with a login token,
    an API key and ``sessions`` paired sessions holding a few messages."""
    base = daemon.base_url

    def agent(n: int) -> None:
        with httpx.Client(base_url=base, timeout=60) as http:
            body = {"userId": "bench", "agentId": f"bench-{n}", "apikey": f"bench-key-{n}"}
            r = http.post("/sessions", json=body)
            assert r.status_code in (200, 201), r.text
            daemon_scan(http, f"bench-{n}", f"6281300{n:06d}")
            _wait_connected(http, f"/sessions/bench-{n}", lambda d: d["liveState"]["isConnected"])

    def daemon_scan(http: httpx.Client, agent_id: str, phone: str) -> None:
        r = http.post(f"/_sim/agents/{agent_id}/scan", json={"phone": phone})
        assert r.status_code == 200, r.text

    _parallel(agents, agent)

    http = daemon.sim
    pin = http.post("/api/v1/auth/generate-pin").json()["data"]["pin"]
    login = http.post("/api/v1/auth/login", auth=(pin, ""))
    token: str = login.json()["data"]["token"]
    auth = {"Authorization": f"Bearer {token}"}
    r = http.post("/api/v1/keys", json={"name": "bench"}, headers=auth)
    assert r.status_code == 201, r.text
    api_key: str = r.json()["data"]["key"]
    ids: list[str] = []
    for n in range(sessions):
        r = http.post("/api/v1/sessions", json={"session_name": f"Bench {n + 1}"}, headers=auth)
        assert r.status_code == 201, r.text
        ids.append(r.json()["data"]["session_id"])

    def session(n: int) -> None:
        with httpx.Client(base_url=base, timeout=60, headers=auth) as h:
            r = h.post(f"/api/v1/sessions/{ids[n]}/start")
            assert r.status_code == 200, r.text
            daemon_scan(h, ids[n], f"6281400{n:06d}")
            _wait_connected(h, f"/api/v1/sessions/{ids[n]}", lambda d: d["status"] == "connected")
            for i in range(5):
                message = {"kind": "text", "from": "6281111111111", "text": f"hello {i}"}
                r = h.post(f"/_sim/agents/{ids[n]}/inject", json=message)
                assert r.status_code == 200, r.text

    _parallel(sessions, session)
    return World(
        agents=[(f"bench-{n}", f"bench-key-{n}") for n in range(agents)],
        token=token,
        api_key=api_key,
        sessions=ids,
    )


def targets(world: World, directory: Path) -> list[Target]:
    def spread(name: str, lines: list[str]) -> Path:
        path = directory / f"{name}.requests"
        path.write_text("".join(line + "\n" for line in lines))
        return path

    send_body = json.dumps({"to": "6281234567890", "message": "bench"}, separators=(",", ":"))
    jwt = f"Authorization: Bearer {world.token}"
    return [
        Target("bare", "bare GET /ping (the ceiling)", "GET", "/ping", kind="ceiling", bare=True),
        Target(
            "404",
            "404 (middleware only)",
            "GET",
            "/agents/none/nothing",
            expect=404,
            kind="middleware",
        ),
        Target("health", "GET /health", "GET", "/health"),
        Target(
            "session",
            "GET /sessions/{id}",
            "GET",
            requests=spread("session", [f"/sessions/{a}" for a, _ in world.agents]),
        ),
        Target(
            "send",
            f"POST /agents/{{id}}/messages ({len(world.agents)} agents)",
            "POST",
            requests=spread(
                "send",
                [
                    f"/agents/{a}/messages\tAuthorization: Bearer {key}\tbody={send_body}"
                    for a, key in world.agents
                ],
            ),
            kind="write",
        ),
        Target("v1-jwt", "GET /api/v1/sessions (JWT)", "GET", "/api/v1/sessions", headers=(jwt,)),
        Target(
            "v1-key",
            "GET /api/v1/sessions (API key)",
            "GET",
            "/api/v1/sessions",
            headers=(f"X-API-Key: {world.api_key}",),
        ),
        Target(
            "overview",
            "GET /api/v1/analytics/overview",
            "GET",
            "/api/v1/analytics/overview",
            headers=(jwt,),
        ),
    ]


def check(base_url: str, target: Target) -> None:
    """One request by hand: the route answers what wrk will count as expected."""
    headers = dict(h.split(": ", 1) for h in target.headers)
    if target.requests is not None:
        fields = target.requests.read_text().splitlines()[0].split("\t")
        path, body = fields[0], None
        for f in fields[1:]:
            if f.startswith("body="):
                body = f[5:]
            else:
                name, value = f.split(": ", 1)
                headers[name] = value
        if body is not None:
            headers["Content-Type"] = "application/json"
    else:
        path, body = target.path, None
    r = httpx.request(target.method, base_url + path, headers=headers, content=body, timeout=30)
    assert r.status_code == target.expect, f"{target.name}: {r.status_code} {r.text[:300]}"


# --------------------------------------------------------------------------- report


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def report(
    routes: list[Target], low: dict[str, Result], high: dict[str, Result], args: argparse.Namespace
) -> None:
    # The ceiling is measured first and last; the machine may be busier at one end.
    ceilings = [t.name for t in routes if t.bare]
    bare_rps = sum(low[n].rps for n in ceilings) / len(ceilings)
    bare_p99_high = sum(high[n].p99 for n in ceilings) / len(ceilings) if high else None
    c, ch = args.connections, args.p99_connections
    print(
        f"\nwrk -t{args.threads} -c{c} -d{args.duration:g}s --latency (req/s, p50, p99), "
        f"and -c{ch} for the p99 comparison"
    )
    head = (
        f"{'route':44} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'ratio':>6}  {'target':14}"
        f" {f'p99@{ch}':>8} {'×bare':>6}  {'p99 target':10}"
    )
    print(head)
    print("-" * len(head))
    missed = 0
    for t in routes:
        r = low[t.name]
        ratio = r.rps / bare_rps
        if t.kind == "middleware":
            goal = f"≥ {MIDDLEWARE_TARGET} {verdict(ratio >= MIDDLEWARE_TARGET)}"
            missed += ratio < MIDDLEWARE_TARGET
        elif t.kind == "read":
            goal = f"≥ {READ_TARGET} {verdict(ratio >= READ_TARGET)}"
            missed += ratio < READ_TARGET
        else:
            goal = "—"
        line = f"{t.label:44} {r.rps:8.0f} {r.p50:7.2f} {r.p99:7.2f} {ratio:6.2f}  {goal:14}"
        if t.name in high and bare_p99_high is not None:
            h = high[t.name]
            times = h.p99 / bare_p99_high
            if t.bare:
                line += f" {h.p99:8.2f} {times:6.2f}  —"
            else:
                line += (
                    f" {h.p99:8.2f} {times:6.2f}  ≤ {P99_TARGET:g} {verdict(times <= P99_TARGET)}"
                )
                missed += times > P99_TARGET
        bad = r.unexpected + (high[t.name].unexpected if t.name in high else 0)
        if bad:
            line += f"  ({bad} unexpected answers or socket errors)"
        print(line)
    print(
        "\nratios: to the mean of the bare route's two runs (first and last: "
        + " / ".join(f"{low[n].rps:.0f}" for n in ceilings)
        + " req/s)"
    )
    print(
        f"targets (issue 14): 404 (middleware only) ≥ {MIDDLEWARE_TARGET} of the bare req/s; "
        f"every read ≥ {READ_TARGET}; p99 at {ch} connections ≤ {P99_TARGET:g}× the bare p99"
    )
    print(
        "config raised for the bench: agents.send_rate_per_minute = 600000, send_burst = "
        "100000 (no agent's bucket is the limit); auth.requests_per_minute = 1e9"
    )
    print(f"{missed} target(s) missed" if missed else "every target met")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--p99-connections", type=int, default=64, help="0: skip that pass")
    parser.add_argument("--agents", type=int, default=100, help="paired agents sends spread over")
    parser.add_argument("--sessions", type=int, default=10, help="the /api/v1 user's sessions")
    parser.add_argument("--only", default="", help="comma-separated route names (bare always)")
    args = parser.parse_args()
    assert Path(WRK).is_file(), "bench/http_routes.py needs wrk: apt-get install wrk"

    def run(dsn: str) -> None:
        with tempfile.TemporaryDirectory(prefix="gatewayd-bench-http-") as tmp:
            config = write_sim_config(Path(tmp), dsn, BENCH_CONFIG)
            bare = BareApp()
            try:
                with SimDaemon.running(config) as daemon:
                    began = time.monotonic()
                    world = populate(daemon, args.agents, args.sessions)
                    print(
                        f"gatewayd at {daemon.base_url} (pid {daemon.process.pid}), bare route "
                        f"at {bare.base_url} (pid {bare.process.pid}); {args.agents} agents and "
                        f"{args.sessions} /api/v1 sessions paired in "
                        f"{time.monotonic() - began:.1f} s",
                        flush=True,
                    )
                    measure(bare.base_url, daemon.base_url, targets(world, Path(tmp)), args)
            finally:
                bare.stop()

    on_embedded_postgres(run)


def measure(bare_url: str, daemon_url: str, routes: list[Target], args: argparse.Namespace) -> None:
    only = {name for name in args.only.split(",") if name}
    routes = [t for t in routes if t.bare or not only or t.name in only]
    low: dict[str, Result] = {}
    high: dict[str, Result] = {}
    passes = [(args.connections, low)]
    if args.p99_connections:
        passes.append((args.p99_connections, high))
    routes = [*routes, attrs.evolve(routes[0], name="bare-end", label="bare GET /ping, again")]
    for t in routes:
        url = bare_url if t.bare else daemon_url
        check(url, t)
        for connections, into in passes:
            if args.warmup > 0:
                wrk(url, t, connections=connections, duration=args.warmup, threads=args.threads)
            out = wrk(url, t, connections=connections, duration=args.duration, threads=args.threads)
            into[t.name] = parse_wrk(out, t.expect)
            r = into[t.name]
            print(
                f"  {t.name:9} -c{connections:<3} {r.rps:8.0f} req/s  p50 {r.p50:6.2f} ms  "
                f"p99 {r.p99:6.2f} ms  ({r.requests} requests, {r.unexpected} unexpected)",
                flush=True,
            )
    report(routes, low, high, args)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
