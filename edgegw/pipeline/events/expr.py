"""`when:` conditions such as `cell.good >= 1000 and cell.state == 'done'`.

Parsed once at config load with Python's `ast` and evaluated by a small interpreter that
knows only comparisons, `and`, `or`, `not`, literals and tag references (`source.tag`):
no names, calls or attributes beyond that, so a config can never run code.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}


class ExpressionError(ValueError):
    """A condition that cannot be parsed or uses something not allowed."""


@dataclass(frozen=True, slots=True)
class Condition:
    text: str
    tree: ast.expr
    tags: tuple[str, ...]  # every `source.tag` it reads

    def evaluate(self, values: Mapping[str, Any]) -> bool | None:
        """True/False, or None when a tag it reads has no good value yet."""
        try:
            return bool(_eval(self.tree, values))
        except _Unknown:
            return None
        except TypeError:
            return False  # e.g. a string compared with a number: the condition does not hold


class _Unknown(Exception):
    pass


class _Refs(ast.NodeTransformer):
    """Turn the placeholder names back into `source.tag` attribute nodes."""

    def __init__(self, refs: dict[str, str]) -> None:
        self.refs = refs

    def visit_Name(self, node: ast.Name) -> ast.expr:
        ref = self.refs.get(node.id)
        if ref is None:
            return node
        source, tag = ref.split(".", 1)
        return ast.Attribute(value=ast.Name(id=source, ctx=ast.Load()), attr=tag, ctx=ast.Load())


_QUOTED = re.compile(r"""('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")
# Possessive quantifiers and a lookbehind that also excludes '-' keep this linear: a tag
# reference starts only at the start of a word and never backtracks into it.
_REF = re.compile(r"(?<![\w.-])([A-Za-z_][\w-]*+\.[A-Za-z0-9_][\w-]*+)(?![\w.(])")


def _replace_refs(text: str) -> tuple[str, dict[str, str]]:
    """Tag references may contain '-' (press-01.temp): swap them for plain names first."""
    refs: dict[str, str] = {}

    def name_for(match: re.Match[str]) -> str:
        ref = match.group(1)
        for name, known in refs.items():
            if known == ref:
                return name
        name = f"_ref{len(refs)}"
        refs[name] = ref
        return name

    parts = _QUOTED.split(text)
    for index in range(0, len(parts), 2):  # even parts are outside quotes
        parts[index] = _REF.sub(name_for, parts[index])
    return "".join(parts), refs


def parse_condition(text: str) -> Condition:
    source, refs = _replace_refs(text.strip())
    try:
        tree = _Refs(refs).visit(ast.parse(source, mode="eval").body)
    except SyntaxError as exc:
        raise ExpressionError(
            f"'{text}' is not a condition ({exc.msg} at column {exc.offset}); write e.g. "
            "cell.good >= 1000 and cell.state == 'done'"
        ) from None
    tags: list[str] = []
    _check(tree, text, tags)
    return Condition(text, tree, tuple(dict.fromkeys(tags)))


def _check(node: ast.expr, text: str, tags: list[str]) -> None:
    if isinstance(node, ast.BoolOp):
        for value in node.values:
            _check(value, text, tags)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        _check(node.operand, text, tags)
    elif isinstance(node, ast.Compare):
        for op in node.ops:
            if type(op) not in _COMPARE:
                raise ExpressionError(f"'{text}': only == != < <= > >= compare values")
        for operand in (node.left, *node.comparators):
            _check(operand, text, tags)
    elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        tags.append(f"{node.value.id}.{node.attr}")
    elif isinstance(node, ast.Constant) and isinstance(node.value, int | float | str | bool):
        return
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        _check(node.operand, text, tags)
    elif isinstance(node, ast.Name):
        raise ExpressionError(
            f"'{text}': '{node.id}' is neither a tag (write source.tag) nor a literal "
            f"(quote text: '{node.id}')"
        )
    else:
        raise ExpressionError(
            f"'{text}': only tags (source.tag), literals, comparisons, and/or/not are allowed"
        )


def _eval(node: ast.expr, values: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.BoolOp):
        if isinstance(node.op, ast.And):
            return all(_eval(v, values) for v in node.values)
        return any(_eval(v, values) for v in node.values)
    if isinstance(node, ast.UnaryOp):
        operand = _eval(node.operand, values)
        return (not operand) if isinstance(node.op, ast.Not) else -operand
    if isinstance(node, ast.Compare):
        left = _eval(node.left, values)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = _eval(right_node, values)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        ref = f"{node.value.id}.{node.attr}"
        if ref not in values or values[ref] is None:
            raise _Unknown(ref)
        return values[ref]
    if isinstance(node, ast.Constant):
        return node.value
    raise AssertionError(f"unchecked node {ast.dump(node)}")
