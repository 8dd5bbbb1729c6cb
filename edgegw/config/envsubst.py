"""`${NAME}` references in config strings, filled from the environment at load time.

Secrets and per-machine values stay out of the YAML (it is checked into plant repositories):
`username: ${OPC_USER}`, `url: ${PLC_URL:-opc.tcp://127.0.0.1:4840/}`. `$${` writes a
literal `${`. A reference to an unset variable without a default is a config error at its
position, never an empty string: an empty user name would fail much later and obscurely.

`$NAME` without braces (`mqtt://$BROKER:1883`, as a shell would take it) is an error that
suggests `${BROKER}`, not a literal: taken literally it would become a host name that fails
at connect time, far from the line that caused it. `$$NAME` writes a literal `$NAME`. Only
the file's own text is read this way: values that come from the environment are never
re-scanned, and secrets (which may hold any `$`) come from files, not from the YAML.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from edgegw.config.diagnostics import loc_to_path
from edgegw.config.issues import ConfigIssue
from edgegw.config.yamlpos import Path, YamlDocument

MAX_TEXT = 20_000_000
_SURROGATE = re.compile("[\ud800-\udfff]")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def expand_env(doc: YamlDocument, environ: Mapping[str, str]) -> list[ConfigIssue]:
    """Replace every reference in the document's string values in place; the problems found."""
    issues: list[ConfigIssue] = []
    budget = [MAX_TEXT]  # characters of text the whole document may hold once expanded

    def walk(node: Any, path: Path) -> Any:
        if isinstance(node, dict):
            for key in list(node):
                if isinstance(key, str) and _SURROGATE.search(key):
                    mark = doc.key_marks.get((*path, key))
                    issues.append(
                        ConfigIssue(
                            doc.path,
                            mark,
                            loc_to_path(path),
                            "a key contains a character that is not valid Unicode text",
                        )
                    )
                    node[_SURROGATE.sub("\ufffd", key)] = walk(node.pop(key), (*path, key))
                else:
                    node[key] = walk(node[key], (*path, key))
            return node
        if isinstance(node, list):
            for index, child in enumerate(node):
                node[index] = walk(child, (*path, index))
            return node
        if isinstance(node, str):
            budget[0] -= len(node)
            if budget[0] < 0:
                # Aliases can copy one long string thousands of times: stop before memory goes.
                if budget[0] + len(node) >= 0:
                    issues.append(
                        ConfigIssue(
                            doc.path,
                            doc.value_marks.get(path),
                            loc_to_path(path),
                            f"the file expands to more than {MAX_TEXT:,} characters of text; "
                            "no configuration is that large",
                        )
                    )
                return ""
            text, problems = _expand(node, environ) if "$" in node else (node, [])
            if _SURROGATE.search(text):
                # A lone surrogate (a YAML "\ud800" escape, a non-UTF-8 byte in the
                # environment) is no text at all: nothing downstream could print or send it.
                problems.append("contains a character that is not valid Unicode text")
                text = _SURROGATE.sub("\ufffd", text)
            mark = doc.value_marks.get(path)
            issues.extend(ConfigIssue(doc.path, mark, loc_to_path(path), p) for p in problems)
            return text
        return node

    doc.data = walk(doc.data, ())
    return issues


def _expand(text: str, environ: Mapping[str, str]) -> tuple[str, list[str]]:
    """One left-to-right pass that never rescans: linear even for thousands of unclosed `${`."""
    problems: list[str] = []
    out: list[str] = []
    pos = 0
    bare_seen = False
    while (start := text.find("$", pos)) != -1:
        out.append(text[pos:start])
        if text.startswith("$${", start):
            out.append("${")
            pos = start + 3
            continue
        if text.startswith("$$", start) and _BARE.match(text, start + 2):
            out.append("$")  # `$$NAME`: a literal `$NAME`
            pos = start + 2
            continue
        if not text.startswith("${", start):
            bare = _BARE.match(text, start + 1)
            if bare is not None and not bare_seen:
                bare_seen = True  # one per value: `$A$B$C...` must not flood the report
                name = bare.group(0) if len(bare.group(0)) <= 40 else bare.group(0)[:37] + "..."
                problems.append(
                    f"'${name}' is not expanded (only ${{NAME}} is); did you mean '${{{name}}}'? "
                    f"Write $${name} for a literal '${name}'"
                )
            out.append("$")
            pos = start + 1
            continue
        end = text.find("}", start + 2)
        if end == -1:
            problems.append("'${' without a closing '}'; write ${NAME}, or $${ for a literal '${'")
            out.append(text[start:])
            pos = len(text)
            break
        out.append(_substitute(text[start + 2 : end], environ, problems))
        pos = end + 1
    out.append(text[pos:])
    return "".join(out), problems


def _substitute(body: str, environ: Mapping[str, str], problems: list[str]) -> str:
    name, has_default, default = body.partition(":-")
    if not _NAME.match(name):
        shown = body if len(body) <= 40 else body[:37] + "..."
        problems.append(
            f"'${{{shown}}}' is not a variable reference; write ${{NAME}} or "
            "${NAME:-default} (letters, digits, '_'), or $${ for a literal '${'"
        )
        return "${" + body + "}"
    value = environ.get(name)
    if value is not None:
        return value
    if has_default:
        return default
    problems.append(
        f"environment variable {name} is not set (referenced as ${{{name}}}); set it "
        f"(systemd: Environment= or EnvironmentFile=) or give a default: ${{{name}:-value}}"
    )
    return "${" + body + "}"
