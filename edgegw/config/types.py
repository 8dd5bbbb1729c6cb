"""Value types shared by every config section: durations, names, base model."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer, WithJsonSchema

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """Turn '500ms', '1s', '5m', '2h', '7d' into seconds; a bare number is refused.

    A bare number is ambiguous (is `poll: 5` five seconds or five milliseconds?), so the
    unit is mandatory, as in ESPHome.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as '500ms' or '2s', got {value!r}")
    if isinstance(value, int | float):
        raise ValueError(f"'{value}' has no time unit; did you mean '{value}s' or '{value}ms'?")
    if not isinstance(value, str):
        raise ValueError(f"expected a duration such as '500ms' or '2s', got {value!r}")
    match = _DURATION.match(value)
    if match is None:
        bare = value.strip()
        if re.fullmatch(r"\d+(?:\.\d+)?", bare):
            raise ValueError(f"'{bare}' has no time unit; did you mean '{bare}s' or '{bare}ms'?")
        raise ValueError(
            f"'{value}' is not a duration; use a number and a unit: ms, s, m, h, d (e.g. '500ms')"
        )
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def format_duration(seconds: float) -> str:
    for unit in ("d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds * 1000:g}ms"


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^\d+(\.\d+)?(ms|s|m|h|d)$",
            "description": "A duration with its unit: ms, s, m, h or d, e.g. '500ms', '7d'.",
        }
    ),
]
"""Seconds, written in YAML with a unit."""


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, models are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)
