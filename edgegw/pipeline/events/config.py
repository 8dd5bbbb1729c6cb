"""The `events:` and `sequences:` sections: business events and allowed status transitions."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, PlainValidator, WithJsonSchema, field_validator, model_validator

from edgegw.config.types import Duration, StrictModel
from edgegw.pipeline.events.expr import Condition, parse_condition

Scalar = int | float | bool | str

_TAG_REF = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*\.[A-Za-z0-9_][A-Za-z0-9_-]*$")
GATEWAY_FIELDS = ("gateway.id", "gateway.site", "gateway.area", "gateway.line")


def _check_tag_ref(value: Any) -> str:
    if not isinstance(value, str) or not _TAG_REF.match(value):
        raise ValueError(f"expected a tag as source.tag (e.g. cell.state), got {value!r}")
    return value


TagRef = Annotated[
    str,
    PlainValidator(_check_tag_ref),
    WithJsonSchema({"type": "string", "pattern": _TAG_REF.pattern, "examples": ["cell.state"]}),
]
EventType = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_-]*(\.[A-Za-z0-9_][A-Za-z0-9_-]*)*$",
        max_length=64,
        description="e.g. batch.completed; it becomes an MQTT topic level.",
    ),
]
FieldName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=64)]

TriggerKind = Literal["changes_to", "changes", "rises", "falls", "when"]
_KINDS: tuple[TriggerKind, ...] = ("changes_to", "changes", "rises", "falls", "when")


class TriggerConfig(StrictModel):
    """What makes the event happen; exactly one kind.

    `{tag: cell.state, changes_to: done}`, `{tag: cell.batch, changes: true}` (or
    `{changes: cell.batch}`), `rises`/`falls` likewise (a bool going true/false, a number going
    up/down), `{when: "cell.good >= 1000"}` (the condition turning true).
    """

    tag: TagRef | None = None
    changes_to: Scalar | None = None
    changes: TagRef | bool | None = None
    rises: TagRef | bool | None = None
    falls: TagRef | bool | None = None
    when: str | None = Field(default=None, max_length=2000)

    @field_validator("when")
    @classmethod
    def _parse_when(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_condition(value)
            except (RecursionError, MemoryError):  # CPython's parser gives up on deep nesting
                raise ValueError("the condition nests too deeply") from None
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> TriggerConfig:
        kinds = [name for name in _KINDS if self._given(name)]
        if len(kinds) != 1:
            found = ", ".join(kinds) if kinds else "none"
            raise ValueError(
                "a trigger needs exactly one of changes_to, changes, rises, falls, when "
                f"(found: {found})"
            )
        kind = kinds[0]
        if kind == "when":
            if self.tag is not None:
                raise ValueError("'when' names its tags in the condition; drop 'tag'")
        elif self.watched is None:
            raise ValueError(f"'{kind}' needs the tag it watches: tag: source.tag")
        elif kind != "changes_to" and self.tag is not None and isinstance(getattr(self, kind), str):
            raise ValueError(f"give the tag once: either tag: … with {kind}: true, or {kind}: …")
        return self

    def _given(self, name: str) -> bool:
        value = getattr(self, name)
        if name in ("changes_to", "when"):
            return value is not None  # changes_to: 0 and changes_to: false are values
        return value is not None and value is not False

    @property
    def kind(self) -> TriggerKind:
        for name in _KINDS:
            if self._given(name):
                return name
        raise AssertionError("validated trigger without a kind")

    @property
    def watched(self) -> str | None:
        """The tag whose change fires it (None for `when`)."""
        for name in ("changes", "rises", "falls"):
            value = getattr(self, name)
            if isinstance(value, str):
                return value
        return self.tag

    @property
    def condition(self) -> Condition | None:
        return parse_condition(self.when) if self.when is not None else None


class FieldRule(StrictModel):
    """The contract of one event field."""

    type: Literal["int", "float", "number", "str", "bool"]
    min: float | None = None
    max: float | None = None
    pattern: str | None = Field(default=None, description="Regular expression (str fields).")
    values: list[Scalar] | None = Field(default=None, min_length=1, description="Allowed values.")
    required: bool = Field(default=True, description="False allows a missing (null) value.")
    unit: str | None = Field(default=None, max_length=32)

    @model_validator(mode="after")
    def _check(self) -> FieldRule:
        if self.pattern is not None:
            if self.type != "str":
                raise ValueError(f"'pattern' applies to type str, not {self.type}")
            try:
                re.compile(self.pattern)
            except (re.error, RecursionError, OverflowError) as exc:
                raise ValueError(
                    f"pattern '{self.pattern}' is not a regular expression: {exc}"
                ) from None
        if (self.min is not None or self.max is not None) and self.type in ("str", "bool"):
            raise ValueError(f"'min'/'max' apply to numbers, not to type {self.type}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"'min' ({self.min:g}) is above 'max' ({self.max:g})")
        return self


def _check_field_source(value: Any) -> str:
    if isinstance(value, str) and value in GATEWAY_FIELDS:
        return value
    return _check_tag_ref(value)


FieldSource = Annotated[
    str,
    PlainValidator(_check_field_source),
    WithJsonSchema({"type": "string", "description": "source.tag, or gateway.id|site|area|line"}),
]


class EventConfig(StrictModel):
    """A business event: when it happens, what it carries, what makes it unique."""

    type: EventType
    trigger: TriggerConfig
    key: list[FieldName] = Field(
        min_length=1, description="Fields whose values make the event unique (its id)."
    )
    fields: dict[FieldName, FieldSource] = Field(
        min_length=1, description="Field name -> tag whose value at the trigger it takes."
    )
    contract: dict[FieldName, FieldRule] = Field(default_factory=dict)
    description: str | None = None

    @model_validator(mode="after")
    def _check_names(self) -> EventConfig:
        for name in self.key:
            if name not in self.fields:
                raise ValueError(
                    f"key field '{name}' is not in 'fields' ({', '.join(self.fields)})"
                )
        if len(set(self.key)) != len(self.key):
            raise ValueError("a key field is listed twice")
        for name in self.contract:
            if name not in self.fields:
                raise ValueError(
                    f"contract field '{name}' is not in 'fields' ({', '.join(self.fields)})"
                )
        return self

    def tag_refs(self) -> list[str]:
        """Every source.tag the event reads (trigger and fields)."""
        refs = [ref for ref in self.fields.values() if ref not in GATEWAY_FIELDS]
        watched = self.trigger.watched
        if watched is not None:
            refs.append(watched)
        condition = self.trigger.condition
        if condition is not None:
            refs.extend(condition.tags)
        return list(dict.fromkeys(refs))


class SequenceConfig(StrictModel):
    """Allowed transitions of a status tag; any other change is a sequence violation.

    A machine that cycles needs a way out of every state (`completed: [created]`); a state
    the tag rests in for good is listed under `final`, else `edgegw check` warns about it.
    """

    tag: TagRef
    transitions: dict[str, list[str]] = Field(
        min_length=1, description="state -> the states it may go to next."
    )
    final: list[str] = Field(
        default_factory=list,
        description="States with no way out on purpose (the tag rests there for good); "
        "`edgegw check` warns about any other state that has no transition.",
    )
    min_state: Duration | None = Field(
        default=None,
        description="The shortest time the PLC stays in a state, e.g. '2s'; `edgegw check` "
        "warns when the tag is read less often (a state between two reads is missed and the "
        "next change looks like a disallowed transition).",
    )

    @model_validator(mode="after")
    def _check_min_state(self) -> SequenceConfig:
        if self.min_state is not None and self.min_state <= 0:
            raise ValueError("'min_state' must be longer than 0")
        return self
