"""Configuration of a Modbus source: the `protocol: modbus` entries under `sources:`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args
from urllib.parse import parse_qsl, urlsplit

from pydantic import (
    BeforeValidator,
    Field,
    PlainSerializer,
    PlainValidator,
    WithJsonSchema,
    model_validator,
)

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
DATA_TYPES: tuple[str, ...] = get_args(DataType)
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

_MODICON_TABLES: dict[str, Table] = {"4": "holding", "3": "input", "0": "coil", "1": "discrete"}


def _modicon_hint(shown: str, digits: str) -> str | None:
    """Words for a Modicon reference (40001 = the first holding register), or None.

    PLC programmers and device manuals number registers the Modicon way: a leading digit for
    the table and a number counted from 1 (5 digits up to 9999, 6 digits up to 65536); the
    protocol, and edgegw, count offsets from 0. Guessing it silently would read the wrong
    register whenever the guess is wrong, so this is an error that names the right address.
    """
    if len(digits) not in (5, 6) or digits[0] not in _MODICON_TABLES:
        return None
    table = _MODICON_TABLES[digits[0]]
    number = int(digits[1:])
    first = "0" * (len(digits) - 2) + "1"
    if number == 0:
        return (
            f"{shown} looks like a Modicon register number, but those count from 1: "
            f"{digits[0]}{first} is '{table}:0'"
        )
    if number > 65536:
        return (
            f"{shown} looks like a Modicon register number, but {digits[0]}{'x' * 5} goes up "
            f"to {digits[0]}65536 ('{table}:65535')"
        )
    x = "x" * (len(digits) - 1)
    return (
        f"{shown} looks like a Modicon register number; did you mean '{table}:{number - 1}'? "
        f"(4{x} = holding, 3{x} = input, 0{x} = coil, 1{x} = discrete; the number after the "
        "leading digit counts from 1, edgegw's offsets from 0)"
    )


def _number_as_address(value: int | str) -> str:
    digits = str(value).strip()
    if isinstance(value, int):
        shown = digits
    else:
        shown = repr(value) if len(value) <= 40 else repr(value[:37]) + "…"
    hint = _modicon_hint(shown, digits)
    if hint is not None:
        return hint
    example = int(digits) if len(digits) <= 5 and int(digits) <= 65535 else 100
    return (
        f"{shown} is a bare number, not an address; write TABLE:OFFSET with TABLE one of "
        f"{', '.join(TABLES)} (e.g. 'holding:{example}'; offsets count from 0)"
    )


def parse_address(value: Any) -> Address:
    if isinstance(value, Address):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**9:
        raise ValueError(_number_as_address(value))
    if not isinstance(value, str):
        raise ValueError(f"expected an address such as 'holding:100' or 'coil:3', got {value!r}")
    if value.strip().isascii() and value.strip().isdigit():
        raise ValueError(_number_as_address(value))
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


_IEC_TYPES: dict[str, tuple[str | None, str]] = {
    "BOOL": ("bool", "one bit"),
    "SINT": (None, "an 8-bit signed integer"),
    "USINT": (None, "an 8-bit unsigned integer"),
    "BYTE": (None, "8 bits"),
    "INT": ("int16", "a 16-bit signed integer; DINT, 32-bit, is 'int32'"),
    "UINT": ("uint16", "a 16-bit unsigned integer; UDINT, 32-bit, is 'uint32'"),
    "WORD": ("uint16", "16 bits"),
    "DINT": ("int32", "a 32-bit signed integer"),
    "UDINT": ("uint32", "a 32-bit unsigned integer"),
    "DWORD": ("uint32", "32 bits"),
    "LINT": ("int64", "a 64-bit signed integer"),
    "ULINT": ("uint64", "a 64-bit unsigned integer"),
    "LWORD": ("uint64", "64 bits"),
    "REAL": ("float32", "a 32-bit float"),
    "LREAL": ("float64", "a 64-bit float"),
}
"""IEC 61131-3 elementary types, as PLC programmers write them: (edgegw's type, what it is)."""

_SAY_WHICH = "? Say which: they read different registers"
_OTHER_TYPE_WORDS: dict[str, str] = {
    "FLOAT": "did you mean 'float32' (IEC 61131-3 REAL, 2 registers) or 'float64' "
    "(LREAL, 4 registers)" + _SAY_WHICH,
    "DOUBLE": "did you mean 'float64'? (a double is a 64-bit float, IEC 61131-3 LREAL)",
    "SINGLE": "did you mean 'float32'? (a single is a 32-bit float, IEC 61131-3 REAL)",
    "SHORT": "did you mean 'int16'? (a short is a 16-bit signed integer, IEC 61131-3 INT)",
    "USHORT": "did you mean 'uint16'? (an unsigned short is 16 bits, IEC 61131-3 UINT)",
    "INTEGER": "did you mean 'int16' (IEC 61131-3 INT, 1 register), 'int32' (DINT, 2 registers) "
    "or 'int64' (LINT, 4 registers)" + _SAY_WHICH,
    "LONG": "did you mean 'int32' (IEC 61131-3 DINT, 2 registers) or 'int64' (LINT, 4 "
    "registers)" + _SAY_WHICH,
    "ULONG": "did you mean 'uint32' (IEC 61131-3 UDINT, 2 registers) or 'uint64' (ULINT, 4 "
    "registers)" + _SAY_WHICH,
    "INT8": "edgegw has no 8-bit type: a Modbus register holds 16 bits; if the PLC maps the "
    "value to a register of its own, read it as int16",
    "UINT8": "edgegw has no 8-bit type: a Modbus register holds 16 bits; if the PLC maps the "
    "value to a register of its own, read it as uint16",
}
"""Other type words that a did-you-mean by spelling would get wrong (`int` is not int64)."""


def plc_type_hint(word: str) -> str | None:
    """The error for a type written as a PLC or C programmer would; None for other words.

    Spelling similarity guesses wrong here (`int` is closest to 'int64', `float` to
    'float64', `DINT` to 'int64'), and a wrong type reads the wrong registers, so these words
    get their meaning, not their nearest spelling. They stay errors: the type decides which
    registers are read, and the file should say it in edgegw's words.
    """
    if word in DATA_TYPES:
        return None
    key = word.strip().upper()
    if key in _IEC_TYPES:
        ours, what = _IEC_TYPES[key]
        if ours is None:
            same_size = "int16" if key == "SINT" else "uint16"
            return (
                f"unknown value {word!r}; edgegw has no 8-bit type (IEC 61131-3 {key} is {what}) "
                "because a Modbus register holds 16 bits; if the PLC maps it to a register of "
                f"its own, read it as {same_size}"
            )
        return f"unknown value {word!r}; did you mean '{ours}'? (IEC 61131-3 {key} is {what})"
    if key in _OTHER_TYPE_WORDS:
        return f"unknown value {word!r}; {_OTHER_TYPE_WORDS[key]}"
    return None


def _check_type_word(value: Any) -> Any:
    if isinstance(value, str):
        hint = plc_type_hint(value)
        if hint is not None:
            raise ValueError(hint)
    return value


TypeField = Annotated[DataType, BeforeValidator(_check_type_word)]


class ModbusTag(TagBase):
    """One value read from the device."""

    address: AddressField
    type: TypeField = Field(description="How the registers are decoded.")
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


BAUD_RATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400)
SCHEMES = ("tcp", "rtu", "rtu-over-tcp")
_SERIAL_DEFAULTS = {"baudrate": "19200", "parity": "E", "stopbits": "1", "bytesize": "8"}
_SERIAL_CHOICES = {
    "baudrate": tuple(str(rate) for rate in BAUD_RATES),
    "parity": ("N", "E", "O"),
    "stopbits": ("1", "2"),
    "bytesize": ("8",),  # RTU frames are 8 data bits; 7 is Modbus ASCII
}


