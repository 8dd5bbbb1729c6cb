"""Turn pydantic validation errors into plain-English lines at the place they were written.

Every problem becomes one line, `FILE:LINE:COL PATH: MESSAGE`; the lines are sorted by
position and followed by a summary line:

    config/line3.yaml:1:1: missing required key 'mqtt'
    config/line3.yaml:9:5 sources[0].pol: unknown key 'pol'; did you mean 'poll'?
    config/line3.yaml:14:15 sources[0].tags[1].type: unknown value 'uint61'; did you mean
        'uint16'? (one of: int16, uint16, int32, ...)        <- one line, wrapped here
    3 errors; gateway not started.

At the top level there is no PATH (`FILE:LINE:COL: MESSAGE`); where there is no position
to give (an empty or unreadable file) it is `FILE: MESSAGE`.

LINE and COL are counted from 1. PATH is dotted with list indices in brackets
(`sources[0].tags[1].type`; an integer mapping key prints as `values.1`). The position
is that of the offending value; for an unknown key, that of the key; for a missing key, that
of the mapping that lacks it. Each message says what was wrong and, where it can, what would
be right: "did you mean", the valid keys, the accepted values, the allowed range.
"""

from __future__ import annotations

import difflib
import enum
import re
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import AliasChoices, BaseModel, Discriminator, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_core.core_schema import ErrorType

from edgegw.config.issues import ConfigIssue, Mark
from edgegw.errors import ConfigError

if TYPE_CHECKING:
    from edgegw.config.yamlpos import YamlDocument

M = TypeVar("M", bound=BaseModel)
Loc = tuple[str | int, ...]

_BUILTIN_ERROR_TYPES = frozenset(get_args(ErrorType))

_MAPPING = "a mapping (key: value lines)"
_EXPECTED: dict[str, str] = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "decimal_type": "a number",
    "decimal_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "string_unicode": "a string",
    "bytes_type": "a string",
    "dict_type": _MAPPING,
    "mapping_type": _MAPPING,
    "model_type": _MAPPING,
    "model_attributes_type": _MAPPING,
    "dataclass_type": _MAPPING,
    "list_type": "a list",
    "tuple_type": "a list",
    "set_type": "a list",
    "frozen_set_type": "a list",
    "iterable_type": "a list",
    "none_required": "no value",
    "finite_number": "a finite number",
}
"""Type errors, by what the value should have been."""

_BOUNDS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}


def loc_to_path(loc: tuple[str | int, ...]) -> str:
    """`('sources', 0, 'tags', 3, 'name')` -> `sources[0].tags[3].name`."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to `word`, or None when nothing is close.

    A case-insensitive exact match wins; otherwise difflib's closest match with a ratio of
    at least 0.6 ('pol' -> 'poll', 'uint61' -> 'uint16', 'modbuss' -> 'modbus').
    """
    by_lower: dict[str, str] = {}
    for candidate in candidates:
        by_lower.setdefault(candidate.lower(), candidate)
    lowered = word.lower()
    if lowered in by_lower:
        return by_lower[lowered]
    close = difflib.get_close_matches(lowered, list(by_lower), n=1, cutoff=0.6)
    return by_lower[close[0]] if close else None


