"""What a source hands to the pipeline."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

Quality = Literal["good", "uncertain", "bad"]
Value = bool | int | float | str | list[Any] | None


class Reading(NamedTuple):
    """One value of one tag, as read (a named tuple: a source makes one per value per poll,
    and a tuple is built three times faster than a frozen dataclass).

    `source_ts` is when the device says the value was true (wall clock, seconds since the
    epoch), or when it was read for protocols without timestamps; `received_ts` is when the
    gateway had it. A `bad` reading carries `value=None` and a `reason` in words.
    """

    source: str
    tag: str
    value: Value
    quality: Quality
    source_ts: float
    received_ts: float
    reason: str | None = None

    def as_bad(self, reason: str) -> Reading:
        """The same sample declared bad: no value, the reason in words."""
        return Reading(self.source, self.tag, None, "bad", self.source_ts, self.received_ts, reason)