@dataclass(frozen=True, slots=True)
class SerialSettings:
    """The line settings of an rtu:// URL."""

    path: str
    baudrate: int = 19200
    parity: Literal["N", "E", "O"] = "E"  # the Modbus spec's default: even parity
    stopbits: int = 1
    bytesize: int = 8

    @property
    def char_bits(self) -> int:
        """Bits on the wire per character: start, data, parity, stop."""
        return 1 + self.bytesize + (self.parity != "N") + self.stopbits

    def char_time(self) -> float:
        """Seconds one character takes on the wire."""
        return self.char_bits / self.baudrate

    def frame_gap(self) -> float:
        """The 3.5-character silence that ends an RTU frame (1.75 ms above 19200 baud)."""
        if self.baudrate > 19200:
            return 0.00175
        return 3.5 * self.char_bits / self.baudrate


def serial_settings(url: str) -> SerialSettings:
    parts = urlsplit(url)
    params = {**_SERIAL_DEFAULTS, **dict(parse_qsl(parts.query))}
    return SerialSettings(
        path=parts.path,
        baudrate=int(params["baudrate"]),
        parity=params["parity"].upper(),  # type: ignore[arg-type]
        stopbits=int(params["stopbits"]),
        bytesize=int(params["bytesize"]),
    )


