"""Every type in every byte/word order, encoded independently of the decoder under test."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.client.mixin import ModbusClientMixin

from edgegw.sources.modbus.decode import (
    BlockDecoder,
    DecodeError,
    RegisterLayout,
    apply_scale,
    decode_register_value,
    registers_to_bytes,
)

FORMATS = {
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "float32": "f",
    "int64": "q",
    "uint64": "Q",
    "float64": "d",
}
SAMPLES = {
    "int16": [0, 1, -1, 32767, -32768, -1234],
    "uint16": [0, 1, 65535, 43981],
    "int32": [0, -1, 2**31 - 1, -(2**31), 123456789, -98765],
    "uint32": [0, 2**32 - 1, 0x12345678, 70000],
    "float32": [0.0, 1.5, -72.25, 3.4028234663852886e38, 1.401298464324817e-45],
    "int64": [0, -1, 2**63 - 1, -(2**63), 1234567890123],
    "uint64": [0, 2**64 - 1, 0x0102030405060708],
    "float64": [0.0, -1e-300, 6.02214076e23, 123456.789],
}


def encode(kind: str, value: float, byte_order: str, word_order: str) -> list[int]:
    """Registers as a device with this byte/word order would hold them."""
    raw = struct.pack(">" + FORMATS[kind], value)  # A B C D ... most significant first
    words = [raw[i : i + 2] for i in range(0, len(raw), 2)]
    if word_order == "little":
        words.reverse()
    if byte_order == "little":
        words = [w[::-1] for w in words]
    return [int.from_bytes(w, "big") for w in words]


def layout(
    kind: str, count: int, byte_order: str = "big", word_order: str = "big", **kw: object
) -> RegisterLayout:
    return RegisterLayout(
        type=kind,
        index=kw.pop("index", 0),  # type: ignore[arg-type]
        count=count,
        byte_swap=byte_order == "little",
        word_swap=word_order == "little",
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("word_order", ["big", "little"])
@pytest.mark.parametrize("byte_order", ["big", "little"])
@pytest.mark.parametrize("kind", list(FORMATS))
def test_every_type_and_order_round_trips(kind: str, byte_order: str, word_order: str) -> None:
    for value in SAMPLES[kind]:
        registers = encode(kind, value, byte_order, word_order)
        # Padding around the value proves the decoder honours its index in the block.
        block = registers_to_bytes([0xDEAD, *registers, 0xBEEF])
        got = decode_register_value(
            block, layout(kind, len(registers), byte_order, word_order, index=1)
        )
        if kind == "float32":
            assert isinstance(got, float)
            assert struct.pack(">f", got) == struct.pack(">f", value)
        elif kind == "float64":
            assert got == value
        else:
            assert got == value
            assert isinstance(got, int)


@pytest.mark.parametrize(
    ("kind", "pymodbus_type"),
    [
        ("int32", ModbusClientMixin.DATATYPE.INT32),
        ("uint32", ModbusClientMixin.DATATYPE.UINT32),
        ("float32", ModbusClientMixin.DATATYPE.FLOAT32),
        ("int64", ModbusClientMixin.DATATYPE.INT64),
        ("float64", ModbusClientMixin.DATATYPE.FLOAT64),
    ],
)
@pytest.mark.parametrize("word_order", ["big", "little"])
def test_agrees_with_pymodbus_encoder(kind: str, pymodbus_type: object, word_order: str) -> None:
    value = {
        "int32": -7654321,
        "uint32": 4000000000,
        "float32": -12.5,
        "int64": -(2**40) - 3,
        "float64": 2.5e-10,
    }[kind]
    registers = ModbusClientMixin.convert_to_registers(value, pymodbus_type, word_order=word_order)  # type: ignore[arg-type]
    got = decode_register_value(
        registers_to_bytes(registers), layout(kind, len(registers), word_order=word_order)
    )
    assert got == pytest.approx(value)


def test_bits_of_a_register() -> None:
    block = registers_to_bytes([0b0000_0000_0010_1000])
    assert decode_register_value(block, layout("bool", 1, bit=3)) is True
    assert decode_register_value(block, layout("bool", 1, bit=5)) is True
    assert decode_register_value(block, layout("bool", 1, bit=4)) is False
    assert decode_register_value(block, layout("bool", 1, bit=15)) is False
    # Byte order applies before the bit is taken: bit 3 of a byte-swapped register.
    swapped = registers_to_bytes([0b0000_1000_0000_0000])
    assert decode_register_value(swapped, layout("bool", 1, byte_order="little", bit=3)) is True


def test_bool_without_bit_is_register_not_zero() -> None:
    assert decode_register_value(registers_to_bytes([0]), layout("bool", 1)) is False
    assert decode_register_value(registers_to_bytes([7]), layout("bool", 1)) is True


def test_strings_strip_padding_and_honour_byte_order() -> None:
    text = b"RCP-A12\x00"
    registers = [int.from_bytes(text[i : i + 2], "big") for i in range(0, 8, 2)] + [0, 0]
    assert decode_register_value(registers_to_bytes(registers), layout("string", 6)) == "RCP-A12"
    swapped = [int.from_bytes(text[i : i + 2], "little") for i in range(0, 8, 2)]
    assert (
        decode_register_value(registers_to_bytes(swapped), layout("string", 4, byte_order="little"))
        == "RCP-A12"
    )
    spaces = [int.from_bytes(b"AB", "big"), int.from_bytes(b"  ", "big")]
    assert decode_register_value(registers_to_bytes(spaces), layout("string", 2)) == "AB"


def test_invalid_text_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="UTF-8"):
        decode_register_value(registers_to_bytes([0xFFFE]), layout("string", 1))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_refused(value: float) -> None:
    registers = encode("float32", value, "big", "big")
    with pytest.raises(DecodeError, match="not a finite number"):
        decode_register_value(registers_to_bytes(registers), layout("float32", 2))


def test_float32_is_shown_with_its_own_precision() -> None:
    registers = encode("float32", 725.3, "big", "big")
    assert decode_register_value(registers_to_bytes(registers), layout("float32", 2)) == 725.3
    assert apply_scale(-38, 0.1, None) == -3.8


def test_scale_and_offset() -> None:
    assert apply_scale(7253, 0.01, None) == pytest.approx(72.53)
    assert apply_scale(100, 2.0, -5.0) == 195.0
    assert apply_scale(12, None, 0.5) == 12.5
    kept = apply_scale(12, None, None)
    assert kept == 12
    assert isinstance(kept, int)
    registers = encode("float32", 725.5, "big", "little")
    got = decode_register_value(
        registers_to_bytes(registers), layout("float32", 2, word_order="little", scale=0.1)
    )
    assert got == pytest.approx(72.55)


_REGISTERS = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}
_REGISTERS |= {"int64": 4, "uint64": 4, "float64": 4, "bool": 1, "string": 3}


@st.composite
def layouts_and_block(draw: st.DrawFn) -> tuple[list[RegisterLayout], bytes]:
    size = draw(st.integers(1, 125))
    layouts = []
    for _ in range(draw(st.integers(1, 40))):
        kind = draw(st.sampled_from(sorted(_REGISTERS)))
        count = _REGISTERS[kind]
        if count > size:
            continue
        scaled = kind not in ("bool", "string") and draw(st.booleans())
        layouts.append(
            RegisterLayout(
                type=kind,
                index=draw(st.integers(0, size - count)),
                count=count,
                byte_swap=draw(st.booleans()),
                word_swap=draw(st.booleans()),
                bit=draw(st.none() | st.integers(0, 15)) if kind == "bool" else None,
                scale=draw(st.sampled_from([0.1, 2.0, -1.5])) if scaled else None,
                offset=draw(st.sampled_from([None, 10.0, -273.15])) if scaled else None,
            )
        )
    block = draw(st.binary(min_size=2 * size, max_size=2 * size))
    return layouts, block


@settings(max_examples=400, deadline=None)
@given(case=layouts_and_block())
def test_the_block_decoder_agrees_with_the_one_tag_decoder(
    case: tuple[list[RegisterLayout], bytes],
) -> None:
    # Overlapping tags, gaps, every order: the whole-block fast path changes nothing.
    layouts, block = case
    expected: list[object] = []
    for layout in layouts:
        try:
            expected.append(decode_register_value(block, layout))
        except DecodeError as exc:
            expected.append(str(exc))
    got = [str(v) if isinstance(v, DecodeError) else v for v in BlockDecoder(layouts).decode(block)]
    assert [(type(v), v) for v in got] == [(type(v), v) for v in expected]
