"""Read a config file: YAML with positions, then the model, then cross-entry rules.

Every problem is collected and reported at once as `FILE:LINE:COL path: message`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from edgegw.config.crossrefs import reference_issues, sink_issues
from edgegw.config.diagnostics import loc_to_path, validate_document
from edgegw.config.envsubst import expand_env
from edgegw.config.issues import ConfigIssue
from edgegw.config.model import GatewayConfig
from edgegw.config.yamlpos import YamlDocument, load_yaml_file
from edgegw.errors import ConfigError

Loc = tuple[str | int, ...]


def load_config(
    path: str | os.PathLike[str], environ: Mapping[str, str] | None = None
) -> GatewayConfig:
    """The validated config, or ConfigError listing every problem in the file."""
    doc = load_yaml_file(path)
    env_issues = expand_env(doc, os.environ if environ is None else environ)
    if env_issues:
        raise ConfigError(env_issues)
    duplicates = _duplicate_names(doc)
    try:
        config = validate_document(GatewayConfig, doc)
    except ConfigError as exc:
        if not duplicates:
            raise
        # Merge with the model's findings, keeping one summary line at the end.
        issues = sorted([*exc.issues, *duplicates], key=lambda issue: issue.position)
        raise ConfigError(issues) from None
    problems = duplicates + reference_issues(doc, config) + sink_issues(doc, config)
    if problems:
        problems.sort(key=lambda issue: issue.position)
        raise ConfigError(problems)
    return config


def _duplicate_names(doc: YamlDocument) -> list[ConfigIssue]:
    """Source names must be unique in the file, tag names unique in their source."""
    issues: list[ConfigIssue] = []
    data: Any = doc.data
    sources = data.get("sources") if isinstance(data, dict) else None
    if not isinstance(sources, list):
        return issues
    issues += _duplicates_in(doc, sources, ("sources",), "source")
    for index, source in enumerate(sources):
        if isinstance(source, dict) and isinstance(source.get("tags"), list):
            issues += _duplicates_in(doc, source["tags"], ("sources", index, "tags"), "tag")
        devices = source.get("devices") if isinstance(source, dict) else None
        if isinstance(devices, list):
            for number, device in enumerate(devices):
                if isinstance(device, dict) and isinstance(device.get("tags"), list):
                    base: Loc = ("sources", index, "devices", number, "tags")
                    issues += _duplicates_in(doc, device["tags"], base, "tag")
    issues += _device_name_clashes(doc, sources)
    return issues


def _device_name_clashes(doc: YamlDocument, sources: list[Any]) -> list[ConfigIssue]:
    """A device's name is the `source` of its telemetry: unique among sources and devices."""
    taken: dict[str, Loc] = {}
    for index, source in enumerate(sources):
        if isinstance(source, dict) and isinstance(source.get("name"), str):
            taken.setdefault(source["name"], ("sources", index, "name"))
    issues: list[ConfigIssue] = []
    for index, source in enumerate(sources):
        devices = source.get("devices") if isinstance(source, dict) else None
        if not isinstance(devices, list):
            continue
        own_name = source.get("name")
        for number, device in enumerate(devices):
            name = device.get("name") if isinstance(device, dict) else None
            if not isinstance(name, str):
                continue
            loc: Loc = ("sources", index, "devices", number, "name")
            first = taken.get(name)
            if first is None:
                taken[name] = loc
                continue
            if first == ("sources", index, "name") and name == own_name:
                taken[name] = loc  # named like its own line, which is no source itself
                continue
            mark = doc.value_marks.get(first)
            where = f" (line {mark.line})" if mark else ""
            issues.append(
                ConfigIssue(
                    doc.path,
                    doc.value_marks.get(loc),
                    loc_to_path(loc),
                    f"device name '{name}' is taken{where}; a device's name is the source of "
                    "its tags, unique among sources and devices",
                )
            )
    return issues


def _duplicates_in(
    doc: YamlDocument, entries: list[Any], base: Loc, what: str
) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    first_seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            continue
        name = entry["name"]
        if name in first_seen:
            loc: Loc = (*base, index, "name")
            first_loc: Loc = (*base, first_seen[name], "name")
            first_mark = doc.value_marks.get(first_loc)
            where = f" (first at line {first_mark.line})" if first_mark else ""
            message = f"duplicate {what} name '{name}'{where}; {what} names must be unique"
            issues.append(
                ConfigIssue(doc.path, doc.value_marks.get(loc), loc_to_path(loc), message)
            )
        else:
            first_seen[name] = index
    return issues
