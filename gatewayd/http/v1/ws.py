"""Live events over WebSocket (docs/contract/api-v1.md §11).

``WS /ws/sessions/{session_id}`` streams one session's ``qr_update``, ``status_update`` and
``message_received`` frames (gatewayd/http/v1/ws_render.py); ``WS /ws/sessions`` streams the
same for every session of the user, sessions created later included. Each frame names its
``session_id``. On connect the current state comes first: a ``status_update`` per session, and
a ``qr_update`` when a QR is showing.

The credential (a login token or an API key, as every /api/v1 route takes them) is the
``token`` query parameter or, so that browsers need not put it in a URL, a
``Sec-WebSocket-Protocol`` value: the first offered value that is not the marker ``bearer``.
The answer echoes ``bearer`` when it was offered, else the value that carried the credential.
The handshake spends one request of the user's budget (a refused credential: of the client
address's), like any /api/v1 request.

Refusals accept the handshake and then close it, because a browser shows a script nothing
of a refused handshake but the close code does reach it:

======  =================================================================
4401    no credential, or one that is invalid, expired, logged out or revoked
4404    the session is unknown or another user's (the same code for both)
4429    the request budget is spent
1011    the daemon could not answer (e.g. the database is unreachable)
1013    the client did not keep up: its queue of events was full
1001    the daemon is stopping
======  =================================================================

Each connection reads the events bus through a bounded queue (``queue`` events). Publishing
never waits for a socket: when the queue is full the connection is closed with 1013 and the
others are not affected. A connection that is quiet for ``ping_interval`` seconds gets a
``{"type": "ping"}`` frame: proxies keep it open, and a peer that vanished without closing is
noticed by the kernel once sent data goes unacknowledged; one that closed is noticed at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

import attrs
import structlog
import trio
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket

from gatewayd.config import WebSocketConfig
from gatewayd.errors import GatewayError, SessionNotFound, Unauthorized
from gatewayd.http.v1 import ws_render
from gatewayd.nursery.bus import BusEvent, EventBus, Subscription
from gatewayd.store import owned
from gatewayd.store.agents import AgentRecord
from gatewayd.usecases import identity, user_sessions
from gatewayd.usecases.core import Services
from gatewayd.usecases.identity import Principal
from gatewayd.usecases.sessions import session_state

log = structlog.get_logger()

# Close codes (the table in the module docstring).
UNAUTHORIZED = 4401
NOT_FOUND = 4404
TOO_MANY = 4429
INTERNAL = 1011
TOO_SLOW = 1013
GOING_AWAY = 1001
#: The subprotocol value that says "the other value is my credential".
MARKER = "bearer"
#: Bus events a client is shown.
SHOWN = frozenset({"status", "qr", "message"})


@runtime_checkable
class _Stoppable(Protocol):
    stop_requested: trio.Event


class _Refused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


def _bus(found: Services) -> EventBus:
    return found.bus


def _credential(websocket: WebSocket) -> tuple[str | None, str | None]:
    """(credential, subprotocol to echo)."""
    offered = [p for p in websocket.scope.get("subprotocols") or [] if isinstance(p, str)]
    echo = MARKER if MARKER in offered else None
    token = websocket.query_params.get("token")
    from_protocol = next((p for p in offered if p != MARKER), None)
    if echo is None and offered:
        echo = from_protocol
    if token:
        return token, echo
    return from_protocol, echo


@attrs.define(eq=False)
class _Connection:
    found: Services
    principal: Principal
    websocket: WebSocket
    knobs: WebSocketConfig
    #: The sessions this connection may show, by agent id (None: someone else's).
    records: dict[str, AgentRecord | None]
    #: Whether sessions created after connecting are shown too (``/ws/sessions``).
    follow_new: bool
    close_code: int | None = None

    async def mine(self, agent_id: str) -> bool:
        if agent_id not in self.records:
            if not self.follow_new:
                return False
            db, user = self.found.db, self.principal.user_id
            try:
                self.records[agent_id] = await owned.get_by_agent_id(db, user, agent_id)
            except GatewayError as exc:  # not known yet: asked again at its next event
                log.warning("gatewayd.ws.lookup_failed", error=exc.message)
                return False
        return self.records[agent_id] is not None

    async def render(self, event: BusEvent) -> str | None:
        record = self.records.get(event.agent_id)
        if record is None:
            return None
        if event.kind == "status":
            # The phone and device arrive with pairing: read them again (never another user's).
            fresh = await owned.get_by_agent_id(self.found.db, record.user_id, record.agent_id)
            record = self.records[event.agent_id] = fresh or record
            return ws_render.status_update(record, str(event.data.get("status") or "unknown"))
        if event.kind == "qr":
            handle = self.found.agents.get(event.agent_id)
            return await ws_render.qr_update(record, event.data, handle.qr if handle else None)
        country = self.found.config.whatsapp.default_country_code
        return ws_render.message_received(record, event.data, country)

    def slow(self) -> None:
        if self.close_code is None:
            self.close_code = TOO_SLOW
            self.found.metrics.ws_closed_slow.inc()
            log.warning("gatewayd.ws.too_slow", userId=self.principal.user_id)

    async def pump(self, sub: Subscription, out: trio.MemorySendChannel[BusEvent]) -> None:
        """Bus → this connection's bounded queue, never waiting on the socket."""
        async with out:
            async for event in sub:
                if event.kind not in SHOWN or not await self.mine(event.agent_id):
                    continue
                try:
                    out.send_nowait(event)
                except trio.WouldBlock:
                    self.slow()
                    return
            if sub.dropped:
                self.slow()

    async def write(self, events: trio.MemoryReceiveChannel[BusEvent]) -> None:
        """The one task that sends: events as they come, a ping when there are none."""
        while self.close_code is None:
            event = None
            with trio.move_on_after(self.knobs.ping_interval):
                try:
                    event = await events.receive()
                except trio.EndOfChannel:
                    return
            try:
                text = ws_render.ping() if event is None else await self.render(event)
            except GatewayError as exc:
                log.warning("gatewayd.ws.event_skipped", error=exc.message)
                continue
            if text is not None and self.close_code is None:
                await self.websocket.send_text(text)

    async def read(self) -> None:
        """Whatever the client sends is ignored; reading is how its leaving is noticed."""
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return

    async def stop_on(self, stopping: trio.Event) -> None:
        await stopping.wait()
        self.close_code = GOING_AWAY

    async def first_frames(self) -> None:
        for record in [r for r in self.records.values() if r is not None]:
            state = session_state(self.found, record)
            await self.websocket.send_text(ws_render.status_update(record, state.status))
            qr = await ws_render.current_qr(record, state)
            if qr is not None:
                await self.websocket.send_text(qr)

    async def serve(self, stopping: trio.Event | None) -> None:
        bus = _bus(self.found)
        send, receive = trio.open_memory_channel[BusEvent](self.knobs.queue)
        # Subscribed before the current state is read: nothing in between is missed.
        with bus.subscribe(None if self.follow_new else next(iter(self.records))) as sub:
            await self.first_frames()
            async with trio.open_nursery() as nursery:

                async def first_to_end(task: Callable[..., Awaitable[None]], *args: Any) -> None:
                    await task(*args)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(first_to_end, self.read)
                nursery.start_soon(first_to_end, self.pump, sub, send)
                nursery.start_soon(first_to_end, self.write, receive)
                if stopping is not None:
                    nursery.start_soon(first_to_end, self.stop_on, stopping)


