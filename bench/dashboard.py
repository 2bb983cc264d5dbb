"""How fast the dashboard page shows and becomes usable (issue 13, item 5; seed 003's targets:
first contentful paint < 1.5 s, time to interactive < 3 s, bundle < 500 KB gzipped).

    .venv/bin/python bench/dashboard.py [--runs 10] [--sessions 20] [--cpu-slowdown 4]

Starts an embedded PostgreSQL and a real ``gatewayd run --whatsapp sim`` serving the built app
(``make dashboard`` builds it), makes a user with ``--sessions`` sessions (half linked, with
messages), and loads ``/dashboard`` logged in, in the system's Chromium (headless, the same
one the browser tests use), ``--runs`` times each way:

* cold        a new browser profile each run: nothing cached
* warm        a reload in the same profile: the hashed assets come from the cache
* cold, slow  as cold, with the CPU slowed ``--cpu-slowdown`` times (DevTools' throttling),
              a stand-in for a modest phone

Figures per load, from the page's own performance timeline:

* FCP    the ``first-contentful-paint`` entry
* ready  when the sessions list is rendered (``[data-testid=dashboard-ready]`` appears,
         seen by a MutationObserver installed before the page's own scripts)
* TTI    time to interactive, the simplified Lighthouse reading: the end of the last long
         task (> 50 ms, ``longtask`` entries) before a quiet window, but no earlier than
         DOMContentLoaded and ``ready`` (the page is not usable before its data shows)

The baseline, measured in the same run and browser: ``/docs``, the daemon's server-rendered
page without any script; the dashboard's FCP is also printed as a ratio to it. "KB sent" is
what crossed the network for one load (``transferSize``: gzipped bodies and headers, nothing
for what came from the cache).
"""

from __future__ import annotations

import argparse
import base64
import gzip
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/browser.py

from embedded import on_embedded_postgres  # bench/embedded.py, beside this script
from playwright.sync_api import Browser, sync_playwright

from gatewayd.http.routes_dashboard import static_root
from tests.browser import SimDaemon, launch_chromium, write_sim_config

FCP_TARGET_MS = 1500
TTI_TARGET_MS = 3000
BUDGET_BYTES = 500 * 1024
QUIET_MS = 5000  # Lighthouse's quiet window

#: Before any of the page's scripts: collect long tasks and the moment the list shows.
PROBE = """
window.__bench = {longTasks: [], ready: null};
new PerformanceObserver(list => {
  for (const e of list.getEntries()) window.__bench.longTasks.push([e.startTime, e.duration]);
}).observe({type: 'longtask'});
new MutationObserver((_, observer) => {
  if (document.querySelector('[data-testid=dashboard-ready]')) {
    window.__bench.ready = performance.now();
    observer.disconnect();
  }
}).observe(document, {childList: true, subtree: true});
"""

FCP = "performance.getEntriesByName('first-contentful-paint')[0]?.startTime"
PAINTED = f"() => {FCP} !== undefined"

