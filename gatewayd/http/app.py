"""The Starlette application factory and the hypercorn task that serves it.

The application is Starlette with two changes that keep each request's path short (issue 14,
``bench/http_routes.py``): one middleware layer (gatewayd/http/middleware.py ``Edge``) in place of
Starlette's ``ServerErrorMiddleware``/``ExceptionMiddleware`` and the daemon's own six, and a
router that tries only the routes a path can match instead of every route in turn.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Awaitable, Callable, Sequence

import structlog
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from starlette._utils import get_route_path
from starlette.applications import Starlette
from starlette.datastructures import URL
from starlette.responses import RedirectResponse
from starlette.routing import BaseRoute, Match, Mount, Route, Router, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from gatewayd.config import Config
from gatewayd.http import middleware as mw
from gatewayd.http.proxy import TrustedProxies
from gatewayd.http.routes_agents import agents_routes
from gatewayd.http.routes_dashboard import Dashboard, dashboard_routes
from gatewayd.http.routes_docs import docs_routes
from gatewayd.http.routes_media import media_routes
from gatewayd.http.routes_ops import Ops, ops_routes
from gatewayd.http.routes_sim import InProcess, sim_routes
from gatewayd.http.v1.agents import agents_v1_routes
from gatewayd.http.v1.analytics import analytics_routes
from gatewayd.http.v1.auth import auth_routes
from gatewayd.http.v1.sessions import sessions_routes
from gatewayd.http.v1.webhooks import webhook_routes
from gatewayd.http.v1.ws import ws_routes
from gatewayd.usecases.core import Services
from gatewayd.whatsapp.sim import SimulatedWhatsApp

log = structlog.get_logger()


def _literal_segments(route: BaseRoute) -> list[str]:
    """The path segments a route's path starts with, up to its first parameter: only a path
    that starts with the same segments can match it. [] for a route of another kind."""
    if not isinstance(route, Route | WebSocketRoute | Mount):
        return []
    literal = []
    for segment in route.path.split("/")[1:]:
        if "{" in segment:
            break
        literal.append(segment)
    return literal


class _Node:
    """A node of the route index: the routes a path that reaches it may match, in order."""

    def __init__(self, routes: list[BaseRoute]) -> None:
        self.children: dict[str, _Node] = {}
        self.routes = routes


class IndexedRouter(Router):
    """Starlette's router, trying for each path only the routes it can match.

    Starlette tries every route in order (twice for a path that matches none, the second
    time with its trailing slash toggled for ``redirect_slashes``): some 100 regular
    expressions for a 404. Here the routes hang in a tree by the literal path segments they
    start with; a path walks down it as far as its segments lead and is tried against the
    routes met on the way, in their order. Which route answers (the first full match, else
    the first partial one for a 405, else a redirect, else ``default``) is therefore what
    Starlette's ``Router.app`` would decide. The routes are fixed once a request came in.
    """

    _index: _Node | None = None

    def _build(self) -> _Node:
        root = _Node([])
        for route in self.routes:
            node = root
            for segment in _literal_segments(route):
                child = node.children.get(segment)
                if child is None:
                    child = node.children[segment] = _Node(list(node.routes))
                node = child
            # Every node below gets it too: its path passes here.
            stack = [node]
            while stack:
                below = stack.pop()
                below.routes.append(route)
                stack.extend(below.children.values())
        return root

    def _candidates(self, path: str) -> list[BaseRoute]:
        node = self._index
        if node is None:
            node = self._index = self._build()
        for segment in path.split("/")[1:]:
            child = node.children.get(segment)
            if child is None:
                break
            node = child
        return node.routes

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await super().app(scope, receive, send)
            return
        if "router" not in scope:
            scope["router"] = self
        route_path = get_route_path(scope)
        partial = None
        for route in self._candidates(route_path):
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                scope["route"] = route
                scope.update(child_scope)
                await route.handle(scope, receive, send)
                return
            elif match is Match.PARTIAL and partial is None:
                partial = route
                partial_scope = child_scope
        if partial is not None:
            scope["route"] = partial
            scope.update(partial_scope)
            await partial.handle(scope, receive, send)
            return
        if scope["type"] == "http" and self.redirect_slashes and route_path != "/":
            redirect_scope = dict(scope)
            if route_path.endswith("/"):
                redirect_scope["path"] = redirect_scope["path"].rstrip("/")
            else:
                redirect_scope["path"] = redirect_scope["path"] + "/"
            for route in self._candidates(get_route_path(redirect_scope)):
                match, child_scope = route.matches(redirect_scope)
                if match is not Match.NONE:
                    response = RedirectResponse(url=str(URL(scope=redirect_scope)))
                    await response(scope, receive, send)
                    return
        await self.default(scope, receive, send)


class GatewayApp(Starlette):
    """Starlette whose whole middleware stack is the one ``Edge`` layer around the router:
    the edge renders every error itself, Starlette's ``HTTPException`` (404, 405) included,
    so neither ``ServerErrorMiddleware`` nor ``ExceptionMiddleware`` is stacked."""

    def __init__(self, routes: Sequence[BaseRoute], services: Services) -> None:
        super().__init__()
        self.router = IndexedRouter(routes)
        self.edge = mw.Edge(self.router, settings=services.settings, metrics=services.metrics)
        # Outermost: behind a trusted reverse proxy, everything below sees the real client.
        self.entry = TrustedProxies(self.edge, services.settings)

    def build_middleware_stack(self) -> ASGIApp:
        return self.entry


def create_app(
    services: Services,
    ops: Ops,
    *,
    sim: SimulatedWhatsApp | None = None,
    extra_routes: Sequence[BaseRoute] = (),
    dashboard: Dashboard | None = None,
) -> Starlette:
    """The daemon's HTTP application. ``sim``: the in-process simulated network, whose
    control API (``/_sim/``) is served only then (a simnet process serves its own).
    ``dashboard``: the web app served at ``/`` (default: the one built into the package)."""
    settings: Callable[[], Config] = services.settings
    dashboard = dashboard if dashboard is not None else Dashboard()
    routes = [
        *ops_routes(),
        *agents_routes(),
        *auth_routes(),
        # The agent family's literal paths (/api/v1/sessions/create, …) before /{session_id}.
        *agents_v1_routes(),
        *sessions_routes(),
        *webhook_routes(),
        *analytics_routes(),
        *ws_routes(),
        *media_routes(services.media),
        *docs_routes(settings=settings),
        *dashboard_routes(dashboard),
        *extra_routes,
    ]
    if sim is not None:
        routes += sim_routes()
    app = GatewayApp(routes, services)
    # Client-side routes of the app: whatever no route answers, outside the reserved paths.
    app.router.default = dashboard.fallback(app.router.default)
    app.state.services = services
    app.state.ops = ops
    if sim is not None:
        app.state.sim_host = InProcess(sim)
    return app


def hypercorn_config(host: str, port: int, grace: float) -> HypercornConfig:
    config = HypercornConfig()
    # IPv6 literals need brackets in a bind string.
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None  # RequestMetrics and our own log lines cover requests
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = grace
    config.include_server_header = False
    return config


#: Allocations between two young-generation collections (CPython's default: 700).
GC_YOUNG_THRESHOLD = 10_000


def collect_less_often() -> None:
    """Let the cyclic garbage collector run its young generation every ``GC_YOUNG_THRESHOLD``
    allocations instead of every 700.

    Under load, every young collection found the objects of the requests in flight alive and
    promoted them; they died soon after in the oldest generation, whose growth set off full
    collections of the whole heap (~75 ms each with 100 agents): in bench/http_routes.py over 40
    seconds of load, 41 of them, 2.9 s in all, and most of each route's p99. With 10,000 the
    young collections see mostly dead requests, and full ones become rare. Nothing is freed
    later than a few thousand allocations: reference counting still frees what has no cycle.
    """
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


async def serve_http(
    app: Starlette,
    config: HypercornConfig,
    shutdown_trigger: Callable[[], Awaitable[None]],
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``shutdown_trigger`` returns, then give in-flight requests
    ``config.graceful_timeout`` seconds to finish."""
    collect_less_often()
    await serve(app, config, shutdown_trigger=shutdown_trigger, task_status=task_status)  # type: ignore[arg-type]
