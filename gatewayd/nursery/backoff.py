"""Exponential backoff with jitter, for reconnects and agent restarts."""

from __future__ import annotations

import random

import attrs


@attrs.define
class Backoff:
    """Delays ``initial * factor**n`` capped at ``maximum``, with "equal jitter":
    half the delay is fixed and half is random, so retries from many agents spread out
    but a delay never collapses to zero."""

    initial: float = 1.0
    maximum: float = 60.0
    factor: float = 2.0
    jitter: bool = True
    rng: random.Random = attrs.field(factory=random.Random)
    attempt: int = 0

    def base(self, attempt: int) -> float:
        return min(self.maximum, self.initial * self.factor**attempt)

    def next(self) -> float:
        delay = self.base(self.attempt)
        self.attempt += 1
        if not self.jitter:
            return delay
        return delay / 2 + self.rng.uniform(0, delay / 2)

    def reset(self) -> None:
        self.attempt = 0