READ = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const fcp = performance.getEntriesByName('first-contentful-paint')[0];
  const bytes = performance.getEntriesByType('resource')
    .reduce((sum, r) => sum + (r.transferSize || 0), nav.transferSize || 0);
  return {fcp: fcp ? fcp.startTime : null, dcl: nav.domContentLoadedEventEnd,
          ready: window.__bench ? window.__bench.ready : null,
          longTasks: window.__bench ? window.__bench.longTasks : [], bytes};
}"""


def tti(sample: dict[str, Any]) -> float:
    """The end of the last long task before the first quiet window of ``QUIET_MS``, starting
    from the later of DOMContentLoaded, FCP and ``ready``."""
    at = max(sample["dcl"], sample["fcp"], sample["ready"])
    for start, duration in sorted(sample["longTasks"]):
        end = start + duration
        if end <= at:
            continue
        if start - at >= QUIET_MS:
            break
        at = end
    return float(at)


def populate(daemon: SimDaemon, sessions: int) -> str:
    """A user with ``sessions`` sessions, half of them linked with a few messages; its token."""
    http = daemon.sim
    pin = http.post("/api/v1/auth/generate-pin").json()["data"]["pin"]
    basic = base64.b64encode(f"{pin}:".encode()).decode()
    login = http.post("/api/v1/auth/login", headers={"Authorization": f"Basic {basic}"})
    token: str = login.json()["data"]["token"]
    auth = {"Authorization": f"Bearer {token}"}
    for n in range(sessions):
        body = {"session_name": f"Agent {n + 1}"}
        session = http.post("/api/v1/sessions", json=body, headers=auth).json()["data"]
        if n % 2 == 0:
            http.post(f"/api/v1/sessions/{session['session_id']}/start", headers=auth)
            daemon.scan(session["session_id"], f"62812000{n:05d}")
            for i in range(5):
                daemon.inject(session["session_id"], **{"from": "6281111111111", "text": f"m{i}"})
    return token


def load(browser: Browser, base_url: str, token: str, *, runs: int, mode: str, slowdown: float):
    samples = []
    context = None
    for _ in range(runs):
        if context is None or mode != "warm":
            if context is not None:
                context.close()
            context = browser.new_context(
                base_url=base_url, viewport={"width": 1280, "height": 800}
            )
            context.add_init_script(f"localStorage.setItem('gatewayd.token', {token!r});")
            context.add_init_script(PROBE)
            page = context.new_page()
            if mode == "warm":  # the first load fills the cache; it is not counted
                page.goto("/dashboard")
                page.wait_for_selector("[data-testid=dashboard-ready]", state="attached")
        if slowdown > 1:
            cdp = context.new_cdp_session(page)
            cdp.send("Emulation.setCPUThrottlingRate", {"rate": slowdown})
        if mode == "warm":
            page.reload()
        else:
            page.goto("/dashboard")
        page.wait_for_selector("[data-testid=dashboard-ready]", state="attached")
        page.wait_for_function(PAINTED)
        page.wait_for_timeout(QUIET_MS)  # a quiet window can be seen
        sample = page.evaluate(READ)
        assert sample["fcp"] is not None and sample["ready"] is not None, sample
        sample["tti"] = tti(sample)
        samples.append(sample)
    if context is not None:
        context.close()
    return samples


def baseline(browser: Browser, base_url: str, runs: int) -> list[float]:
    fcps = []
    for _ in range(runs):
        context = browser.new_context(base_url=base_url)
        page = context.new_page()
        page.goto("/docs")
        page.wait_for_function(PAINTED)
        fcps.append(page.evaluate(f"() => {FCP}"))
        context.close()
    return fcps


def spread(values: list[float]) -> str:
    return f"{min(values):7.0f} {statistics.median(values):7.0f} {max(values):7.0f}"


def bundle() -> tuple[int, int, list[tuple[str, int]]]:
    root = Path(str(static_root()))
    assert (root / "index.html").is_file(), "the dashboard is not built: run `make dashboard`"
    files = [f for f in sorted(root.rglob("*")) if f.is_file()]
    sizes = [(str(f.relative_to(root)), len(gzip.compress(f.read_bytes(), 9))) for f in files]
    raw = sum(f.stat().st_size for f in files)
    return raw, sum(size for _, size in sizes), sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--cpu-slowdown", type=float, default=4.0)
    args = parser.parse_args()

    raw, packed, sizes = bundle()
    print(f"bundle: {raw / 1024:.1f} KB raw, {packed / 1024:.1f} KB gzipped in total", end="")
    print(f" (budget {BUDGET_BYTES // 1024} KB: {'ok' if packed < BUDGET_BYTES else 'OVER'})")
    for name, size in sizes:
        print(f"  {size / 1024:7.1f} KB  {name}")

    def run(dsn: str) -> None:
        with tempfile.TemporaryDirectory(prefix="gatewayd-bench-dash-") as tmp:
            with SimDaemon.running(write_sim_config(Path(tmp), dsn)) as daemon:
                token = populate(daemon, args.sessions)
                with sync_playwright() as playwright:
                    browser = launch_chromium(playwright)
                    try:
                        report(browser, daemon.base_url, token, args)
                    finally:
                        browser.close()

    on_embedded_postgres(run)


def report(browser: Browser, base_url: str, token: str, args: argparse.Namespace) -> None:
    base = baseline(browser, base_url, args.runs)
    print(f"\n/dashboard, {args.sessions} sessions, {args.runs} loads each; ms: min median max")
    print(f"{'':22} {'FCP':>23} {'ready':>23} {'TTI':>23} {'KB sent':>8}")
    print(f"{'baseline /docs':22} {spread(base)}")
    for mode, slowdown in (("cold", 1.0), ("warm", 1.0), ("cold", args.cpu_slowdown)):
        samples = load(browser, base_url, token, runs=args.runs, mode=mode, slowdown=slowdown)
        fcp = [s["fcp"] for s in samples]
        ready = [s["ready"] for s in samples]
        times = [s["tti"] for s in samples]
        sent = statistics.median(s["bytes"] for s in samples) / 1024
        name = mode if slowdown == 1 else f"{mode}, CPU /{slowdown:g}"
        verdict = (
            "ok"
            if statistics.median(fcp) < FCP_TARGET_MS and statistics.median(times) < TTI_TARGET_MS
            else "MISSED"
        )
        print(
            f"{name:22} {spread(fcp)} {spread(ready)} {spread(times)} {sent:8.1f}"
            f"  FCP/baseline {statistics.median(fcp) / statistics.median(base):.2f}x  {verdict}"
        )
    print(f"\ntargets (seed 003): FCP < {FCP_TARGET_MS} ms, TTI < {TTI_TARGET_MS} ms (medians)")


if __name__ == "__main__":
    main()
