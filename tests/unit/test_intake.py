"""The intake queue is bounded by readings, takes any batch when empty, and joins like a Queue."""

from __future__ import annotations

import asyncio

import pytest

from edgegw.pipeline.intake import IntakeQueue
from edgegw.reading import Reading
from tests.support.wait import stays

pytestmark = pytest.mark.timeout(10)


def batch(size: int) -> list[Reading]:
    return [Reading("s", f"t{i}", i, "good", 1.0, 1.0) for i in range(size)]


async def test_put_waits_once_the_readings_would_pass_the_bound() -> None:
    queue = IntakeQueue(max_readings=100)
    await queue.put(batch(60))
    blocked = asyncio.create_task(queue.put(batch(50)))
    await stays(lambda: not blocked.done(), 0.2, "put() blocked while the queue is full")
    assert (queue.qsize(), queue.readings) == (1, 60)

    assert len(await queue.get()) == 60
    await asyncio.wait_for(blocked, 5)
    assert (queue.qsize(), queue.readings) == (1, 50)


async def test_a_batch_larger_than_the_bound_goes_into_an_empty_queue() -> None:
    queue = IntakeQueue(max_readings=10)
    await asyncio.wait_for(queue.put(batch(500)), 5)
    assert queue.readings == 500
    assert len(queue.get_nowait()) == 500
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()


async def test_join_waits_for_every_batch_to_be_done() -> None:
    queue = IntakeQueue(max_readings=100)
    await asyncio.wait_for(queue.join(), 1)  # nothing put: done at once
    await queue.put(batch(1))
    await queue.put(batch(2))
    joined = asyncio.create_task(queue.join())
    await queue.get()
    queue.task_done()
    await queue.get()
    await stays(lambda: not joined.done(), 0.2, "join() waiting for the last task_done()")
    queue.task_done()
    await asyncio.wait_for(joined, 5)
