"""Tag contracts applied to every good reading: `values` mapping, `min`/`max`, `sequences`.

A violating telemetry value is published with quality `bad`, `value: null` and the rule in
`reason`, and the value itself goes to the quarantine: consumers see at once that the tag is
not trustworthy, and the operator finds what the PLC sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgegw.config.model import GatewayConfig
from edgegw.reading import Reading, Value


@dataclass(slots=True)
class Violation:
    reading: Reading  # the reading as the PLC gave it
    rule: str
    reason: str


@dataclass(slots=True)
class _TagRule:
    values: dict[Any, str] | None
    minimum: float | None
    maximum: float | None
    transitions: dict[str, list[str]] | None
    last_state: str | None = field(default=None)
    # The violation last quarantined: a value that stays wrong for many polls is one record.
    last_violation: tuple[str, str] | None = field(default=None)


class TagRules:
    def __init__(self, config: GatewayConfig) -> None:
        transitions = {sequence.tag: sequence.transitions for sequence in config.sequences}
        self._rules: dict[tuple[str, str], _TagRule] = {}
        for source in config.data_sources():
            for tag in source.tags:
                ref = f"{source.name}.{tag.name}"
                plain = tag.values is None and tag.min is None and tag.max is None
                if plain and ref not in transitions:
                    continue
                self._rules[(source.name, tag.name)] = _TagRule(
                    dict(tag.values) if tag.values else None,
                    tag.min,
                    tag.max,
                    transitions.get(ref),
                )

    def apply(self, readings: list[Reading]) -> tuple[list[Reading], list[Violation]]:
        """The readings to publish (violations turned bad) and the violations."""
        if not self._rules:
            return readings, []
        out: list[Reading] = []
        violations: list[Violation] = []
        for reading in readings:
            rule = self._rules.get((reading.source, reading.tag))
            if rule is None or reading.quality != "good":
                out.append(reading)
                continue
            value, problem = _check(rule, reading.value)
            if problem is None:
                rule.last_violation = None
                out.append(reading if value is reading.value else _with_value(reading, value))
                continue
            name, reason = problem
            if problem != rule.last_violation:
                rule.last_violation = problem
                violations.append(Violation(reading, name, reason))
            out.append(reading.as_bad(f"{name}: {reason}"))
        return out, violations


def _with_value(reading: Reading, value: Value) -> Reading:
    return Reading(
        reading.source, reading.tag, value, reading.quality, reading.source_ts, reading.received_ts
    )


def _check(rule: _TagRule, value: Value) -> tuple[Value, tuple[str, str] | None]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        if rule.minimum is not None and value < rule.minimum:
            return value, ("range", f"{value} is below min {rule.minimum:g}")
        if rule.maximum is not None and value > rule.maximum:
            return value, ("range", f"{value} is above max {rule.maximum:g}")
    if rule.values is not None:
        try:
            named = rule.values.get(value)
        except TypeError:
            named = None
        if named is None:
            listed = ", ".join(f"{raw}={name}" for raw, name in rule.values.items())
            return value, ("values", f"raw value {value!r} is not mapped ({listed})")
        value = named
    if rule.transitions is not None:
        state = value if isinstance(value, str) else str(value)
        last = rule.last_state
        # The first value after a start cannot be judged; a repeat is no transition.
        if last is not None and state != last and state not in rule.transitions.get(last, []):
            allowed = ", ".join(rule.transitions.get(last, [])) or "none"
            # The last valid state stays: the tag is bad until a listed transition happens,
            # so the disallowed state cannot pass as good one poll later.
            return value, ("sequence", f"{last} -> {state} is not allowed (from {last}: {allowed})")
        rule.last_state = state
    return value, None