async def _authenticate(found: Services, websocket: WebSocket) -> Principal:
    credential, _ = _credential(websocket)
    address = websocket.client.host if websocket.client is not None else "unknown"
    try:
        if not credential:
            raise Unauthorized("missing credentials")
        principal = await identity.authenticate(found.db, found.identity, credential)
    except Unauthorized:  # InvalidApiKey included
        if not found.limits.anonymous.hit(address).allowed:
            raise _Refused(TOO_MANY, "Too many requests; try again later") from None
        raise _Refused(UNAUTHORIZED, "Unauthorized") from None
    if not found.limits.users.hit(principal.user_id).allowed:
        raise _Refused(TOO_MANY, "Too many requests; try again later")
    return principal


async def _records(
    found: Services, principal: Principal, websocket: WebSocket
) -> dict[str, AgentRecord | None]:
    session_id = websocket.path_params.get("session_id")
    if session_id is None:
        listed = await owned.list_sessions(found.db, principal.user_id)
        return {r.agent_id: r for r in listed}
    try:
        record = await user_sessions.owned_session(found, principal.user_id, session_id)
    except SessionNotFound:
        raise _Refused(NOT_FOUND, "Session not found") from None
    return {record.agent_id: record}


Endpoint = Callable[[WebSocket], Awaitable[None]]


def _endpoint() -> Endpoint:
    async def endpoint(websocket: WebSocket) -> None:
        found: Services = websocket.app.state.services
        ops = getattr(websocket.app.state, "ops", None)
        stopping = ops.stop_requested if isinstance(ops, _Stoppable) else None
        _, echo = _credential(websocket)
        knobs = found.config.websocket  # live: a reload applies to new connections
        await websocket.accept(subprotocol=echo)
        found.metrics.ws_connections.inc()
        try:
            code, reason = await _serve(found, websocket, knobs, stopping)
            if code is not None:
                with contextlib.suppress(Exception):  # the peer is gone: nothing to tell it
                    await websocket.close(code, reason)
        finally:
            found.metrics.ws_connections.dec()

    return endpoint


async def _serve(
    found: Services, websocket: WebSocket, knobs: WebSocketConfig, stopping: trio.Event | None
) -> tuple[int | None, str]:
    """Serve one accepted socket; the close code and reason to end it with (None: it ended)."""
    try:
        principal = await _authenticate(found, websocket)
        records = await _records(found, principal, websocket)
        follow_new = "session_id" not in websocket.path_params
        connection = _Connection(found, principal, websocket, knobs, records, follow_new)
        await connection.serve(stopping)
    except _Refused as refused:
        log.info("gatewayd.ws.refused", code=refused.code)
        return refused.code, refused.reason
    except GatewayError as exc:
        if stopping is not None and stopping.is_set():  # e.g. the store closed under it
            return GOING_AWAY, "Server stopping"
        log.warning("gatewayd.ws.failed", error=exc.message)
        return INTERNAL, "Try again later"
    except Exception:
        log.exception("gatewayd.ws.crashed")
        return INTERNAL, "Internal error"
    code = connection.close_code
    return code, {TOO_SLOW: "Too slow", GOING_AWAY: "Server stopping"}.get(code or 0, "")


def ws_routes() -> list[BaseRoute]:
    """The WebSocket routes (their knobs: the live config's ``websocket`` section)."""
    endpoint = _endpoint()
    return [
        WebSocketRoute("/ws/sessions", endpoint),
        WebSocketRoute("/ws/sessions/{session_id}", endpoint),
    ]
