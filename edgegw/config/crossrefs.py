"""Checks across sections: events and sequences name tags that exist, with values they have;
sinks have names of their own and one client id per broker."""

from __future__ import annotations

from typing import Any

from edgegw.config.diagnostics import did_you_mean, loc_to_path
from edgegw.config.issues import ConfigIssue
from edgegw.config.model import GatewayConfig
from edgegw.config.yamlpos import YamlDocument

Loc = tuple[str | int, ...]


def reference_issues(doc: YamlDocument, config: GatewayConfig) -> list[ConfigIssue]:
    tags: dict[str, Any] = {
        f"{source.name}.{tag.name}": tag for source in config.data_sources() for tag in source.tags
    }
    issues: list[ConfigIssue] = []

    def report(loc: Loc, message: str) -> None:
        issues.append(ConfigIssue(doc.path, doc.value_marks.get(loc), loc_to_path(loc), message))

    def unknown(ref: str) -> str:
        guess = did_you_mean(ref, tags)
        hint = f"; did you mean '{guess}'?" if guess else " (write source.tag of a configured tag)"
        return f"no tag '{ref}'{hint}"

    def check_value(loc: Loc, ref: str, value: Any, what: str) -> None:
        names = _names(tags.get(ref))
        kind = _value_kind(tags.get(ref))
        if names is None and kind is not None and not _fits(value, kind):
            report(loc, f"{what} {value!r} can never be a value of {ref} (a {kind} tag)")
            return
        if names is not None and value not in names:
            guess = did_you_mean(str(value), names) if isinstance(value, str) else None
            hint = f"; did you mean '{guess}'?" if guess else ""
            report(loc, f"{what} '{value}' is not a value of {ref} ({', '.join(names)}){hint}")

    seen_types: dict[str, int] = {}
    for index, event in enumerate(config.events):
        base: Loc = ("events", index)
        if event.type in seen_types:
            report((*base, "type"), f"event type '{event.type}' is declared twice")
        seen_types.setdefault(event.type, index)
        trigger = event.trigger
        watched = trigger.watched
        if watched is not None:
            key = trigger.kind if isinstance(getattr(trigger, trigger.kind), str) else "tag"
            if trigger.kind == "changes_to":
                key = "tag"
            if watched not in tags:
                report((*base, "trigger", key), unknown(watched))
            elif trigger.kind == "changes_to":
                check_value(
                    (*base, "trigger", "changes_to"), watched, trigger.changes_to, "changes_to"
                )
        condition = trigger.condition
        if condition is not None:
            for ref in condition.tags:
                if ref not in tags:
                    report((*base, "trigger", "when"), unknown(ref))
        for name, ref in event.fields.items():
            if "." in ref and not ref.startswith("gateway.") and ref not in tags:
                report((*base, "fields", name), unknown(ref))

    seen_tags: set[str] = set()
    for index, sequence in enumerate(config.sequences):
        base = ("sequences", index)
        if sequence.tag in seen_tags:
            report((*base, "tag"), f"a sequence for {sequence.tag} is declared twice")
        seen_tags.add(sequence.tag)
        if sequence.tag not in tags:
            report((*base, "tag"), unknown(sequence.tag))
            continue
        for state, targets in sequence.transitions.items():
            check_value((*base, "transitions"), sequence.tag, state, "state")
            for target in targets:
                check_value((*base, "transitions", state), sequence.tag, target, "state")
    return issues


def _names(tag: Any) -> list[str] | None:
    values = getattr(tag, "values", None)
    return list(values.values()) if values else None


def _value_kind(tag: Any) -> str | None:
    """What a tag's published values are, when its config says (Modbus types)."""
    data_type = getattr(tag, "type", None)
    if not isinstance(data_type, str):
        return None
    if data_type == "bool":
        return "bool"
    if data_type == "string":
        return "string"
    return "number"


def _fits(value: Any, kind: str) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    return isinstance(value, int | float) and not isinstance(value, bool)


def sink_issues(doc: YamlDocument, config: GatewayConfig) -> list[ConfigIssue]:
    """One name per sink (the `mqtt:` section is the sink named mqtt); one client id per broker:
    two clients with one id take each other's session over, in turn, forever."""
    issues: list[ConfigIssue] = []
    names: dict[str, Loc] = {}
    clients: dict[tuple[str, int, str], tuple[str, Loc]] = {}
    for sink in config.sink_list():
        name_loc: Loc = (*sink.path, "name") if sink.path != ("mqtt",) else sink.path
        first = names.get(sink.name)
        if first is not None:
            issues.append(
                _issue(
                    doc,
                    name_loc,
                    f"a second sink named '{sink.name}' (the first at {_line(doc, first)}); sink "
                    "names must be unique, and the mqtt: section is the sink named 'mqtt'",
                )
            )
        names.setdefault(sink.name, name_loc)
        broker = (sink.section.host, sink.section.port, sink.client_id)
        other = clients.get(broker)
        if other is not None:
            client_loc: Loc = (*sink.path, "client_id")
            if client_loc not in doc.value_marks:
                client_loc = name_loc
            issues.append(
                _issue(
                    doc,
                    client_loc,
                    f"sinks '{other[0]}' and '{sink.name}' connect to {sink.section.host}:"
                    f"{sink.section.port} with one client id '{sink.client_id}'; each would "
                    "take the other's session over: give one its own client_id",
                )
            )
        clients.setdefault(broker, (sink.name, name_loc))
    return issues


def _issue(doc: YamlDocument, loc: Loc, message: str) -> ConfigIssue:
    mark = doc.value_marks.get(loc) or doc.key_marks.get(loc)
    return ConfigIssue(doc.path, mark, loc_to_path(loc), message)


def _line(doc: YamlDocument, loc: Loc) -> str:
    mark = doc.key_marks.get(loc) or doc.value_marks.get(loc)
    return f"line {mark.line}" if mark else loc_to_path(loc)
