"""Run a source by itself (no gateway) and keep every reading it yields."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Generic, TypeVar

from edgegw.reading import Reading
from edgegw.sources.base import Source

S = TypeVar("S", bound=Source)


class Collector(Generic[S]):
    """A source's readings, in order; `async with Collector(source)` or start()/stop()."""

    def __init__(self, source: S) -> None:
        self.source = source
        self.readings: list[Reading] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async for batch in self.source.batches():
            self.readings.extend(batch)

    def start(self) -> Collector[S]:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        # Cancel until it is gone: on Python 3.11 asyncio.wait_for swallows a cancellation
        # whose reply lands in the same loop step (edgegw.service.app does the same); a source task
        # left running hangs the event loop's close after the module (seen once).
        task = self._task
        assert task is not None
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def __aenter__(self) -> Collector[S]:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def latest(self, tag: str) -> Reading | None:
        for reading in reversed(self.readings):
            if reading.tag == tag:
                return reading
        return None

    def good_since(self, tag: str, since: float) -> list[Reading]:
        return [
            r
            for r in self.readings
            if r.tag == tag and r.quality == "good" and r.received_ts >= since
        ]
