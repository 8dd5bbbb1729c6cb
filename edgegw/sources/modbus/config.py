"""Configuration of a Modbus source: the `protocol: modbus` entries under `sources:`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, PlainSerializer, PlainValidator, WithJsonSchema, model_validator

from edgegw.config.diagnostics import did_you_mean
from edgegw.config.types import (
    Duration,
    Name,
    StrictModel,
    TagBase,
    check_url_port,
    parse_deadband,
)

TABLES = ("holding", "input", "coil", "discrete")
Table = Literal["holding", "input", "coil", "discrete"]
REGISTER_TABLES = frozenset({"holding", "input"})
BIT_TABLES = frozenset({"coil", "discrete"})

DataType = Literal[
    "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "bool", "string"
]
REGISTER_COUNT: dict[str, int] = {
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "int64": 4,
    "uint64": 4,
    "float64": 4,
    "bool": 1,
}
INTEGER_TYPES = frozenset({"int16", "uint16", "int32", "uint32", "int64", "uint64"})
Order = Literal["big", "little"]

MAX_REGISTERS_PER_READ = 125
MAX_BITS_PER_READ = 2000


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed `table:offset[.bit]` address; offsets are 0-based protocol addresses."""

    table: Table
    offset: int
    bit: int | None = None

    def __str__(self) -> str:
        suffix = "" if self.bit is None else f".{self.bit}"
        return f"{self.table}:{self.offset}{suffix}"


_ADDRESS = re.compile(r"^(?P<table>[a-z_]+):(?P<offset>\d+)(?:\.(?P<bit>\d+))?$")


def parse_address(value: Any) -> Address:
    if isinstance(value, Address):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected an address such as 'holding:100' or 'coil:3', got {value!r}")
    match = _ADDRESS.match(value.strip())
    if match is None:
        raise ValueError(
            f"'{value}' is not an address; write TABLE:OFFSET or TABLE:OFFSET.BIT with TABLE "
            f"one of {', '.join(TABLES)} (e.g. 'holding:100', 'holding:10.3', 'coil:3')"
        )
    table = match.group("table")
    if table not in TABLES:
        hint = did_you_mean(table, TABLES)
        suggestion = f"; did you mean '{hint}'?" if hint else ""
        raise ValueError(
            f"unknown register table '{table}'{suggestion} (one of: {', '.join(TABLES)})"
        )
    offset = int(match.group("offset"))
    if offset > 65535:
        kind = "register" if table in REGISTER_TABLES else "bit"
        raise ValueError(f"{table} {kind} offset must be 0..65535 (got {offset})")
    bit_text = match.group("bit")
    bit = None if bit_text is None else int(bit_text)
    if bit is not None:
        if table in BIT_TABLES:
            raise ValueError(f"'{value}': a {table} is a single bit already; drop '.{bit}'")
        if bit > 15:
            raise ValueError(f"bit number must be 0..15 in a 16-bit register (got {bit})")
    return Address(table, offset, bit)  # type: ignore[arg-type]


AddressField = Annotated[
    Address,
    PlainValidator(parse_address),
    PlainSerializer(str, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^(holding|input|coil|discrete):\d+(\.\d+)?$",
            "description": "TABLE:OFFSET or TABLE:OFFSET.BIT, 0-based, e.g. 'holding:10.3'.",
        }
    ),
]


