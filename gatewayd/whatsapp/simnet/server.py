"""``gatewayd simnet``: the simulated WhatsApp network as a process of its own.

It outlives the daemons that use it, as WhatsApp does: devices, contacts, groups, bans, the
messages waiting for a device and the sent log are kept in a state file (``--state``) that is
rewritten atomically on every change that matters, so a restarted simnet carries on. It serves
the control API of ``gatewayd/http/routes_sim.py`` under ``/_sim/`` and the daemons' protocol
under ``/_net/`` (``routes.py``).
"""

from __future__ import annotations

import os
import secrets
import signal
from pathlib import Path

import structlog
import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from gatewayd.errors import GatewayError
from gatewayd.http import middleware as mw
from gatewayd.http.app import hypercorn_config, serve_http
from gatewayd.http.errors import error_response
from gatewayd.http.routes_sim import sim_routes
from gatewayd.whatsapp.sim import SimulatedWhatsApp
from gatewayd.whatsapp.simnet.routes import net_routes
from gatewayd.whatsapp.simnet.sessions import SessionHub
from gatewayd.whatsapp.simnet.statefile import Persister, load_state
from gatewayd.whatsapp.simnet.wire import WireError

log = structlog.get_logger()

GRACE = 1.0  # seconds in-flight requests get on stop (long polls end with the sessions)


async def _http_exception(request: Request, exc: Exception) -> Response:
    return error_response(request.scope, exc)


def create_simnet_app(hub: SessionHub) -> Starlette:
    app = Starlette(
        routes=[*sim_routes(), *net_routes()],
        middleware=[Middleware(mw.TraceId), Middleware(mw.Errors)],
        exception_handlers={HTTPException: _http_exception},
    )
    app.state.sim_host = hub
    return app


def open_network(state_path: Path | None) -> SimulatedWhatsApp:
    """A network with fresh randomness (ids must not repeat across restarts), restored from
    ``state_path`` when it exists."""
    network = SimulatedWhatsApp(seed=secrets.randbits(64))
    if state_path is None:
        return network
    try:
        state = load_state(state_path)
    except (WireError, OSError) as exc:
        raise GatewayError(f"cannot read the simnet state {state_path}: {exc}") from None
    if state is not None:
        network.restore(state)
        log.info(
            "gatewayd.simnet.restored",
            path=str(state_path),
            devices=len(state.devices),
            queued=sum(len(a.pending) for a in state.agents),
        )
    return network


async def run_simnet(
    host: str,
    port: int,
    state_path: Path | None,
    *,
    handle_signals: bool = True,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the network until SIGTERM/SIGINT; the state is saved once more on the way out."""
    network = open_network(state_path)
    hubs: list[SessionHub] = []
    persister = Persister(state_path, lambda: network.snapshot(hubs[0].unacked()))
    hub = SessionHub(network, persister)
    hubs.append(hub)
    stop = trio.Event()
    async with trio.open_nursery() as outer:
        # The persister outlives the sessions, so its last write sees where they stopped.
        await outer.start(persister.run)
        async with trio.open_nursery() as nursery:
            if handle_signals:
                await nursery.start(_serve_signals, stop)
            await nursery.start(hub.run)
            app, config = create_simnet_app(hub), hypercorn_config(host, port, GRACE)
            http_done = trio.Event()

            async def http_task(
                *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
            ) -> None:
                try:
                    await serve_http(app, config, stop.wait, task_status=task_status)
                finally:
                    http_done.set()

            binds: list[str] = await nursery.start(http_task)
            log.info(
                "gatewayd.simnet.listening",
                binds=binds,
                state=str(state_path) if state_path else None,
                pid=os.getpid(),
            )
            task_status.started(binds)
            await stop.wait()
            log.info("gatewayd.simnet.stopping")
            await http_done.wait()  # hypercorn gives open requests GRACE seconds
            nursery.cancel_scope.cancel()
        outer.cancel_scope.cancel()
    log.info("gatewayd.simnet.stopped")


async def _serve_signals(
    stop: trio.Event, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            if stop.is_set():
                raise KeyboardInterrupt
            log.info("gatewayd.simnet.signal", signal=signal.Signals(signum).name)
            stop.set()
