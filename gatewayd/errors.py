"""The project's own exception tree.

Exceptions from psycopg, httpx and neonize are translated into this tree at the
adapter edge (``map_exceptions`` in the adapter modules); nothing above the edges
catches a third-party exception. ``gatewayd.http.errors`` maps the tree to status
codes and error bodies in one table.

    GatewayError
    ├── ConfigError                  the TOML or the environment is invalid (.errors lists all)
    ├── InvalidPayload               the caller sent something unusable (400)
    │   └── InvalidRecipient         a number / JID that cannot be one
    ├── PayloadTooLarge              request body over the configured limit (413)
    ├── MediaTooLarge                media over the media limit (413)
    ├── Unauthorized                 missing or wrong credentials (401)
    │   └── InvalidApiKey            an API key that is unknown or revoked (401)
    ├── Forbidden                    credentials valid, target not yours (403)
    ├── NotFound                     no such route or resource (404)
    │   └── SessionNotFound          no such agent (404)
    ├── SessionNotReady              the agent is not connected (409)
    │   └── QrTimeout                no QR code came within the wait
    ├── IdempotencyConflict          a send with that Idempotency-Key is open or unknown (409)
    ├── RateLimited                  the agent's send queue is full (429)
    ├── RateLimitExceeded            a caller's request or login budget is spent (429)
    ├── AgentStopped                 the agent's task tree is gone (503)
    ├── SendTimeout                  a queued send did not go out in time (504)
    ├── UpstreamError                an outbound HTTP call failed
    │   ├── AITimeout                (504)
    │   ├── AIDownstreamError        the AI answered with an error (502)
    │   ├── BadGateway               unreachable / unusable answer (502)
    │   ├── AddressRefused           the URL resolves to a refused address (400)
    │   └── LangchainFailed          /api/v1/langchain/execute failed after its tries
    ├── StoreError                   the database failed (500)
    │   ├── StoreUnavailable         cannot reach the database (503)
    │   └── Conflict                 a uniqueness rule was broken (409)
    └── WhatsAppError                the WhatsApp client failed (502)
        ├── NotConnected             the client is not connected (409)
        └── SendOutcomeUnknown       no answer after the send went out: it may have arrived (502)
"""

from __future__ import annotations

from collections.abc import Sequence


class GatewayError(Exception):
    """Base of every error the project raises on purpose."""

    def __init__(self, message: str = "", *, details: object = None) -> None:
        super().__init__(message)
        self.message = message or self.__class__.__doc__ or self.__class__.__name__
        self.details = details


class ConfigError(GatewayError):
    """The configuration is invalid."""

    def __init__(self, errors: Sequence[str]) -> None:
        super().__init__("; ".join(errors), details=list(errors))
        self.errors = list(errors)


class InvalidPayload(GatewayError):
    """The request is not valid."""


class InvalidRecipient(InvalidPayload):
    """The recipient is not a valid phone number or JID."""


class PayloadTooLarge(GatewayError):
    """The request body is larger than allowed."""


class MediaTooLarge(GatewayError):
    """The media is larger than allowed."""


class Unauthorized(GatewayError):
    """Missing or invalid credentials."""


class InvalidApiKey(Unauthorized):
    """The API key is not valid or has been revoked."""


class Forbidden(GatewayError):
    """Not allowed."""


class NotFound(GatewayError):
    """Not found."""


class SessionNotFound(NotFound):
    """Session not found."""


class SessionNotReady(GatewayError):
    """Session is not connected."""


class QrTimeout(SessionNotReady):
    """No QR code came within the wait."""


class IdempotencyConflict(GatewayError):
    """A send with this Idempotency-Key is still in progress, or its outcome is unknown."""


class RateLimited(GatewayError):
    """Too many messages are waiting to be sent."""


class RateLimitExceeded(GatewayError):
    """Too many requests; try again later."""

    def __init__(
        self, message: str = "", *, retry_after: float, limit: int, remaining: int, reset: float
    ) -> None:
        super().__init__(message)
        #: Seconds until one more request is allowed (Retry-After).
        self.retry_after = retry_after
        #: The budget, and what is left of it (RateLimit-Limit, RateLimit-Remaining).
        self.limit = limit
        self.remaining = remaining
        #: Seconds until the whole budget is back (RateLimit-Reset).
        self.reset = reset


class AgentStopped(GatewayError):
    """The agent is not running."""


class SendTimeout(GatewayError):
    """The message was not sent in time."""


class UpstreamError(GatewayError):
    """An outbound call failed."""


class AITimeout(UpstreamError):
    """The AI backend did not answer in time."""


class AIDownstreamError(UpstreamError):
    """The AI backend answered with an error."""


class BadGateway(UpstreamError):
    """The upstream could not be reached or answered unusably."""


class AddressRefused(UpstreamError):
    """The URL resolves to an address that is not allowed."""


class LangchainFailed(UpstreamError):
    """A Langchain execution failed after its tries (``timed_out``: the last try timed out)."""

    def __init__(self, message: str, *, timed_out: bool, details: object = None) -> None:
        super().__init__(message, details=details)
        self.timed_out = timed_out


class StoreError(GatewayError):
    """The database failed."""


class StoreUnavailable(StoreError):
    """The database cannot be reached."""


class Conflict(StoreError):
    """The change conflicts with existing data."""


class WhatsAppError(GatewayError):
    """The WhatsApp client failed."""


class NotConnected(WhatsAppError):
    """The WhatsApp client is not connected."""


class SendOutcomeUnknown(WhatsAppError):
    """The send went out but no answer came back: WhatsApp may or may not have it."""
