"""Outbound HTTP: the address guard, media fetching, the AI backend client.

Every call goes through the one shared ``httpx.AsyncClient`` the daemon owns; httpx's
exceptions are translated in these modules into the project's tree (``gatewayd.errors``).
``read_capped`` lives here because both media and AI answers are read under a cap.
"""

from __future__ import annotations

import http.cookiejar
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import structlog
import trio

from gatewayd.errors import BadGateway, UpstreamError

log = structlog.get_logger(__name__)


def new_client(**options: Any) -> httpx.AsyncClient:
    """An outbound client: no proxies from the environment, no cookies carried from one
    tenant's request to another's, no redirects followed (each hop must pass the address
    guard), a 30 s default timeout; ``options`` add to or override these."""
    no_cookies = http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    settings: dict[str, Any] = {
        "trust_env": False,
        "cookies": no_cookies,
        "follow_redirects": False,
        "timeout": httpx.Timeout(30.0),
        "headers": {"User-Agent": "gatewayd"},
    }
    return httpx.AsyncClient(**{**settings, **options})


@contextmanager
def map_exceptions(
    what: str, host: str, timeout: float, *, on_timeout: type[UpstreamError] = BadGateway
) -> Iterator[None]:
    """Translate httpx's exceptions from a call to ``what`` at ``host`` into the project's.

    The messages name the host and the exception's type, never ``str(exc)``: httpx's texts
    can quote the URL, credentials and query included, and these messages reach clients.
    """
    try:
        yield
    except httpx.TimeoutException:
        log.warning("gatewayd.outbound.failed", what=what, host=host, reason="timeout")
        raise on_timeout(f"{what} at {host} did not answer within {timeout:g} s") from None
    except httpx.ConnectError:
        log.warning("gatewayd.outbound.failed", what=what, host=host, reason="ConnectError")
        raise BadGateway(f"cannot connect to {what} at {host}") from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        reason = type(exc).__name__
        log.warning("gatewayd.outbound.failed", what=what, host=host, reason=reason)
        raise BadGateway(f"the call to {what} at {host} failed: {reason}") from None


async def read_capped(response: httpx.Response, cap: int) -> tuple[bytes, bool]:
    """At most ``cap`` bytes of a streaming response's (decoded) body, and whether it had more.

    Reading stops as soon as the cap is passed, however long the server would go on.
    """
    chunks: list[bytes] = []
    total = 0
    over = False
    # Leaving httpx's body iterator early (break, raise) abandons the async generators
    # nested inside it, which trio reports as a ResourceWarning (encode/httpx#3686).
    # Cancelling instead makes the innermost network read raise, so every generator
    # unwinds itself; the chunks h11 had already buffered until then are discarded.
    with trio.CancelScope() as scope:
        async for chunk in response.aiter_bytes():
            if over:
                continue
            chunks.append(chunk)
            total += len(chunk)
            if total > cap:
                over = True
                scope.cancel()
    return b"".join(chunks)[:cap], over
