"""The queue between the sources and the committer, bounded by readings rather than batches."""

from __future__ import annotations

import asyncio
from collections import deque

from edgegw.reading import Reading


class IntakeQueue:
    """Batches of readings in arrival order. `put` waits while `max_readings` are queued.

    A batch is one poll or one notification of a source: 10 values or 10,000. Counting
    batches would let a large source queue hundreds of megabytes while the committer is held
    up (a full disk, an overloaded CPU); counting readings bounds the memory. A batch is
    always taken into an empty queue, whatever its size, so no source can block forever.
    """

    def __init__(self, max_readings: int) -> None:
        self.max_readings = max_readings
        self.readings = 0  # readings queued now
        self._batches: deque[list[Reading]] = deque()
        self._unfinished = 0  # batches taken out but not yet marked done
        self._not_full = asyncio.Event()
        self._not_empty = asyncio.Event()
        self._all_done = asyncio.Event()
        self._all_done.set()

    def qsize(self) -> int:
        """Batches queued."""
        return len(self._batches)

    def empty(self) -> bool:
        return not self._batches

    async def put(self, batch: list[Reading]) -> None:
        while self._batches and self.readings + len(batch) > self.max_readings:
            self._not_full.clear()
            await self._not_full.wait()
        self._batches.append(batch)
        self.readings += len(batch)
        self._unfinished += 1
        self._all_done.clear()
        self._not_empty.set()

    async def get(self) -> list[Reading]:
        while not self._batches:
            self._not_empty.clear()
            await self._not_empty.wait()
        return self._take()

    def get_nowait(self) -> list[Reading]:
        if not self._batches:
            raise asyncio.QueueEmpty
        return self._take()

    def task_done(self) -> None:
        """The batch taken last is committed (or given up)."""
        self._unfinished -= 1
        if self._unfinished == 0:
            self._all_done.set()

    async def join(self) -> None:
        """Wait until every batch put is taken and done."""
        await self._all_done.wait()

    def _take(self) -> list[Reading]:
        batch = self._batches.popleft()
        self.readings -= len(batch)
        self._not_full.set()
        return batch
