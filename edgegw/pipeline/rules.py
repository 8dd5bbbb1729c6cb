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

LASTING_UPDATE_EVERY = 10.0
"""Seconds (of source time) between two updates of a lasting violation's record: its count
and last value are written this often, and when the violation ends."""


@dataclass(slots=True)
class Violation:
    reading: Reading  # the reading as the PLC gave it (of a lasting violation: the latest)
    rule: str
    reason: str
    opened: Reading | None = None  # set: continues the record this reading opened
    count: int = 1  # violating readings it accounts for


@dataclass(slots=True)
class _Lasting:
    """A violation of one rule that has not ended: one quarantine record."""

    rule: str
    opened: Reading
    written: float  # source time of the last write of its record
    pending: int = 0  # violating readings since then
    last: Reading | None = None
    last_reason: str = ""

    def update(self) -> Violation | None:
        """What has not been written yet, as a continuation of the record."""
        if not self.pending or self.last is None:
            return None
        update = Violation(self.last, self.rule, self.last_reason, self.opened, self.pending)
        self.pending, self.written = 0, self.last.source_ts
        return update


@dataclass(slots=True)
class _TagRule:
    values: dict[Any, str] | None
    minimum: float | None
    maximum: float | None
    transitions: dict[str, list[str]] | None
    last_state: str | None = field(default=None)
    # A tag that stays in violation of one rule is one quarantine record, however its
    # value moves; a good value in between, or another rule broken, opens a new one.
    lasting: _Lasting | None = field(default=None)


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

    def carry_from(self, old: TagRules) -> list[Violation]:
        """After a reload: a violation still open goes on in the same record (if the tag's
        value breaks the same rule under the new config). Sequences start afresh. Returns
        what the violations of tags without rules now had not written yet."""
        for key, rule in self._rules.items():
            before = old._rules.get(key)
            if before is not None:
                rule.lasting = before.lasting
        return [
            update
            for key, rule in old._rules.items()
            if key not in self._rules and rule.lasting is not None
            for update in (rule.lasting.update(),)
            if update is not None
        ]

    def flush(self) -> list[Violation]:
        """At a stop: what the violations still open have not written yet (their records go
        on counting after the next start)."""
        return [
            update
            for rule in self._rules.values()
            if rule.lasting is not None
            for update in (rule.lasting.update(),)
            if update is not None
        ]

    def apply(self, readings: list[Reading]) -> tuple[list[Reading], list[Violation]]:
        """The readings to publish (violations turned bad) and the violations: one that
        opens a record per new violation, and updates of lasting ones."""
        if not self._rules:
            return readings, []
        out: list[Reading] = []
        violations: list[Violation] = []
        for reading in readings:
            rule = self._rules.get((reading.source, reading.tag))
            if rule is None or reading.quality != "good":
                # A bad reading (no value) neither ends a violation nor continues it.
                out.append(reading)
                continue
            value, problem = _check(rule, reading.value)
            lasting = rule.lasting
            if problem is None:
                if lasting is not None:
                    rule.lasting = None
                    if (update := lasting.update()) is not None:
                        violations.append(update)
                out.append(reading if value is reading.value else _with_value(reading, value))
                continue
            name, reason = problem
            if lasting is not None and lasting.rule == name:
                lasting.pending += 1
                lasting.last, lasting.last_reason = reading, reason
                due = abs(reading.source_ts - lasting.written) >= LASTING_UPDATE_EVERY
                if due and (update := lasting.update()) is not None:
                    violations.append(update)
            else:
                if lasting is not None and (update := lasting.update()) is not None:
                    violations.append(update)
                rule.lasting = _Lasting(name, reading, reading.source_ts)
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
