"""Running a Modbus line source by itself, and checking its values against the registers."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable

from edgegw.reading import Reading
from edgegw.sources.modbus.line import ModbusLine
from tests.support.collector import Collector as BaseCollector
from tests.support.wait import POLL, until_progress


class Collector(BaseCollector[ModbusLine]):
    """Runs a line source by itself and keeps every reading it yields."""

    def reads(self, device: str) -> int:
        return next(s.reads for s in self.source.device_statuses if s.name == device)

    async def time_for_reads(self, device: str, count: int) -> float:
        """Seconds the line takes for `count` more reads of `device` (a rate window: make it
        several seconds long, a shorter one swings with the load of a shared machine). Waits
        for as long as reads go on; fails when they stop."""
        start_reads, started = self.reads(device), time.monotonic()
        await until_progress(
            lambda: self.reads(device) - start_reads, count, what=f"reads of {device}", poll=POLL
        )
        return time.monotonic() - started


def check_values(
    readings: Iterable[Reading],
    base: Callable[[int, int], int],
    register_now: Callable[[int, int], int],
) -> int:
    """Every good value of device pump-U tag rN was held by bench register N of unit U: above
    `base(U, N)`, at most `register_now(U, N)`, in increasing order. A reply matched to the
    wrong request (another unit, another block) fails this."""
    by_tag: dict[tuple[str, str], list[int]] = {}
    for reading in readings:
        if reading.quality == "good":
            assert isinstance(reading.value, int)
            by_tag.setdefault((reading.source, reading.tag), []).append(reading.value)
    for (source, tag), values in by_tag.items():
        unit, register = int(source.split("-")[1]), int(tag[1:])
        low = base(unit, register)
        high = register_now(unit, register)
        outside = [v for v in values if not low < v <= high]
        assert not outside, (
            f"{source}.{tag}: {outside[:5]} never held by unit {unit} register {register} "
            f"({low}..{high}): a reply was matched to the wrong request"
        )
        backwards = [(a, b) for a, b in itertools.pairwise(values) if b <= a]
        assert not backwards, f"{source}.{tag}: out of order {backwards[:5]}"
    return sum(len(values) for values in by_tag.values())
