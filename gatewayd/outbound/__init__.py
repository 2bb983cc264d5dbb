"""Outbound HTTP: the address guard, media fetching, the AI backend client.

Every call goes through the one shared ``httpx.AsyncClient`` the daemon owns; httpx's
exceptions are translated in these modules into the project's tree (``gatewayd.errors``).
``read_capped`` lives here because both media and AI answers are read under a cap.
"""

from __future__ import annotations

import httpx
import trio


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
