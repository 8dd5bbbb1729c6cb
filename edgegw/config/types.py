"""Value types shared by every config section: durations, names, base model."""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    WithJsonSchema,
    model_validator,
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """Turn '500ms', '1s', '5m', '2h', '7d' into seconds; a bare number is refused.

    A bare number is ambiguous (is `poll: 5` five seconds or five milliseconds?), so the
    unit is mandatory, as in ESPHome.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as '500ms' or '2s', got {value!r}")
    if isinstance(value, int | float):
        raise ValueError(f"'{value}' has no time unit; did you mean '{value}s' or '{value}ms'?")
    if not isinstance(value, str):
        raise ValueError(f"expected a duration such as '500ms' or '2s', got {value!r}")
    match = _DURATION.match(value)
    if match is None:
        bare = value.strip()
        if re.fullmatch(r"\d+(?:\.\d+)?", bare):
            raise ValueError(f"'{bare}' has no time unit; did you mean '{bare}s' or '{bare}ms'?")
        raise ValueError(
            f"'{value}' is not a duration; use a number and a unit: ms, s, m, h, d (e.g. '500ms')"
        )
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def format_duration(seconds: float) -> str:
    for unit in ("d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds * 1000:g}ms"


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^\d+(\.\d+)?(ms|s|m|h|d)$",
            "description": "A duration with its unit: ms, s, m, h or d, e.g. '500ms', '7d'.",
        }
    ),
]
"""Seconds, written in YAML with a unit."""


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$")
_SIZE_UNITS = {
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "TiB": 1024**4,
}


def parse_size(value: Any) -> int:
    """'500MB', '2GiB', '1048576B' -> bytes; a bare number is refused, like durations."""
    if isinstance(value, str) and (match := _SIZE.match(value)):
        size = int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])
        if size < 1_000_000:
            raise ValueError(f"'{value}' is too small for an outbox; give at least 1MB")
        return size
    raise ValueError(
        f"expected a size with its unit such as '500MB' or '2GiB' "
        f"(B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), got {value!r}"
    )


ByteSize = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema({"type": "string", "pattern": r"^\d+(\.\d+)?(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$"}),
]
"""Bytes, written in YAML with a unit."""


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, models are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
_NAME_RULE = "ASCII letters, digits, '_' and '-', not starting with '-'"
_NAME_WHY = (
    "a name becomes an MQTT topic level, where '/', '+' and '#' are special, and events "
    "refer to tags as source.tag"
)
_VALUE_NAME_WHY = "a value name is published in place of the raw value and used in events"


def _character(char: str) -> str:
    if char == " ":
        return "a space"
    if char.isprintable():
        return f"'{char}'"
    return f"the character {char!r}"  # a tab, a line break: shown escaped


def _name_suggestion(value: str) -> str | None:
    """`'Temperatür 1'` -> `'Temperatur_1'`; None when nothing usable is left."""
    decomposed = unicodedata.normalize("NFKD", value)
    ascii_only = "".join(c for c in decomposed if not unicodedata.combining(c))
    suggestion = re.sub(r"[^A-Za-z0-9_-]+", "_", ascii_only).lstrip("-")
    if suggestion.strip("_") and len(suggestion) <= 64 and _NAME.fullmatch(suggestion):
        return suggestion
    return None


def name_problem(value: str, why: str = _NAME_WHY) -> str | None:
    """Why `value` cannot be a name, in words with the rule and its reason; None if it can."""
    if _NAME.fullmatch(value):
        return None
    rule = f"(names are {_NAME_RULE}: {why})"
    if not value:
        return f"a name must not be empty {rule}"
    bad = list(dict.fromkeys(c for c in value if not re.fullmatch(r"[A-Za-z0-9_-]", c)))
    if bad:
        listed = [_character(c) for c in bad[:5]] + (["more"] if len(bad) > 5 else [])
        words = listed[0] if len(listed) == 1 else ", ".join(listed[:-1]) + " and " + listed[-1]
        verb = "is" if len(listed) == 1 else "are"
        problem = f"{value!r}: {words} {verb} not allowed in a name"
    else:
        problem = f"{value!r}: a name must not start with '-'"
    suggestion = _name_suggestion(value)
    hint = f"; did you mean '{suggestion}'?" if suggestion else ""
    return f"{problem}{hint} {rule}"


def _check_name(value: str) -> str:
    problem = name_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _check_value_name(value: str) -> str:
    problem = name_problem(value, _VALUE_NAME_WHY)
    if problem is not None:
        raise ValueError(problem)
    return value


_NAME_SCHEMA = {"pattern": f"^{_NAME.pattern}$"}

Name = Annotated[
    str,
    Field(
        max_length=64,
        description="Letters, digits, '_' and '-': it becomes an MQTT topic level.",
        json_schema_extra=_NAME_SCHEMA,
    ),
    AfterValidator(_check_name),
]
"""Gateway, source, device and tag names: they become MQTT topic levels."""

ValueName = Annotated[
    str,
    Field(
        max_length=64,
        description="Letters, digits, '_' and '-': published in place of the raw value.",
        json_schema_extra=_NAME_SCHEMA,
    ),
    AfterValidator(_check_value_name),
]
"""The name of a raw value (`values: {0: idle}`)."""


def parse_deadband(value: float | str) -> tuple[float, bool]:
    """Return (size, is_percent) for `0.5` or `'2%'`."""
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("%"):
            try:
                size = float(text[:-1])
            except ValueError:
                raise ValueError(f"deadband '{value}' is not a number or a percentage") from None
            if size < 0:
                raise ValueError(f"deadband must not be negative (got {value})")
            return size, True
        try:
            size = float(text)
        except ValueError:
            raise ValueError(
                f"deadband '{value}' is not a number or a percentage such as '2%'"
            ) from None
        return size, False
    if value < 0:
        raise ValueError(f"deadband must not be negative (got {value})")
    return float(value), False


def check_readable_file(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a file path, got {value!r}")
    if not os.path.isfile(value):
        raise ValueError(f"file {value} does not exist (or is not a regular file)")
    if not os.access(value, os.R_OK):
        raise ValueError(f"file {value} is not readable by this user")
    return value


ReadableFile = Annotated[
    str, PlainValidator(check_readable_file), WithJsonSchema({"type": "string"})
]
"""A path to a file this user can read."""


def _check_credential_file(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a file path, got {value!r}")
    if not os.path.isabs(value):
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise ValueError(
                f"'{value}' is a relative path, which is looked up in $CREDENTIALS_DIRECTORY "
                "(systemd LoadCredential=), and that is not set; write an absolute path"
            )
        value = os.path.join(directory, value)
    return check_readable_file(value)


CredentialFile = Annotated[
    str,
    PlainValidator(_check_credential_file),
    WithJsonSchema(
        {
            "type": "string",
            "description": "An absolute path, or a name in $CREDENTIALS_DIRECTORY "
            "(systemd LoadCredential=).",
        }
    ),
]
"""A file holding a secret: absolute, or a credential name under $CREDENTIALS_DIRECTORY."""


def read_secret(path: str) -> str:
    """The secret in a credential file, without the newline editors add."""
    from edgegw.errors import EdgeGwError

    try:
        return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise EdgeGwError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise EdgeGwError(f"{path} is not UTF-8 text") from None


def check_url_port(value: str) -> None:
    """Raise ValueError naming `value` when its port is not a number in 1..65535."""
    from urllib.parse import urlsplit

    try:
        urlsplit(value).port  # noqa: B018 - raises on a port that is out of range or not a number
    except ValueError:
        raise ValueError(f"'{value}' has an invalid port; it must be 1..65535") from None


class TagBase(StrictModel):
    """What every tag has, whatever its protocol: a name and how it is reported."""

    name: Name
    unit: str | None = Field(default=None, max_length=32, description="Engineering unit.")
    deadband: float | str | None = Field(
        default=None,
        description="Report-by-exception: publish only when the value moved by more than this "
        "(absolute, or a percentage of the last published value such as '2%').",
    )
    heartbeat: Duration | None = Field(
        default=None, description="Publish an unchanged value again after this long."
    )
    description: str | None = None
    values: dict[int | bool | str, ValueName] | None = Field(
        default=None,
        min_length=1,
        description="Raw value -> name, e.g. {0: idle, 1: running}; the name is published and "
        "a raw value not listed is a contract violation.",
    )
    min: float | None = Field(default=None, description="Lowest valid value (contract).")
    max: float | None = Field(default=None, description="Highest valid value (contract).")

    @model_validator(mode="after")
    def _check_contract(self) -> TagBase:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"'min' ({self.min:g}) is above 'max' ({self.max:g})")
        return self