def _check_modbus_url(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a URL such as 'tcp://192.168.0.10:502', got {value!r}")
    parts = urlsplit(value)
    if parts.scheme not in SCHEMES:
        raise ValueError(
            f"unsupported scheme '{parts.scheme or value}'; write tcp://HOST[:PORT] (Modbus TCP, "
            "port 502 if omitted), rtu:///dev/ttyUSB0?baudrate=19200&parity=E (serial RTU) or "
            "rtu-over-tcp://HOST:PORT (RTU frames over a TCP socket)"
        )
    if parts.scheme == "rtu":
        return _check_serial_url(value)
    if not parts.hostname:
        raise ValueError(f"'{value}' has no host; write {parts.scheme}://HOST[:PORT]")
    check_url_port(value)
    if parts.scheme == "rtu-over-tcp" and parts.port is None:
        raise ValueError(f"'{value}' has no port; write rtu-over-tcp://HOST:PORT")
    return value


def _check_serial_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.netloc or not parts.path.startswith("/"):
        raise ValueError(
            f"'{value}' names no serial device; write rtu:///dev/ttyUSB0 (three slashes: the "
            "device path follows rtu://)"
        )
    for key, given in parse_qsl(parts.query, keep_blank_values=True):
        choices = _SERIAL_CHOICES.get(key)
        if choices is None:
            hint = did_you_mean(key, tuple(_SERIAL_CHOICES))
            suggestion = f"; did you mean '{hint}'?" if hint else ""
            raise ValueError(
                f"unknown serial setting '{key}'{suggestion} (one of: {', '.join(_SERIAL_CHOICES)})"
            )
        if given.upper() not in choices:
            raise ValueError(f"{key}={given} is not valid; one of: {', '.join(choices)}")
    return value


ModbusUrl = Annotated[
    str,
    PlainValidator(_check_modbus_url),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^(tcp|rtu|rtu-over-tcp)://",
            "examples": [
                "tcp://10.0.0.5:502",
                "rtu:///dev/ttyUSB0?baudrate=19200&parity=E&stopbits=1&bytesize=8",
                "rtu-over-tcp://10.0.0.7:4001",
            ],
        }
    ),
]


class ModbusDevice(StrictModel):
    """One unit id on a line (an RS-485 bus, or a TCP-to-RTU gateway)."""

    unit: int = Field(ge=0, le=255, description="Modbus unit (slave) id on the line.")
    name: Name = Field(description="Unique among sources and devices: the {source} of its tags.")
    poll: Duration | None = Field(default=None, description="Default: the line's poll.")
    timeout: Duration | None = Field(default=None, description="Default: the line's timeout.")
    byte_order: Order | None = Field(default=None, description="Default: the line's.")
    word_order: Order | None = Field(default=None, description="Default: the line's.")
    heartbeat: Duration | None = Field(default=None, description="Default: the line's.")
    tags: list[ModbusTag] = Field(min_length=1)


class BreakerSection(StrictModel):
    """Per-device circuit breaker: a dead device is asked rarely, so the bus keeps its rate."""

    failures: int = Field(
        default=3, ge=1, le=1000, description="Consecutive timeouts that open the breaker."
    )
    retry: Duration = Field(
        default=30.0, description="While open, the device is polled only this often."
    )


@dataclass(frozen=True, slots=True)
class DeviceView:
    """A device with every default filled in from its line (the flat form is one device)."""

    name: str
    unit: int
    poll: float
    timeout: float
    byte_order: Order
    word_order: Order
    max_gap: int
    heartbeat: float | None
    tags: list[ModbusTag]


