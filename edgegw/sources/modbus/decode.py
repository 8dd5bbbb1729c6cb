"""Registers to values: every type, byte order and word order, over whole blocks.

Conventions (the usual "ABCD" family): `byte_order` is the order of the two bytes inside each
16-bit register (big = high byte first, as the Modbus spec sends them); `word_order` is the
order of the registers of a 32/64-bit value (big = most significant register first).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from edgegw.floats import shortest_float32
from edgegw.reading import Value

_FORMATS = {
    "int16": ">h",
    "uint16": ">H",
    "int32": ">i",
    "uint32": ">I",
    "float32": ">f",
    "int64": ">q",
    "uint64": ">Q",
    "float64": ">d",
}


class DecodeError(ValueError):
    """The registers do not hold a valid value of the declared type (NaN, bad text...)."""


@dataclass(frozen=True, slots=True)
class RegisterLayout:
    """How one tag sits in a block of registers."""

    type: str
    index: int  # first register of the tag inside the block
    count: int  # registers
    byte_swap: bool  # byte_order little
    word_swap: bool  # word_order little
    bit: int | None = None
    scale: float | None = None
    offset: float | None = None


def registers_to_bytes(registers: Sequence[int]) -> bytes:
    """The block as the device sent it: each register big-endian."""
    return struct.pack(f">{len(registers)}H", *registers)


def _ordered(raw: bytes, layout: RegisterLayout) -> bytes:
    if layout.byte_swap:
        swapped = bytearray(raw)
        swapped[0::2], swapped[1::2] = raw[1::2], raw[0::2]
        raw = bytes(swapped)
    if layout.word_swap and layout.count > 1:
        raw = b"".join(raw[i : i + 2] for i in range(len(raw) - 2, -2, -2))
    return raw


def decode_register_value(block: bytes, layout: RegisterLayout) -> Value:
    """Decode one tag from a block of register bytes; raises DecodeError for invalid data."""
    start = layout.index * 2
    raw = block[start : start + layout.count * 2]
    kind = layout.type
    if kind == "bool":
        register: int = struct.unpack(">H", _ordered(raw, layout))[0]
        if layout.bit is None:
            return register != 0
        return bool((register >> layout.bit) & 1)
    if kind == "string":
        return _decode_text(_ordered_text(raw, layout.byte_swap))
    number: int | float = struct.unpack(_FORMATS[kind], _ordered(raw, layout))[0]
    if isinstance(number, float):
        if not math.isfinite(number):
            raise DecodeError(f"{kind} is {number} (not a finite number)")
        if kind == "float32":
            number = shortest_float32(number)
    scaled: int | float = apply_scale(number, layout.scale, layout.offset)
    return scaled


class BlockDecoder:
    """Decodes all the register tags of one read block.

    Tags stored the plain way (big-endian bytes, big-endian words, not a bit, not text) that
    do not overlap are unpacked together by one precompiled `struct` call over the whole
    block; the others go through `decode_register_value` one by one. Values come back in the
    order of `layouts`, each either a value or the DecodeError that makes it bad.
    """

    def __init__(self, layouts: Sequence[RegisterLayout]) -> None:
        self._layouts = tuple(layouts)
        fmt = [">"]
        end = 0  # first register after the last plain tag taken
        self._plain: list[int] = []  # positions in `layouts` unpacked by `_struct`
        self._one_by_one: list[int] = []
        for position in sorted(range(len(layouts)), key=lambda p: layouts[p].index):
            layout = layouts[position]
            if _is_plain(layout) and layout.index >= end:
                if layout.index > end:
                    fmt.append(f"{2 * (layout.index - end)}x")
                fmt.append(_FORMATS[layout.type][1])
                end = layout.index + layout.count
                self._plain.append(position)
            else:
                self._one_by_one.append(position)
        self._struct = struct.Struct("".join(fmt))
        self._needs_finishing = [
            layouts[p].type.startswith("float")
            or layouts[p].scale is not None
            or layouts[p].offset is not None
            for p in self._plain
        ]

    def decode(self, block: bytes) -> list[Value | DecodeError]:
        out: list[Value | DecodeError] = [None] * len(self._layouts)
        raw = self._struct.unpack_from(block)
        for position, number, finish in zip(self._plain, raw, self._needs_finishing, strict=True):
            out[position] = _finished(number, self._layouts[position]) if finish else number
        for position in self._one_by_one:
            try:
                out[position] = decode_register_value(block, self._layouts[position])
            except DecodeError as exc:
                out[position] = exc
        return out


def _is_plain(layout: RegisterLayout) -> bool:
    return (
        layout.type in _FORMATS
        and layout.bit is None
        and not layout.byte_swap
        and (layout.count == 1 or not layout.word_swap)
    )


def _finished(number: int | float, layout: RegisterLayout) -> Value | DecodeError:
    """Float checks and scaling of a number unpacked from the block."""
    try:
        if isinstance(number, float):
            if not math.isfinite(number):
                raise DecodeError(f"{layout.type} is {number} (not a finite number)")
            if layout.type == "float32":
                number = shortest_float32(number)
        return apply_scale(number, layout.scale, layout.offset)
    except DecodeError as exc:
        return exc


def _ordered_text(raw: bytes, byte_swap: bool) -> bytes:
    # Text is a sequence of characters, two per register: word order does not apply.
    if not byte_swap:
        return raw
    swapped = bytearray(raw)
    swapped[0::2], swapped[1::2] = raw[1::2], raw[0::2]
    return bytes(swapped)


def _decode_text(raw: bytes) -> str:
    text = raw.split(b"\x00", 1)[0].rstrip(b" ")
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"string is not valid UTF-8 text at byte {exc.start}") from None


def apply_scale(number: int | float, scale: float | None, offset: float | None) -> int | float:
    """`raw * scale + offset`; an integer with neither stays an integer.

    The result is rounded to 12 significant digits so that binary noise of the
    multiplication (-38 * 0.1 = -3.8000000000000003) does not reach the consumer; no
    PLC measures to more than 12 digits.
    """
    if scale is None and offset is None:
        return number
    value = number * (1.0 if scale is None else scale) + (0.0 if offset is None else offset)
    if not math.isfinite(value):
        raise DecodeError(f"scaled value is {value} (not a finite number)")
    return float(f"{value:.12g}")
