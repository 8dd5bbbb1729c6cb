"""`${NAME}` references in config strings, filled from the environment at load time.

Secrets and per-machine values stay out of the YAML (it is checked into plant repositories):
`username: ${OPC_USER}`, `url: ${PLC_URL:-opc.tcp://127.0.0.1:4840/}`. `$${` writes a
literal `${`. A reference to an unset variable without a default is a config error at its
position, never an empty string: an empty user name would fail much later and obscurely.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from edgegw.config.diagnostics import format_issue, loc_to_path
from edgegw.config.yamlpos import Path, YamlDocument

_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def expand_env(doc: YamlDocument, environ: Mapping[str, str]) -> list[str]:
    """Replace every reference in the document's string values in place; the problems found."""
    issues: list[str] = []

    def walk(node: Any, path: Path) -> Any:
        if isinstance(node, dict):
            for key, child in node.items():
                node[key] = walk(child, (*path, key))
            return node
        if isinstance(node, list):
            for index, child in enumerate(node):
                node[index] = walk(child, (*path, index))
            return node
        if isinstance(node, str) and "${" in node:
            text, problems = _expand(node, environ)
            mark = doc.value_marks.get(path)
            issues.extend(format_issue(doc.path, mark, loc_to_path(path), p) for p in problems)
            return text
        return node

    doc.data = walk(doc.data, ())
    return issues


def _expand(text: str, environ: Mapping[str, str]) -> tuple[str, list[str]]:
    problems: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        body = match.group(1)
        name, has_default, default = body.partition(":-")
        if not _NAME.match(name):
            problems.append(
                f"'${{{body}}}' is not a variable reference; write ${{NAME}} or "
                "${NAME:-default} (letters, digits, '_'), or $${ for a literal '${'"
            )
            return match.group(0)
        value = environ.get(name)
        if value is not None:
            return value
        if has_default:
            return default
        problems.append(
            f"environment variable {name} is not set (referenced as ${{{name}}}); set it "
            f"(systemd: Environment= or EnvironmentFile=) or give a default: ${{{name}:-value}}"
        )
        return match.group(0)

    return _REFERENCE.sub(substitute, text), problems
