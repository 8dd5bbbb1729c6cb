"""Timestamps as they appear in messages."""

from __future__ import annotations

import time


def iso_utc(ts: float) -> str:
    """'2026-11-29T05:37:14.123Z' (milliseconds, UTC)."""
    seconds = int(ts)
    millis = int((ts - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"
