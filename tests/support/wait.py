"""Waiting in tests: the one poller of the suite. Never a fixed sleep sized on one machine.

Three forms, for three kinds of wait:

- `until(condition, timeout, what)`: a state that comes about after a short, bounded delay (a
  process started, a breaker opened, a reason logged). The timeout is a ceiling for a hang,
  generous on purpose: it costs nothing when the condition holds.
- `until_progress(count_fn, target, stall=..., what=...)`: a volume that arrives at whatever
  speed this machine has (messages received, a backlog acknowledged, values per tag). It goes
  on while the count grows and fails when it has not grown for `stall` seconds, naming what is
  missing. A paho subscriber in the test process received a 27,000-message backlog in 47 s
  here, where a fixed 40 s deadline had been enough on the machine it was sized on
  (DESIGN.md, "Waiting in tests"). `cap` is a last resort only.
- `stays(condition, seconds, what)`: a negative check ("nothing happened") held over a time,
  not over a number of event-loop turns, which say nothing about another process or thread.

`until_blocking` is `until` for synchronous tests (it blocks the calling thread).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

POLL = 0.02  # seconds between two looks at a condition
# Counting may parse messages: look less often, so the poller does not take the GIL from a
# paho thread in the same process that is receiving what we count.
PROGRESS_POLL = 0.1
STALL = 15.0  # seconds without growth that make a progress wait fail
CAP = 600.0  # seconds: last resort for a count that keeps growing and never gets there


class _Condition:
    def __init__(self, timeout: float, what: str, describe: Callable[[], str] | None) -> None:
        self._timeout = timeout
        self._what = what
        self._describe = describe
        self._deadline = time.monotonic() + timeout

    def done(self, held: bool) -> bool:
        if held:
            return True
        if time.monotonic() >= self._deadline:
            detail = f"; {self._describe()}" if self._describe is not None else ""
            raise AssertionError(
                f"timed out after {self._timeout:g} s waiting for {self._what}{detail}"
            )
        return False


class _Progress:
    def __init__(
        self,
        count_fn: Callable[[], int],
        target: int,
        stall: float,
        what: str,
        missing: Callable[[], str] | None,
        cap: float,
    ) -> None:
        self._count_fn = count_fn
        self._target = target
        self._stall = stall
        self._what = what
        self._missing = missing
        self._cap = cap
        self._started = time.monotonic()
        self._best: int | None = None
        self._grew_at = self._started

    def _fail(self, why: str) -> AssertionError:
        head = f"{self._missing()}; " if self._missing is not None else ""
        return AssertionError(head + why)

    def done(self) -> bool:
        value = self._count_fn()
        if value >= self._target:
            return True
        now = time.monotonic()
        if self._best is None or value > self._best:
            self._best, self._grew_at = value, now
        elif now - self._grew_at >= self._stall:
            raise self._fail(
                f"{self._what} stalled at {value} of {self._target} for {self._stall:g} s"
            )
        if now - self._started >= self._cap:
            raise self._fail(
                f"{self._what} still growing after {self._cap:g} s, at {value} of "
                f"{self._target} (the cap is a last resort: is something looping?)"
            )
        return False


async def until(
    condition: Callable[[], bool | Awaitable[bool]],
    timeout: float = 10.0,  # noqa: ASYNC109 (the failure names what was awaited)
    what: str = "the condition",
    *,
    describe: Callable[[], str] | None = None,
) -> None:
    """Poll until `condition()` holds (it may be a coroutine function, e.g. one that reads a
    register); AssertionError after `timeout` s, naming `what` (and `describe()`, what was
    there instead, when given)."""
    wait = _Condition(timeout, what, describe)
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if wait.done(bool(held)):
            return
        await asyncio.sleep(POLL)


def until_blocking(
    condition: Callable[[], bool],
    timeout: float = 10.0,
    what: str = "the condition",
    *,
    describe: Callable[[], str] | None = None,
) -> None:
    """`until` for synchronous tests: blocks the calling thread."""
    wait = _Condition(timeout, what, describe)
    while not wait.done(condition()):
        time.sleep(POLL)


async def until_progress(
    count_fn: Callable[[], int],
    target: int,
    *,
    stall: float = STALL,
    what: str,
    missing: Callable[[], str] | None = None,
    cap: float = CAP,
    poll: float = PROGRESS_POLL,
) -> int:
    """Poll until `count_fn() >= target`, for as long as the count keeps growing.

    AssertionError once it has not grown for `stall` seconds: "`missing()`; `what` stalled at
    N of `target` for `stall` s" (e.g. "seqs 1201..1250 never arrived; seqs received stalled
    at 1200 of 1250 for 15 s"), or, last resort, once `cap` seconds have passed. The count must
    only grow towards the target (distinct items, not messages that may repeat). `poll` is
    the time between two looks. Returns the count reached.
    """
    wait = _Progress(count_fn, target, stall, what, missing, cap)
    while True:
        if wait.done():
            return count_fn()
        await asyncio.sleep(poll)


async def stays(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """A negative check: `condition()` holds at every look for `seconds` s (AssertionError at
    the first look where it does not). The time is the check: a number of event-loop turns
    proves nothing about another task's timer, thread or process."""
    deadline = time.monotonic() + seconds
    while True:
        if not condition():
            raise AssertionError(
                f"{what} no longer held after {seconds - (deadline - time.monotonic()):.2f} s"
            )
        if time.monotonic() >= deadline:
            return
        await asyncio.sleep(POLL)
