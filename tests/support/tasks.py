"""Leftover asyncio tasks, cancelled until they are gone."""

from __future__ import annotations

import asyncio


async def cancel_leftover_tasks() -> None:
    """Cancel every other task of the running loop until none is left.

    A task that swallows its cancellation (Python 3.11's wait_for, when a reply lands in the
    same loop step) would hang the event loop's close, which runs outside pytest-timeout's reach
    (seen once: a fresh-check idle for minutes). Called after each test, and by fixtures that
    run on a loop of their own (module scope), whose tasks the per-test cleanup cannot see.
    """
    current = asyncio.current_task()
    left = {t for t in asyncio.all_tasks() if t is not current and not t.done()}
    for _ in range(20):
        if not left:
            break
        for task in left:
            task.cancel()
        _, left = await asyncio.wait(left, timeout=0.5)
