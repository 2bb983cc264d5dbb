"""The token bucket that paces an agent's sends.

``rate`` tokens per minute are added continuously up to ``burst``; each send takes
one. The bucket starts full, so a burst goes out at once and the rest follows at the
rate. Both numbers can change while running (SIGHUP) without losing the tokens
already earned.
"""

from __future__ import annotations

import attrs
import trio


@attrs.frozen
class BucketStatistics:
    tokens: float
    rate_per_minute: float
    burst: int


#: Tokens are floats; a token short by less than this counts as whole, so float error
#: never leaves a sender waiting for a sliver of time the clock cannot represent.
_EPSILON = 1e-9


class TokenBucket:
    def __init__(self, rate_per_minute: float, burst: int) -> None:
        if rate_per_minute <= 0 or burst < 1:
            raise ValueError("rate_per_minute must be > 0 and burst >= 1")
        self._rate = rate_per_minute / 60.0  # tokens per second
        self._burst = burst
        self._tokens = float(burst)
        self._stamp = trio.current_time()

    def _refill(self) -> None:
        now = trio.current_time()
        self._tokens = min(float(self._burst), self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now

    def reconfigure(self, rate_per_minute: float, burst: int) -> None:
        self._refill()
        self._rate = rate_per_minute / 60.0
        self._burst = burst
        self._tokens = min(self._tokens, float(burst))

    def take_nowait(self) -> None:
        """Take a token or raise trio.WouldBlock."""
        self._refill()
        if self._tokens < 1.0 - _EPSILON:
            raise trio.WouldBlock
        self._tokens = max(0.0, self._tokens - 1.0)

    def put_back(self) -> None:
        """Return a token taken by :meth:`take_nowait` for something that did not count."""
        self._refill()
        self._tokens = min(float(self._burst), self._tokens + 1.0)

    async def take(self) -> None:
        """Wait until a token is available and take it."""
        while True:
            self._refill()
            if self._tokens >= 1.0 - _EPSILON:
                self._tokens = max(0.0, self._tokens - 1.0)
                return
            await trio.sleep((1.0 - self._tokens) / self._rate)

    def statistics(self) -> BucketStatistics:
        self._refill()
        return BucketStatistics(self._tokens, self._rate * 60.0, self._burst)
