"""One webhook try: a signed ``POST`` through the address guard.

Signed the Standard Webhooks way (https://www.standardwebhooks.com): ``webhook-id`` (the same
on every try of a delivery), ``webhook-timestamp`` (Unix seconds of this try) and
``webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>``, where the key is
the base64 part of the session's ``whsec_…`` secret. A session's own headers are sent too,
but never in place of these (nor of ``Content-Type``, ``Host``, the length).

The URL passes the address guard (gatewayd/outbound/guard.py) at every try, since DNS may
change; a refused address is a failed try, retried on the schedule like any other. Nothing
here raises for what the receiver or the network does: every try ends in an ``Answer``.
Errors name the host at most, never the URL (its path or query may carry credentials), and
the secret is never logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping

import attrs
import httpx
import trio

from gatewayd.errors import AddressRefused, BadGateway, GatewayError
from gatewayd.outbound import read_capped
from gatewayd.outbound.guard import check_url, open_checked

#: Headers a session's own headers never replace.
RESERVED = frozenset(
    {
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "content-type",
        "content-length",
        "transfer-encoding",
        "host",
        "connection",
    }
)
#: The most of an answer that is read (and thrown away): receivers answer whatever they like.
MAX_ANSWER_BYTES = 64 * 1024
USER_AGENT = "gatewayd-webhooks"


@attrs.frozen
class Answer:
    """How one try went: the status code (None: no answer), why it failed, how long it took."""

    status_code: int | None
    error: str | None
    duration_ms: int

    @property
    def ok(self) -> bool:
        return self.error is None and self.status_code is not None and 200 <= self.status_code < 300


def new_webhook_secret() -> str:
    """A fresh signing secret in the Standard Webhooks form: ``whsec_`` + base64 of 24 bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key a ``whsec_…`` secret stands for; ValueError when it is not one."""
    return base64.b64decode(secret.removeprefix("whsec_"), validate=True)


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value of ``body`` sent as ``webhook_id`` at ``timestamp``."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def request_headers(
    custom: Mapping[str, str], *, secret: str, webhook_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The session's own headers, then ours (which win)."""
    headers = {
        str(name): str(value)
        for name, value in custom.items()
        if str(name).lower() not in RESERVED and str(name).lower() != "user-agent"
    }
    headers.update(
        {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "webhook-id": webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, webhook_id, timestamp, body),
        }
    )
    return headers


async def post_signed(
    client: httpx.AsyncClient,
    url: str,
    *,
    secret: str,
    webhook_id: str,
    body: bytes,
    headers: Mapping[str, str],
    timeout: float,  # noqa: ASYNC109 - a bound on the whole try
    allow_private: bool,
) -> Answer:
    """POST ``body`` to ``url``, signed; the whole try (resolving included) within ``timeout``."""
    began = trio.current_time()
    status: int | None = None
    error: str | None = None
    try:
        sent_headers = request_headers(
            headers, secret=secret, webhook_id=webhook_id, timestamp=int(time.time()), body=body
        )
    except ValueError:
        return Answer(None, "the webhook secret is not a whsec_ key", 0)
    try:
        with trio.fail_after(timeout):
            checked = await check_url(url, allow_private=allow_private)
            async with open_checked(
                client, checked, method="POST", headers=sent_headers, content=body, timeout=timeout
            ) as response:
                status = response.status_code
                await read_capped(response, MAX_ANSWER_BYTES)
    except (trio.TooSlowError, httpx.TimeoutException):
        error = f"no answer within {timeout:g} s"
    except AddressRefused as exc:
        error = exc.message
    except BadGateway:
        error = "the host name does not resolve"
    except GatewayError as exc:  # InvalidPayload: a URL no request can be sent to
        error = f"invalid webhook URL: {exc.message}"
    except httpx.ConnectError:
        error = "cannot connect"
    except httpx.HTTPError as exc:
        error = f"the request failed: {type(exc).__name__}"
    except ValueError:  # a custom header httpx cannot send (not ASCII, say)
        error = "a custom header of the webhook is not valid"
    duration_ms = int(round((trio.current_time() - began) * 1000))
    if error is None and status is not None and not 200 <= status < 300:
        error = f"HTTP {status}"
    return Answer(status, error, duration_ms)
