"""Rate limits keyed by caller: per client address, per user, and for PIN logins.

A :class:`KeyedLimiter` keeps one :class:`~gatewayd.nursery.ratelimit.TokenBucket` per key
(``rate`` requests per minute, up to ``burst`` at once). Memory is bounded: a key left alone
long enough for its bucket to be full again is the same as a key never seen, so it is
dropped; when ``max_keys`` are in use even so, the least recently used key is evicted
(which forgives it: it starts again with a full bucket). Time is ``trio.current_time()``.

Every answer is a :class:`Decision` that carries what the 429 answer and the
``RateLimit-*`` headers need.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import attrs
import trio

from gatewayd.errors import RateLimitExceeded
from gatewayd.nursery.ratelimit import TokenBucket

__all__ = ["Decision", "KeyedLimiter", "LimiterStatistics", "LoginThrottle"]

# A token short by less than this counts as whole (as in TokenBucket).
_EPSILON = 1e-9


@attrs.frozen
class Decision:
    """Whether a request may go ahead, and the state of its key's budget after it."""

    allowed: bool
    #: The budget: requests allowed at once (the bucket's burst).
    limit: int
    #: Whole requests left right now.
    remaining: int
    #: Seconds until the budget is whole again.
    reset_seconds: float
    #: Seconds until one more request is allowed; 0 when this one was.
    retry_after: float

    def raise_if_refused(self, message: str = "") -> None:
        """Raise RateLimitExceeded carrying this decision when it refuses."""
        if not self.allowed:
            raise RateLimitExceeded(
                message,
                retry_after=self.retry_after,
                limit=self.limit,
                remaining=self.remaining,
                reset=self.reset_seconds,
            )


@attrs.frozen
class LimiterStatistics:
    keys: int
    max_keys: int
    #: Keys evicted while their bucket was not yet full (the limiter was at max_keys).
    evicted: int
    rate_per_minute: float
    burst: int


@attrs.define
class _Entry:
    bucket: TokenBucket
    last_used: float


class KeyedLimiter:
    """Token buckets per key: ``rate_per_minute`` each, up to ``burst`` (default: the rate)."""

    def __init__(
        self, rate_per_minute: float, burst: int | None = None, *, max_keys: int = 10_000
    ) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be >= 1")
        self._rate = rate_per_minute
        self._burst = burst if burst is not None else max(1, math.floor(rate_per_minute))
        TokenBucket(self._rate, self._burst)  # validates both numbers
        self._max_keys = max_keys
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._evicted = 0

    @property
    def _refill_time(self) -> float:
        """Seconds after which an untouched bucket is full: an idle key."""
        return self._burst / (self._rate / 60.0)

    def hit(self, key: str) -> Decision:
        """Take one request from ``key``'s budget if there is one; say whether it was."""
        entry = self._entry(key)
        try:
            entry.bucket.take_nowait()
        except trio.WouldBlock:
            return self._decide(entry.bucket, allowed=False)
        return self._decide(entry.bucket, allowed=True)

    def peek(self, key: str) -> Decision:
        """What :meth:`hit` would answer, without taking anything (or remembering ``key``)."""
        found = self._entries.get(key)
        if found is None:
            return Decision(True, self._burst, self._burst, 0.0, 0.0)
        tokens = found.bucket.statistics().tokens
        return self._decide(found.bucket, allowed=tokens >= 1.0 - _EPSILON)

    def give_back(self, key: str) -> None:
        """Return the request :meth:`hit` took for ``key`` (what it paid for did not count)."""
        found = self._entries.get(key)
        if found is not None:
            found.bucket.put_back()

    def reconfigure(self, rate_per_minute: float, burst: int | None = None) -> None:
        """New numbers (SIGHUP); every key keeps the requests it has left, up to the burst."""
        burst = burst if burst is not None else max(1, math.floor(rate_per_minute))
        TokenBucket(rate_per_minute, burst)  # validates both numbers
        self._rate, self._burst = rate_per_minute, burst
        for entry in self._entries.values():
            entry.bucket.reconfigure(rate_per_minute, burst)

    def statistics(self) -> LimiterStatistics:
        return LimiterStatistics(
            keys=len(self._entries),
            max_keys=self._max_keys,
            evicted=self._evicted,
            rate_per_minute=self._rate,
            burst=self._burst,
        )

    def _entry(self, key: str) -> _Entry:
        now = trio.current_time()
        self._drop_idle(now)
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= self._max_keys:
                self._entries.popitem(last=False)
                self._evicted += 1
            entry = self._entries[key] = _Entry(TokenBucket(self._rate, self._burst), now)
        else:
            self._entries.move_to_end(key)
            entry.last_used = now
        return entry

    def _drop_idle(self, now: float) -> None:
        # The oldest entries come first, so this stops at the first one still in use:
        # amortised O(1) per call.
        idle_before = now - self._refill_time
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if oldest.last_used > idle_before:
                break
            self._entries.popitem(last=False)

    def _decide(self, bucket: TokenBucket, *, allowed: bool) -> Decision:
        stats = bucket.statistics()
        per_second = stats.rate_per_minute / 60.0
        tokens = stats.tokens
        return Decision(
            allowed=allowed,
            limit=stats.burst,
            remaining=math.floor(tokens + _EPSILON),
            reset_seconds=max(0.0, (stats.burst - tokens) / per_second),
            retry_after=0.0 if allowed else max(0.0, (1.0 - tokens) / per_second),
        )


class LoginThrottle:
    """Failed PIN logins, limited per client address and for all addresses together.

    :meth:`reserve` takes an attempt from both budgets before the PIN is checked, so
    attempts running at the same time all count; :meth:`release` gives it back once the
    PIN was right. What stays taken is failures only.
    """

    def __init__(
        self, per_client_per_minute: int, global_per_minute: int, *, max_clients: int = 10_000
    ) -> None:
        self._clients = KeyedLimiter(per_client_per_minute, max_keys=max_clients)
        self._global = KeyedLimiter(global_per_minute, max_keys=1)

    def reserve(self, client: str) -> Decision:
        """Take one attempt for ``client``; a refusal takes nothing from either budget."""
        mine = self._clients.hit(client)
        if not mine.allowed:
            return mine
        everyone = self._global.hit("")
        if not everyone.allowed:
            self._clients.give_back(client)
            return everyone
        return mine

    def release(self, client: str) -> None:
        """The attempt :meth:`reserve` took for ``client`` succeeded: it does not count."""
        self._clients.give_back(client)
        self._global.give_back("")

    def reconfigure(self, per_client_per_minute: int, global_per_minute: int) -> None:
        self._clients.reconfigure(per_client_per_minute)
        self._global.reconfigure(global_per_minute)
