"""Pydantic models built from an event's `contract:`; their errors said in words."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    create_model,
)

from edgegw.pipeline.events.config import EventConfig, FieldRule


def _integral(value: Any) -> Any:
    # PLCs and OPC UA servers often carry counts in floating-point registers: 1180.0 is 1180.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def normalise(event: EventConfig, data: dict[str, Any]) -> dict[str, Any]:
    """Integral floats of int fields as ints, before validation: the event id hashes these
    values, and must not depend on whether the rest of the event passed its contract."""
    out = dict(data)
    for name, rule in event.contract.items():
        if rule.type == "int" and name in out:
            out[name] = _integral(out[name])
    return out


def _annotation(rule: FieldRule | None, is_key: bool) -> Any:
    if rule is None:
        # No contract: any value, and a field without a good value is null (key fields
        # excepted: an event needs its whole key).
        return (Any, ...) if is_key else (Any | None, None)
    base: Any
    if rule.type == "int":
        base = Annotated[StrictInt, BeforeValidator(_integral)]
    elif rule.type in ("float", "number"):
        base = StrictFloat | StrictInt
    elif rule.type == "str":
        base = StrictStr
    else:
        base = StrictBool
    constraints: dict[str, Any] = {}
    if rule.min is not None:
        constraints["ge"] = rule.min
    if rule.max is not None:
        constraints["le"] = rule.max
    if rule.pattern is not None:
        constraints["pattern"] = rule.pattern
    annotated: Any = Annotated[base, Field(**constraints)] if constraints else base
    if rule.values is not None:
        allowed = list(rule.values)
        annotated = Annotated[annotated, AfterValidator(_member_of(allowed))]
    if not rule.required and not is_key:
        return (annotated | None, None)
    return (annotated, ...)


def _member_of(allowed: list[Any]) -> Any:
    def check(value: Any) -> Any:
        if value not in allowed:
            raise ValueError(f"not one of {', '.join(map(str, allowed))}")
        return value

    return check


def build_contract(event: EventConfig) -> type[BaseModel]:
    """A model of the event's fields; key fields are always required."""
    fields = {
        name: _annotation(event.contract.get(name), name in event.key) for name in event.fields
    }
    model: type[BaseModel] = create_model(
        "Event_" + re.sub(r"\W", "_", event.type),
        __config__=ConfigDict(extra="forbid"),
        **fields,
    )
    return model


def check_contract(
    model: type[BaseModel], data: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """The data as the contract normalises it (1180.0 -> 1180), and every violation in words."""
    # A missing value is None: treat it as absent so 'required' says so plainly.
    present = {name: value for name, value in data.items() if value is not None}
    try:
        checked = model.model_validate(present)
    except ValidationError as exc:
        return data, [_words(error) for error in exc.errors(include_url=False)]
    return {name: getattr(checked, name) for name in data}, []


def _words(error: Any) -> str:
    field = ".".join(str(part) for part in error["loc"][:1]) or "event"
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return f"{field} has no value"
    if kind in ("greater_than_equal", "greater_than"):
        return f"{field} {value!r} is below min {_num(ctx.get('ge', ctx.get('gt')))}"
    if kind in ("less_than_equal", "less_than"):
        return f"{field} {value!r} is above max {_num(ctx.get('le', ctx.get('lt')))}"
    if kind == "string_pattern_mismatch":
        return f"{field} {value!r} does not match {ctx.get('pattern')}"
    if kind in ("int_type", "int_from_float"):
        return f"{field} {value!r} is not an integer"
    if kind in ("float_type",):
        return f"{field} {value!r} is not a number"
    if kind == "string_type":
        return f"{field} {value!r} is not text"
    if kind == "bool_type":
        return f"{field} {value!r} is not true/false"
    if kind == "value_error":
        return f"{field} {value!r} is {str(error.get('msg', '')).removeprefix('Value error, ')}"
    return f"{field} {value!r}: {error.get('msg')}"


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, int | float) else str(value)