def validate_document(model: type[M], doc: YamlDocument) -> M:
    """The validated model, or ConfigError with every problem, sorted by position."""
    try:
        return model.model_validate(doc.data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    findings = _merge_type_errors([_explain(model, doc, error) for error in errors])
    findings.sort(key=lambda f: (0, 0) if f.mark is None else (f.mark.line, f.mark.column))
    issues = [ConfigIssue(doc.path, f.mark, f.path, f.message) for f in findings]
    raise ConfigError(list(dict.fromkeys(issues))) from None


# --- one pydantic error -> one finding ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Finding:
    mark: Mark | None
    path: str
    message: str
    expected: tuple[str, ...] = ()  # set for type errors, so union members can be merged
    got: str = ""


@dataclass(frozen=True, slots=True)
class _Place:
    """Where a pydantic `loc` lands in the YAML data."""

    loc: Loc  # the segments present in the data: the rest were pydantic's own labels
    is_index: tuple[bool, ...]  # per segment: a list index (True) or a mapping key
    value: Any  # the data at `loc`
    absent: tuple[str | int, ...]  # the segments after the last present one

    @property
    def path(self) -> str:
        return _render(tuple(zip(self.loc, self.is_index, strict=True)))


def _locate(data: Any, loc: Loc) -> _Place:
    present: list[str | int] = []
    is_index: list[bool] = []
    absent: list[str | int] = []
    node = data
    for segment in loc:
        if isinstance(node, dict) and _has_key(node, segment):
            node = node[segment]
            present.append(segment)
            is_index.append(False)
            absent = []
        elif (
            isinstance(node, list)
            and isinstance(segment, int)
            and not isinstance(segment, bool)
            and 0 <= segment < len(node)
        ):
            node = node[segment]
            present.append(segment)
            is_index.append(True)
            absent = []
        else:
            absent.append(segment)  # a union tag, 'function-after[...]', '[key]', a missing key
    return _Place(tuple(present), tuple(is_index), node, tuple(absent))


def _has_key(mapping: dict[Any, Any], key: str | int) -> bool:
    try:
        return key in mapping
    except TypeError:
        return False


def _render(parts: tuple[tuple[str | int, bool], ...]) -> str:
    text = ""
    for part, is_index in parts:
        if is_index:
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _explain(model: type[BaseModel], doc: YamlDocument, error: ErrorDetails) -> _Finding:
    kind = error["type"]
    place = _locate(doc.data, tuple(error["loc"]))
    mark = doc.value_marks.get(place.loc)
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    value: Any = error.get("input")

    if kind == "extra_forbidden":
        key = place.loc[-1] if place.loc else "?"
        parent = _Place(place.loc[:-1], place.is_index[:-1], None, ())
        known = _model_at(model, doc.data, parent.loc)
        valid = _valid_keys(known) if known is not None else []
        message = f"unknown key '{key}'"
        hint = did_you_mean(str(key), valid) if valid else None
        if hint is not None:
            message += f"; did you mean '{hint}'?"
        elif valid:
            message += f"; valid keys: {', '.join(valid)}"
        return _Finding(doc.key_marks.get(place.loc, mark), place.path, message)

    if kind == "missing":
        key = place.absent[-1] if place.absent else "?"
        return _Finding(mark, place.path, f"missing required key '{key}'")

    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return _union_tag(doc, place, kind, ctx)

    # A key absent from the data but named in the loc is a default being validated.
    path = place.path + _absent_fields(model, doc.data, place)

    if kind in ("literal_error", "enum"):
        choices = _choices_at(model, doc.data, place.loc) or _parse_expected(ctx.get("expected"))
        return _Finding(mark, path, _unknown_value(value, choices))

    is_key = "[key]" in place.absent  # a mapping key failed its own type (dict[int, str])
    if is_key:
        mark = doc.key_marks.get(place.loc, mark)
        value = place.loc[-1] if place.loc else value

    if kind in _EXPECTED:
        expected = _EXPECTED[kind] + (" as the key" if is_key else "")
        return _Finding(mark, path, "", (expected,), _show(value))

    if kind in _BOUNDS:
        name, symbol = _BOUNDS[kind]
        return _Finding(mark, path, f"must be {symbol} {ctx.get(name)} (got {_show(value)})")

    constraint = _constraint_message(kind, ctx, value)
    if constraint is not None:
        message = constraint
    else:
        text = str(error["msg"])
        if kind == "value_error":
            message = text.removeprefix("Value error, ")
        elif kind == "assertion_error":
            message = text.removeprefix("Assertion failed, ")
        elif kind not in _BUILTIN_ERROR_TYPES:  # PydanticCustomError: the author's own words
            message = text
        else:
            message = _lower_first(text)
            if not isinstance(value, dict | list):
                message += f" (got {_show(value)})"
    return _Finding(mark, path, message)


def _absent_fields(model: type[BaseModel], data: Any, place: _Place) -> str:
    """`.keepalive` when pydantic validated the default of a key the file leaves out."""
    current = _model_at(model, data, place.loc)
    text = ""
    for segment in place.absent:
        info = _field_for_key(current, segment) if current is not None else None
        if info is None:
            continue  # a union tag or a validator wrapper, not a key
        text += f".{segment}" if text or place.loc else str(segment)
        inner = _unwrap(info.annotation, None)
        current = inner if _is_model(inner) else None
    return text


def _union_tag(doc: YamlDocument, place: _Place, kind: str, ctx: dict[str, Any]) -> _Finding:
    """A discriminated union: the `protocol:` (or similar) key is missing or unknown."""
    key = str(ctx.get("discriminator", "")).strip("'")
    if not re.fullmatch(r"[\w-]+", key):
        key = "kind"  # a callable discriminator: no key name to quote
    mark = doc.value_marks.get(place.loc)
    if not isinstance(place.value, dict):
        got = _show(place.value)
        return _Finding(mark, place.path, f"expected {_MAPPING} with a '{key}' key, got {got}")
    if kind == "union_tag_not_found" or key not in place.value:
        return _Finding(mark, place.path, f"missing required key '{key}'")
    loc = (*place.loc, key)
    path = _Place(loc, (*place.is_index, False), None, ()).path
    tag = place.value[key]
    tags = _parse_expected(ctx.get("expected_tags"))
    message = f"unknown {key} {_show(tag)}"
    hint = did_you_mean(str(tag), [str(t) for t in tags])
    if hint is not None:
        message += f"; did you mean '{hint}'?"
    if tags:
        message += f" (one of: {', '.join(str(t) for t in tags)})"
    return _Finding(doc.value_marks.get(loc, mark), path, message)


def _unknown_value(value: Any, choices: Sequence[Any]) -> str:
    words = [str(choice) for choice in choices]
    listed = f" (one of: {', '.join(words)})" if words else ""
    if not isinstance(value, str) and str(value) in words and str(value) not in choices:
        # `version: 5` where the choices are strings: YAML read a number.
        return f"unknown value {_show(value)} (read as a number); write it in quotes: '{value}'"
    message = f"unknown value {_show(value)}"
    hint = did_you_mean(str(value), words) if isinstance(value, str) else None
    if hint is not None:
        message += f"; did you mean '{hint}'?"
    return message + listed


def _constraint_message(kind: str, ctx: dict[str, Any], value: Any) -> str | None:
    if kind == "multiple_of":
        return f"must be a multiple of {ctx.get('multiple_of')} (got {_show(value)})"
    if kind == "string_too_short":
        least = ctx.get("min_length")
        if least == 1:
            return "must not be empty"
        return f"must be at least {least} characters long (got {_show(value)})"
    if kind == "string_too_long":
        length = len(value) if isinstance(value, str) else "more"
        return f"must be at most {ctx.get('max_length')} characters long (got {length})"
    if kind in ("too_short", "too_long"):
        bound = ctx.get("min_length" if kind == "too_short" else "max_length")
        side = "at least" if kind == "too_short" else "at most"
        items = "item" if bound == 1 else "items"
        return f"needs {side} {bound} {items} (got {ctx.get('actual_length')})"
    if kind == "string_pattern_mismatch":
        return f"{_show(value)} does not match the pattern {ctx.get('pattern')}"
    if kind == "int_parsing_size":
        return f"the number {_show(value)} is too large"
    return None


def _merge_type_errors(findings: list[_Finding]) -> list[_Finding]:
    """`float | str` fails once per member at the same place: say it once, 'a or b'."""
    merged: list[_Finding] = []
    index_of: dict[tuple[Mark | None, str], int] = {}
    for finding in findings:
        if not finding.expected:
            merged.append(finding)
            continue
        key = (finding.mark, finding.path)
        if key in index_of:
            first = merged[index_of[key]]
            extra = tuple(e for e in finding.expected if e not in first.expected)
            merged[index_of[key]] = replace(first, expected=first.expected + extra)
        else:
            index_of[key] = len(merged)
            merged.append(finding)
    return [_type_message(finding) if finding.expected else finding for finding in merged]


def _type_message(finding: _Finding) -> _Finding:
    message = f"expected {' or '.join(finding.expected)}, got {finding.got}"
    if finding.expected == ("a string",) and finding.got[:1] not in ("'", '"', "a"):
        message += "; put the value in quotes"  # `name: 123`, `name: yes`
    return replace(finding, message=message)


def _show(value: Any) -> str:
    """A value as the user would recognise it in their YAML: short, YAML-ish."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, int) and value.bit_length() > 128:
        return "a number far too large"
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _lower_first(text: str) -> str:
    if len(text) > 1 and text[0].isupper() and text[1].islower():
        return text[0].lower() + text[1:]
    return text


def _parse_expected(expected: Any) -> list[str]:
    """Pydantic's ctx text `'a', 'b' or 'c'` -> `['a', 'b', 'c']`."""
    if not isinstance(expected, str):
        return []
    quoted = re.findall(r"'([^']*)'", expected)
    if quoted:
        return quoted
    return [part.strip() for part in re.split(r",| or ", expected) if part.strip()]


# --- walking the model's annotations along a path in the data ----------------------------


def _model_at(model: type[BaseModel], data: Any, loc: Loc) -> type[BaseModel] | None:
    """The pydantic model that validates the mapping at `loc`, if there is exactly one."""
    found = _type_at(model, data, loc)
    if found is None:
        return None
    resolved = _unwrap(*found)
    return resolved if _is_model(resolved) else None


def _choices_at(model: type[BaseModel], data: Any, loc: Loc) -> list[Any]:
    """The Literal values or Enum values accepted at `loc`."""
    found = _type_at(model, data, loc)
    return [] if found is None else _choices(found[0])


def _type_at(model: type[BaseModel], data: Any, loc: Loc) -> tuple[Any, Any, str | None] | None:
    """(annotation, data, discriminator) at `loc`; None where the annotation cannot follow."""
    annotation: Any = model
    value = data
    discriminator: str | None = None
    for segment in loc:
        annotation = _unwrap(annotation, value, discriminator)
        discriminator = None
        if _is_model(annotation):
            info = _field_for_key(annotation, segment)
            if info is None:
                return None
            annotation = info.annotation
            discriminator = _discriminator_name(info.discriminator)
        else:
            origin = get_origin(annotation)
            args = get_args(annotation)
            if origin in (list, set, frozenset) or _is_abc(origin, Sequence):
                annotation = args[0] if args else Any
            elif origin is tuple:
                if len(args) == 2 and args[1] is Ellipsis:
                    annotation = args[0]
                elif isinstance(segment, int) and 0 <= segment < len(args):
                    annotation = args[segment]
                else:
                    return None
            elif origin is dict or _is_abc(origin, Mapping):
                annotation = args[1] if len(args) == 2 else Any
            else:
                return None
        try:
            value = value[segment]
        except (KeyError, IndexError, TypeError):
            value = None
    return annotation, value, discriminator


def _is_abc(origin: Any, abc: type) -> bool:
    return isinstance(origin, type) and issubclass(origin, abc) and origin is not str


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _unwrap(annotation: Any, value: Any, discriminator: str | None = None) -> Any:
    """Strip Annotated, Optional and type aliases; pick the union member that fits `value`."""
    while True:
        if isinstance(annotation, types.GenericAlias | type) and get_origin(annotation) is None:
            return annotation
        value_of_alias = getattr(annotation, "__value__", None)  # `type X = ...` aliases
        if value_of_alias is not None and get_origin(annotation) is None:
            annotation = value_of_alias
            continue
        origin = get_origin(annotation)
        if origin is Annotated:
            base, *metadata = get_args(annotation)
            for item in metadata:
                if isinstance(item, FieldInfo) and item.discriminator is not None:
                    discriminator = _discriminator_name(item.discriminator) or discriminator
                elif isinstance(item, Discriminator):
                    discriminator = _discriminator_name(item) or discriminator
            annotation = base
            continue
        if origin is Union or origin is types.UnionType:
            members = [m for m in get_args(annotation) if m is not type(None)]
            if len(members) == 1:
                annotation = members[0]
                continue
            chosen = _pick_member(members, value, discriminator)
            if chosen is None:
                return annotation
            annotation = chosen
            continue
        return annotation


def _pick_member(members: list[Any], value: Any, discriminator: str | None) -> Any:
    """The union member the data is meant for: by its discriminator, else by shape."""
    models = [_unwrap(m, value) for m in members]
    models = [m for m in models if _is_model(m)]
    if isinstance(value, dict):
        if discriminator is not None:
            tag = value.get(discriminator)
            for candidate in models:
                info = _field_for_key(candidate, discriminator)
                if info is not None and tag in _choices(info.annotation):
                    return candidate
            return None
        # No declared discriminator: a member whose Literal fields all match the data.
        fitting = [m for m in models if _literals_match(m, value)]
        if len(fitting) == 1:
            return fitting[0]
        return models[0] if len(models) == 1 else None
    if isinstance(value, list):
        sequences = [m for m in members if get_origin(m) in (list, tuple, set, frozenset)]
        return sequences[0] if len(sequences) == 1 else None
    return None


def _literals_match(model: Any, value: dict[Any, Any]) -> bool:
    matched = False
    for name, info in model.model_fields.items():
        choices = _choices(info.annotation) if get_origin(info.annotation) is Literal else []
        key = _data_key(name, info)
        if choices and key in value:
            if value[key] not in choices:
                return False
            matched = True
    return matched


def _choices(annotation: Any) -> list[Any]:
    """Every Literal value or Enum value reachable through Annotated/Optional/unions."""
    origin = get_origin(annotation)
    if origin is Literal:
        return [c.value if isinstance(c, enum.Enum) else c for c in get_args(annotation)]
    if origin is Annotated:
        return _choices(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        found: list[Any] = []
        for member in get_args(annotation):
            found += [c for c in _choices(member) if c not in found]
        return found
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [member.value for member in annotation]
    return []


def _discriminator_name(discriminator: Any) -> str | None:
    if isinstance(discriminator, str):
        return discriminator
    if isinstance(discriminator, Discriminator) and isinstance(discriminator.discriminator, str):
        return discriminator.discriminator
    return None


def _data_key(name: str, info: FieldInfo) -> str:
    """The key a field is written under in the data (its alias, if it has one)."""
    if isinstance(info.validation_alias, str):
        return info.validation_alias
    return info.alias or name


def _field_for_key(model: type[BaseModel], key: str | int) -> FieldInfo | None:
    for name, info in model.model_fields.items():
        if key in (name, _data_key(name, info)) or (
            isinstance(info.validation_alias, AliasChoices) and key in info.validation_alias.choices
        ):
            return info
    return None


def _valid_keys(model: type[BaseModel]) -> list[str]:
    """The keys a mapping validated by `model` may contain, in declaration order."""
    config = model.model_config
    by_name = bool(config.get("validate_by_name") or config.get("populate_by_name"))
    by_alias = config.get("validate_by_alias", True) is not False
    keys: list[str] = []
    for name, info in model.model_fields.items():
        aliases: list[str] = []
        if isinstance(info.validation_alias, AliasChoices):
            aliases = [c for c in info.validation_alias.choices if isinstance(c, str)]
        elif isinstance(info.validation_alias, str):
            aliases = [info.validation_alias]
        elif info.alias:
            aliases = [info.alias]
        if by_alias:
            keys += aliases
        if not aliases or by_name or not by_alias:
            keys.append(name)
    return list(dict.fromkeys(keys))
