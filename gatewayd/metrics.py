"""Every Prometheus metric of the daemon, on a registry of its own.

Names follow ``gatewayd_<noun>_<unit|total>`` with bounded labels (a route template,
never a raw path). The deployed service's names (``whatsapp_*``) are kept as well so
existing dashboards keep working. One ``Metrics`` per running gateway, so several
gateways in one test process never share counters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "gatewayd_http_requests_total",
            "HTTP requests by method, route template and status code.",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "gatewayd_http_request_duration_seconds",
            "HTTP request duration by method and route template.",
            ["method", "route"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.config_reloads = Counter(
            "gatewayd_config_reloads_total",
            "SIGHUP reloads by result (applied, rejected).",
            ["result"],
            registry=r,
        )
        self.login_failures = Counter(
            "gatewayd_login_failures_total",
            "Refused PIN logins by reason (malformed, wrong_pin, throttled).",
            ["reason"],
            registry=r,
        )
        for reason in ("malformed", "wrong_pin", "throttled"):
            self.login_failures.labels(reason=reason)  # exported at 0 from the start
        # --- agents (the runtime) ---
        self.agents = Gauge("gatewayd_agents", "Agents by status.", ["status"], registry=r)
        self.agent_restarts = Counter(
            "gatewayd_agent_restarts_total",
            "Agent task trees restarted after an exception.",
            ["agent"],
            registry=r,
        )
        self.messages_sent = Counter(
            "gatewayd_messages_sent_total", "Messages sent, by agent.", ["agent"], registry=r
        )
        self.messages_received = Counter(
            "gatewayd_messages_received_total",
            "Messages received, by agent.",
            ["agent"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "gatewayd_send_queue_depth",
            "Commands waiting in an agent's send queue.",
            ["agent"],
            registry=r,
        )
        self.client_outdated = Gauge(
            "gatewayd_whatsapp_client_outdated",
            "1 once WhatsApp refused this client version (upgrade gatewayd / neonize).",
            registry=r,
        )
        # --- live events over WebSocket (gatewayd/http/v1/ws.py) ---
        self.ws_connections = Gauge(
            "gatewayd_websocket_connections", "Open WebSocket connections.", registry=r
        )
        self.ws_closed_slow = Counter(
            "gatewayd_websocket_closed_slow_total",
            "WebSocket connections closed (1013) because the client could not keep up.",
            registry=r,
        )
        # --- webhooks (gatewayd/nursery/webhooks.py) ---
        self.webhook_attempts = Counter(
            "gatewayd_webhook_attempts_total",
            "Webhook tries by result (success: a 2xx; failure: anything else).",
            ["result"],
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "gatewayd_webhook_deliveries_total",
            "Webhook deliveries settled, by outcome (delivered, dead).",
            ["outcome"],
            registry=r,
        )
        for result in ("success", "failure"):
            self.webhook_attempts.labels(result)
        for outcome in ("delivered", "dead"):
            self.webhook_deliveries.labels(outcome)
        self.webhook_duration = Histogram(
            "gatewayd_webhook_attempt_duration_seconds",
            "Duration of webhook tries, from resolving the name to the end of the answer.",
            registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.webhook_in_flight = Gauge(
            "gatewayd_webhook_in_flight", "Webhook tries in flight.", registry=r
        )
        # --- the deployed service's names ---
        self.wa_sessions_active = Gauge(
            "whatsapp_sessions_active", "Connected WhatsApp sessions.", registry=r
        )
        self.wa_messages_sent = Counter(
            "whatsapp_messages_sent_total", "Messages sent to WhatsApp.", ["agentId"], registry=r
        )
        self.wa_messages_received = Counter(
            "whatsapp_messages_received_total",
            "Messages received from WhatsApp.",
            ["agentId"],
            registry=r,
        )
        self.wa_errors = Counter("whatsapp_errors_total", "Errors by code.", ["code"], registry=r)
        self.wa_ai_latency = Histogram(
            "whatsapp_ai_latency_seconds",
            "Latency of AI backend calls.",
            registry=r,
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60),
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
