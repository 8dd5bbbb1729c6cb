"""Warnings for `edgegw check`: a valid config that probably does not do what was meant.

Warnings never stop the gateway (`check` still exits 0); each is data with its place in the
file, formatted once where it is printed:

    gw.yaml:31:56 sequences[0].transitions.running[1]: warning: state 'aborted' has no way
        out: ...                                                  <- one line, wrapped here
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from edgegw.config.diagnostics import loc_to_path
from edgegw.config.issues import ConfigIssue, Mark
from edgegw.config.model import GatewayConfig
from edgegw.config.types import format_duration
from edgegw.config.yamlpos import YamlDocument, load_yaml_file
from edgegw.pipeline.events.config import SequenceConfig
from edgegw.sources.modbus.config import ModbusSourceConfig

Loc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class ConfigWarning:
    """One warning at its place: line and column counted from 1 (None: no place known)."""

    file: str
    line: int | None
    column: int | None
    path: str  # e.g. sequences[0].transitions.running[1]
    message: str

    def __str__(self) -> str:
        mark = Mark(self.line, self.column or 1) if self.line is not None else None
        return str(ConfigIssue(self.file, mark, self.path, f"warning: {self.message}"))


def config_warnings(path: str | os.PathLike[str], config: GatewayConfig) -> list[ConfigWarning]:
    """The warnings of a config that loaded (`load_config(path)` gave `config`), in file
    order."""
    doc = load_yaml_file(path)
    warnings = sequence_warnings(doc, config)
    return sorted(warnings, key=lambda w: (w.line or 0, w.column or 0))


def sequence_warnings(doc: YamlDocument, config: GatewayConfig) -> list[ConfigWarning]:
    """States with no way out (not marked `final`), and a status tag read less often than
    the shortest state lasts (`min_state`)."""
    intervals = _read_intervals(config)
    warnings: list[ConfigWarning] = []

    def warn(loc: Loc, message: str) -> None:
        mark = doc.value_marks.get(loc)
        while mark is None and loc:
            loc = loc[:-1]
            mark = doc.value_marks.get(loc)
        warnings.append(
            ConfigWarning(
                doc.path,
                mark.line if mark else None,
                mark.column if mark else None,
                loc_to_path(loc),
                message,
            )
        )

    for index, sequence in enumerate(config.sequences):
        base: Loc = ("sequences", index)
        for state, loc in _dead_ends(sequence, base):
            first = next(iter(sequence.transitions))
            warn(
                loc,
                f"state '{state}' has no way out: once {sequence.tag} is '{state}', any change "
                f"is a sequence violation and the tag stays bad; say where it goes next (e.g. "
                f"{state}: [{first}]), or if the tag rests there for good, add it to "
                f"final: [{state}]",
            )
        states = _states(sequence)
        for number, state in enumerate(sequence.final):
            if state not in states:
                warn(
                    (*base, "final", number),
                    f"final state '{state}' is not in transitions ({', '.join(states)})",
                )
        read = intervals.get(sequence.tag)
        if sequence.min_state is not None and read is not None:
            every, where = read
            if every >= sequence.min_state:
                warn(
                    (*base, "min_state"),
                    f"{sequence.tag} is read every {format_duration(every)} ({where}) but a "
                    f"state can last only {format_duration(sequence.min_state)}: a state "
                    "between two reads is missed and the next change looks like a disallowed "
                    f"transition; read it more often than every "
                    f"{format_duration(sequence.min_state)}",
                )
    return warnings


def _states(sequence: SequenceConfig) -> list[str]:
    """Every state the transitions name, in the order written."""
    states = dict.fromkeys(sequence.transitions)
    for targets in sequence.transitions.values():
        states.update(dict.fromkeys(targets))
    return list(states)


def _dead_ends(sequence: SequenceConfig, base: Loc) -> list[tuple[str, Loc]]:
    """States with no transition out, not marked final, each with where it is first named
    as a target (or its own empty entry)."""
    found: dict[str, Loc] = {}
    for source, targets in sequence.transitions.items():
        if not targets:
            found.setdefault(source, (*base, "transitions", source))
        for number, target in enumerate(targets):
            if not sequence.transitions.get(target):
                found.setdefault(target, (*base, "transitions", source, number))
    return [(state, loc) for state, loc in found.items() if state not in sequence.final]


def _read_intervals(config: GatewayConfig) -> dict[str, tuple[float, str]]:
    """source.tag -> (how often it is read, the setting that says so)."""
    intervals: dict[str, tuple[float, str]] = {}
    for index, source in enumerate(config.sources):
        if isinstance(source, ModbusSourceConfig):
            for number, view in enumerate(source.device_views()):
                own = source.devices is not None and source.devices[number].poll is not None
                where = f"sources[{index}]" + (f".devices[{number}]" if own else "") + ".poll"
                for tag in view.tags:
                    intervals[f"{view.name}.{tag.name}"] = (view.poll, where)
        else:
            # Subscriptions sample at the interval too: a shorter state is not seen.
            for name in (tag.name for tag in source.tags):
                intervals[f"{source.name}.{name}"] = (source.interval, f"sources[{index}].interval")
    return intervals
