"""Timestamps as they appear in messages."""

from __future__ import annotations

import time

_last: tuple[int, str] = (-1, "")  # (whole second, its formatted prefix); one tuple, so a
# thread never sees a second with another second's prefix


def iso_utc(ts: float) -> str:
    """'2026-11-29T05:37:14.123Z' (milliseconds, UTC)."""
    global _last
    seconds = int(ts)
    millis = int((ts - seconds) * 1000)
    cached_second, prefix = _last
    if seconds != cached_second:
        # Telemetry stamps thousands of values per second with the same second: format the
        # date and time once per second, not once per value.
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _last = (seconds, prefix)
    return f"{prefix}.{millis:03d}Z"
