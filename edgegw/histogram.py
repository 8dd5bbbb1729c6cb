"""A fixed-bucket histogram in Prometheus' cumulative form, cheap enough to observe per value."""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass

LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
)  # fmt: skip
"""Seconds. Up to 1 s is a healthy line; minutes and hours are a backlog sent after an outage,
which is worth seeing in the same histogram."""


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """A histogram at one moment: (upper bound, observations <= it) per bucket, ending with
    (inf, count); their sum and count."""

    buckets: tuple[tuple[float, int], ...]
    sum: float
    count: int


class Histogram:
    def __init__(self, bounds: Iterable[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(sorted(bounds))
        self._counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        value = max(0.0, value)  # a device clock ahead of ours is no negative latency
        self._counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def observe_many(self, value: float, count: int) -> None:
        """`count` observations of one value: the messages of one segment share its source
        time, so a batch of them costs one call (per value, 3 % of the steady load)."""
        value = max(0.0, value)
        self._counts[bisect.bisect_left(self.bounds, value)] += count
        self.count += count
        self.sum += value * count

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations ≤ it) per bucket, ending with (inf, count)."""
        running = 0
        buckets: list[tuple[float, int]] = []
        for bound, count in zip((*self.bounds, float("inf")), self._counts, strict=True):
            running += count
            buckets.append((bound, running))
        return buckets

    def snapshot(self) -> HistogramSnapshot:
        return HistogramSnapshot(tuple(self.cumulative()), self.sum, self.count)