class ModbusSourceConfig(StrictModel):
    """A Modbus device polled at a fixed interval, or a line of several (`devices:`)."""

    name: Name
    protocol: Literal["modbus"]
    url: ModbusUrl
    unit: int | None = Field(
        default=None, ge=0, le=255, description="Modbus unit (slave/device) id; default 1."
    )
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
    tags: list[ModbusTag] | None = Field(
        default=None, min_length=1, description="The tags of a single device (flat form)."
    )
    devices: list[ModbusDevice] | None = Field(
        default=None,
        min_length=1,
        description="Several unit ids on this line, each with its name, poll and tags.",
    )
    inter_frame_delay: Literal["auto"] | Duration = Field(
        default="auto",
        description="RTU: silence between frames; auto = 3.5 characters at the line's baud "
        "rate (1.75 ms above 19200).",
    )
    breaker: BreakerSection = Field(default_factory=BreakerSection)

    @model_validator(mode="after")
    def _check_intervals(self) -> ModbusSourceConfig:
        if self.poll <= 0:
            raise ValueError("'poll' must be longer than 0")
        if self.timeout <= 0:
            raise ValueError("'timeout' must be longer than 0")
        if self.tags is None and self.devices is None:
            raise ValueError("give 'tags' (one device) or 'devices' (several unit ids)")
        if self.tags is not None and self.devices is not None:
            raise ValueError(
                "give either 'tags' (one device) or 'devices' (several unit ids), not both"
            )
        if self.devices is not None:
            if self.unit is not None:
                raise ValueError("with 'devices', each device has its own 'unit'")
            seen_units: set[int] = set()
            seen_names: set[str] = set()
            for device in self.devices:
                if device.unit in seen_units:
                    raise ValueError(f"unit {device.unit} is on this line twice")
                if device.name in seen_names:
                    raise ValueError(f"device name '{device.name}' is on this line twice")
                seen_units.add(device.unit)
                seen_names.add(device.name)
                for field in ("poll", "timeout"):
                    value = getattr(device, field)
                    if value is not None and value <= 0:
                        raise ValueError(f"device {device.name}: '{field}' must be longer than 0")
        if self.transport in ("rtu", "rtu-over-tcp"):
            for view in self.device_views():
                if not 1 <= view.unit <= 247:
                    raise ValueError(
                        f"unit {view.unit} cannot be polled on a serial line (1..247; 0 is "
                        "broadcast)"
                    )
        elif self.inter_frame_delay != "auto" and self.transport == "tcp":
            raise ValueError("'inter_frame_delay' applies to rtu:// and rtu-over-tcp:// lines")
        return self

    @property
    def transport(self) -> Literal["tcp", "rtu", "rtu-over-tcp"]:
        return urlsplit(self.url).scheme  # type: ignore[return-value]

    @property
    def host(self) -> str:
        host = urlsplit(self.url).hostname
        assert host is not None
        return host

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 502

    @property
    def serial(self) -> SerialSettings:
        return serial_settings(self.url)

    @property
    def frame_gap(self) -> float:
        """Silence between two frames on this line, in seconds."""
        if self.inter_frame_delay != "auto":
            return float(self.inter_frame_delay)
        if self.transport == "rtu":
            return self.serial.frame_gap()
        return 0.00175  # rtu-over-tcp: the converter paces the line itself

    @property
    def multi_device(self) -> bool:
        """Read through the line scheduler (RTU, or several units), not the TCP driver."""
        return self.devices is not None or self.transport != "tcp"

    def device_views(self) -> list[DeviceView]:
        if self.devices is None:
            assert self.tags is not None
            return [
                DeviceView(
                    self.name,
                    1 if self.unit is None else self.unit,
                    self.poll,
                    self.timeout,
                    self.byte_order,
                    self.word_order,
                    self.max_gap,
                    self.heartbeat,
                    self.tags,
                )
            ]
        return [
            DeviceView(
                d.name,
                d.unit,
                d.poll if d.poll is not None else self.poll,
                d.timeout if d.timeout is not None else self.timeout,
                d.byte_order or self.byte_order,
                d.word_order or self.word_order,
                self.max_gap,
                d.heartbeat if d.heartbeat is not None else self.heartbeat,
                d.tags,
            )
            for d in self.devices
        ]

    def data_sources(self) -> list[DeviceView]:
        """What telemetry names as its sources: each device (one for the flat form)."""
        return self.device_views()
