"""The webhook outbox survives kill -9 (issue 11): a real daemon process against a simnet
process, a real receiver on loopback that is down, then stalls, then recovers. Every
message's delivery arrives; duplicates (at least once) are counted, losses must be zero."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import attrs
import httpx
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gatewayd.outbound.webhook import new_webhook_secret
from tests.daemon import Daemon
from tests.loopback import serve_app
from tests.test_crash import query
from tests.test_simnet import link_agent, start_simnet, stop, write_daemon_config

CUSTOMER = "6281111111111"
N = 40


@attrs.define
class Receiver:
    """``fail``: 500 to everything; ``stall``: no answer; ``ok``: 200. Keeps the webhook-id
    of every request it answered 200."""

    url: str = ""
    mode: str = "fail"
    stalled: int = 0
    ok_ids: list[str] = attrs.field(factory=list)

    async def handle(self, request: Request) -> Response:
        await request.body()
        if self.mode == "stall":
            self.stalled += 1
            await trio.sleep_forever()
        if self.mode == "fail":
            return JSONResponse({"error": "down"}, status_code=500)
        self.ok_ids.append(request.headers["webhook-id"])
        return JSONResponse({"ok": True})


async def test_deliveries_survive_kill_9_of_the_daemon(
    tmp_path: Path, pg_dsn: str, nursery: trio.Nursery
) -> None:
    """N messages arrive while the receiver is down; the daemon is SIGKILLed while tries are
    in flight; after a restart and the receiver's recovery every message's delivery arrives
    (unique webhook-ids == N), none is lost."""
    receiver = Receiver()
    app = Starlette(routes=[Route("/{path:path}", receiver.handle, methods=["POST"])])
    receiver.url = await serve_app(nursery, app)
    simnet = await start_simnet(nursery, tmp_path / "net.json")
    config = tmp_path / "gatewayd.toml"
    extra = """
[forwarding]
enabled = false

[webhooks]
timeout = 1.0
retry_backoff = 0.1
schedule = [0.5]
poll_interval = 0.1
allow_private_urls = true
"""
    write_daemon_config(config, pg_dsn, simnet.base_url, extra)
    daemon = await Daemon.start(nursery, ["--config", str(config)])
    async with (
        httpx.AsyncClient(base_url=simnet.base_url, timeout=30) as sim,
        httpx.AsyncClient(base_url=daemon.base_url, timeout=30) as api,
    ):
        await link_agent(daemon, api, sim, "hooked", "628123450011")
    # The settings route is the lead's: the URL goes in the row, taken up at the next start.
    await trio.to_thread.run_sync(
        query,
        pg_dsn,
        f"UPDATE agents SET webhook_url = '{receiver.url}/hook',"
        f" webhook_secret = '{new_webhook_secret()}' WHERE agent_id = 'hooked' RETURNING id",
    )
    await stop(daemon)
    daemon = await Daemon.start(nursery, ["--config", str(config)])

    async with httpx.AsyncClient(base_url=simnet.base_url, timeout=30) as sim:
        for n in range(N):
            r = await sim.post(
                "/_sim/agents/hooked/inject", json={"from": CUSTOMER, "text": f"m{n}"}
            )
            assert r.status_code == 200, r.text  # stored (and its delivery with it)
    count = "SELECT count(*) FROM webhook_deliveries"
    assert (await trio.to_thread.run_sync(query, pg_dsn, count))[0][0] == N

    receiver.mode = "stall"  # tries in flight at the kill
    with trio.fail_after(20):
        while receiver.stalled < 4:
            await trio.sleep(0.05)
    daemon.kill()
    await daemon.wait()
    in_flight = receiver.stalled

    receiver.mode = "ok"
    daemon = await Daemon.start(nursery, ["--config", str(config)])
    with trio.fail_after(30):  # rows leased by the dead process return after timeout + 5 s
        while len(set(receiver.ok_ids)) < N:
            await trio.sleep(0.1)
    await trio.sleep(0.5)
    unique = Counter(receiver.ok_ids)
    duplicates = sum(n - 1 for n in unique.values())
    statuses = await trio.to_thread.run_sync(
        query, pg_dsn, "SELECT status, count(*) FROM webhook_deliveries GROUP BY 1"
    )
    assert len(unique) == N and dict(statuses) == {"delivered": N}
    print(f"webhooks: {N} delivered, {in_flight} in flight at the kill, {duplicates} duplicates")
    await stop(daemon)
    await stop(simnet)