class ModbusTag(TagBase):
    """One value read from the device."""

    address: AddressField
    type: DataType = Field(description="How the registers are decoded.")
    byte_order: Order | None = Field(
        default=None, description="Byte order inside each 16-bit register; default: the source's."
    )
    word_order: Order | None = Field(
        default=None,
        description="Order of the 16-bit registers of a 32/64-bit value; big = high word first.",
    )
    length: int | None = Field(
        default=None, ge=1, le=MAX_REGISTERS_PER_READ, description="string: length in registers."
    )
    scale: float | None = Field(default=None, description="value = raw * scale + offset.")
    offset: float | None = Field(default=None, description="value = raw * scale + offset.")

    @model_validator(mode="after")
    def _check_type_fits_address(self) -> ModbusTag:
        table, bit = self.address.table, self.address.bit
        if table in BIT_TABLES and self.type != "bool":
            raise ValueError(
                f"'{self.address}' is a single bit: type must be bool (got {self.type})"
            )
        if bit is not None and self.type != "bool":
            raise ValueError(
                f"'{self.address}' names bit {bit} of a register: "
                f"type must be bool (got {self.type})"
            )
        if self.type == "string" and self.length is None:
            raise ValueError("type string needs 'length' (in registers, 2 characters each)")
        if self.type != "string" and self.length is not None:
            raise ValueError(f"'length' applies to type string only (this tag is {self.type})")
        if (self.scale is not None or self.offset is not None) and self.type in ("bool", "string"):
            raise ValueError(f"'scale' and 'offset' apply to numbers, not to type {self.type}")
        if self.deadband is not None:
            parse_deadband(self.deadband)
            if self.type in ("bool", "string"):
                raise ValueError(f"'deadband' applies to numbers, not to type {self.type}")
        last = self.address.offset + self.register_count - 1
        if table in REGISTER_TABLES and last > 65535:
            raise ValueError(
                f"{self.type} at {self.address} needs {self.register_count} registers and "
                f"runs past 65535 (last would be {last})"
            )
        return self

    @property
    def register_count(self) -> int:
        """Registers (or bits, for coil/discrete) this tag occupies."""
        if self.address.table in BIT_TABLES:
            return 1
        if self.type == "string":
            assert self.length is not None
            return self.length
        return REGISTER_COUNT[self.type]


def _check_modbus_url(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a URL such as 'tcp://192.168.0.10:502', got {value!r}")
    parts = urlsplit(value)
    if parts.scheme != "tcp":
        raise ValueError(
            f"unsupported scheme '{parts.scheme or value}'; this version reads Modbus TCP: "
            "tcp://HOST[:PORT] (port 502 if omitted)"
        )
    if not parts.hostname:
        raise ValueError(f"'{value}' has no host; write tcp://HOST[:PORT]")
    check_url_port(value)
    return value


ModbusUrl = Annotated[
    str,
    PlainValidator(_check_modbus_url),
    WithJsonSchema({"type": "string", "pattern": r"^tcp://", "examples": ["tcp://10.0.0.5:502"]}),
]


class ModbusSourceConfig(StrictModel):
    """A Modbus TCP device, polled at a fixed interval."""

    name: Name
    protocol: Literal["modbus"]
    url: ModbusUrl
    unit: int = Field(default=1, ge=0, le=255, description="Modbus unit (slave/device) id.")
    poll: Duration = Field(default=1.0, description="Poll interval, e.g. '500ms'.")
    timeout: Duration = Field(default=1.0, description="How long to wait for one reply.")
    byte_order: Order = Field(default="big", description="Default byte order of the tags.")
    word_order: Order = Field(default="big", description="Default word order of the tags.")
    max_gap: int = Field(
        default=16,
        ge=0,
        le=MAX_REGISTERS_PER_READ - 1,
        description="Registers that may lie unused between two tags read in one request; "
        "0 merges only adjacent tags. Unused bits may be 16 times as many.",
    )
    heartbeat: Duration | None = Field(
        default=None, description="Default heartbeat of the tags: republish unchanged values."
    )
    tags: list[ModbusTag] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_intervals(self) -> ModbusSourceConfig:
        if self.poll <= 0:
            raise ValueError("'poll' must be longer than 0")
        if self.timeout <= 0:
            raise ValueError("'timeout' must be longer than 0")
        return self

    @property
    def host(self) -> str:
        host = urlsplit(self.url).hostname
        assert host is not None
        return host

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 502
