"""Group commit: many small writes from many tasks, one transaction per round.

Each caller awaits its own item's commit; the one task that runs the committer takes
everything that arrived while the previous round was being written. Under load a round
holds many items, so the cost of a transaction is shared; when idle a round holds one and
the latency is that of a single write.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import attrs
import trio

__all__ = ["GroupCommit"]

T = TypeVar("T")
R = TypeVar("R")


@attrs.define(eq=False)
class _Waiting(Generic[T, R]):
    item: T
    done: trio.Event = attrs.Factory(trio.Event)
    result: R | None = None
    error: BaseException | None = None


class GroupCommit(Generic[T, R]):
    """Commits items with ``write(items)``, which returns one result per item; run it with
    ``nursery.start(group.run)``. ``write`` raising fails every caller of that round with the
    same exception.
    """

    def __init__(
        self, write: Callable[[Sequence[T]], Awaitable[Sequence[R]]], *, max_batch: int = 1000
    ) -> None:
        self._write = write
        self._max_batch = max_batch
        self._send, self._receive = trio.open_memory_channel[_Waiting[T, R]](math.inf)
        #: Items submitted so far.
        self.submitted = 0

    async def submit(self, item: T) -> R:
        """Returns ``item``'s result once it is committed."""
        waiting = _Waiting[T, R](item)
        self.submitted += 1
        self._send.send_nowait(waiting)
        await waiting.done.wait()
        if waiting.error is not None:
            raise waiting.error
        return waiting.result  # type: ignore[return-value]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            batch = [await self._receive.receive()]
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            try:
                results = await self._write([w.item for w in batch])
            except Exception as exc:
                for waiting in batch:
                    waiting.error = exc
            else:
                for waiting, result in zip(batch, results, strict=True):
                    waiting.result = result
            for waiting in batch:
                waiting.done.set()
