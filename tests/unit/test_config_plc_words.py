"""Config errors in the words PLC programmers use: Modicon addresses, IEC 61131-3 type names,
and the rules for names, against the real schema (issue 14, "Speak PLC").

Each of these is an error, never a silent guess: an address or a type decides which registers
are read, and a wrong guess reads plausible numbers from the wrong place.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgegw.config.loader import load_config
from edgegw.errors import ConfigError
from edgegw.sources.modbus.config import DATA_TYPES, plc_type_hint

HEAD = """\
gateway: {id: gw-1, site: s, area: a, line: l}
mqtt: {url: "mqtt://127.0.0.1:1883"}
sources:
  - name: press
    protocol: modbus
    url: tcp://127.0.0.1:5020
    tags:
"""
# The tag is line 8; `      - {name: t, address: ` puts the address value at col 28.


def issues(tmp_path: Path, tag: str) -> list[str]:
    path = tmp_path / "gw.yaml"
    path.write_text(HEAD + f"      - {tag}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert caught.value.lines()[-1].endswith("; gateway not started.")
    return [issue.removeprefix(f"{path}:") for issue in caught.value.lines()[:-1]]


def address_error(tmp_path: Path, address: str, kind: str = "uint16") -> str:
    [issue] = issues(tmp_path, f"{{name: t, address: {address}, type: {kind}}}")
    assert issue.startswith("8:28 sources[0].tags[0].address: "), issue
    return issue.removeprefix("8:28 sources[0].tags[0].address: ")


MODICON_5 = (
    "(4xxxx = holding, 3xxxx = input, 0xxxx = coil, 1xxxx = discrete; the number after the "
    "leading digit counts from 1, edgegw's offsets from 0)"
)
MODICON_6 = (
    "(4xxxxx = holding, 3xxxxx = input, 0xxxxx = coil, 1xxxxx = discrete; the number after the "
    "leading digit counts from 1, edgegw's offsets from 0)"
)


@pytest.mark.parametrize(
    ("address", "meant", "legend"),
    [
        ('"40002"', "holding:1", MODICON_5),
        ("40002", "holding:1", MODICON_5),  # unquoted: YAML reads an integer
        ('"40001"', "holding:0", MODICON_5),
        ('"49999"', "holding:9998", MODICON_5),
        ('"30001"', "input:0", MODICON_5),
        ("30010", "input:9", MODICON_5),
        ('"00001"', "coil:0", MODICON_5),
        ("00009", "coil:8", MODICON_5),  # not octal (a 9), so YAML keeps the string
        ('"10001"', "discrete:0", MODICON_5),
        ('"400001"', "holding:0", MODICON_6),
        ("400002", "holding:1", MODICON_6),
        ('"465536"', "holding:65535", MODICON_6),
        ('"300100"', "input:99", MODICON_6),
        ('"000017"', "coil:16", MODICON_6),
        ('"165536"', "discrete:65535", MODICON_6),
    ],
)
def test_a_modicon_number_says_which_address_it_means(
    tmp_path: Path, address: str, meant: str, legend: str
) -> None:
    is_text = address.startswith(('"', "0"))  # 00009 is no YAML integer
    shown = f"'{address.strip(chr(34))}'" if is_text else address
    assert address_error(tmp_path, address, "bool" if meant[0] in "cd" else "uint16") == (
        f"{shown} looks like a Modicon register number; did you mean '{meant}'? {legend}"
    )


def test_modicon_numbers_count_from_1(tmp_path: Path) -> None:
    assert address_error(tmp_path, '"40000"') == (
        "'40000' looks like a Modicon register number, but those count from 1: 40001 is 'holding:0'"
    )
    assert address_error(tmp_path, '"300000"') == (
        "'300000' looks like a Modicon register number, but those count from 1: 300001 is 'input:0'"
    )


def test_six_digit_modicon_numbers_end_at_65536(tmp_path: Path) -> None:
    assert address_error(tmp_path, '"465537"') == (
        "'465537' looks like a Modicon register number, but 4xxxxx goes up to 465536 "
        "('holding:65535')"
    )


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (
            "100",
            "100 is a bare number, not an address; write TABLE:OFFSET with TABLE one of "
            "holding, input, coil, discrete (e.g. 'holding:100'; offsets count from 0)",
        ),
        (
            '"4002"',
            "'4002' is a bare number, not an address; write TABLE:OFFSET with TABLE one of "
            "holding, input, coil, discrete (e.g. 'holding:4002'; offsets count from 0)",
        ),
        (
            # 2xxxx is no Modicon table; a number that large is no offset either.
            '"2000001"',
            "'2000001' is a bare number, not an address; write TABLE:OFFSET with TABLE one of "
            "holding, input, coil, discrete (e.g. 'holding:100'; offsets count from 0)",
        ),
    ],
)
def test_other_bare_numbers_ask_for_a_table(tmp_path: Path, address: str, expected: str) -> None:
    assert address_error(tmp_path, address) == expected


def test_a_long_bare_number_is_shown_clipped(tmp_path: Path) -> None:
    assert address_error(tmp_path, '"' + "7" * 60 + '"') == (
        f"'{'7' * 37}'… is a bare number, not an address; write TABLE:OFFSET with TABLE one of "
        "holding, input, coil, discrete (e.g. 'holding:100'; offsets count from 0)"
    )


def type_error(tmp_path: Path, kind: str) -> str:
    [issue] = issues(tmp_path, f'{{name: t, address: "holding:0", type: {kind}}}')
    # `      - {name: t, address: "holding:0", type: ` puts the type value at col 47.
    assert issue.startswith("8:47 sources[0].tags[0].type: "), issue
    return issue.removeprefix("8:47 sources[0].tags[0].type: ")


@pytest.mark.parametrize(
    ("word", "meant", "what"),
    [
        ("int", "int16", "INT is a 16-bit signed integer; DINT, 32-bit, is 'int32'"),
        ("INT", "int16", "INT is a 16-bit signed integer; DINT, 32-bit, is 'int32'"),
        ("UINT", "uint16", "UINT is a 16-bit unsigned integer; UDINT, 32-bit, is 'uint32'"),
        ("uint", "uint16", "UINT is a 16-bit unsigned integer; UDINT, 32-bit, is 'uint32'"),
        ("WORD", "uint16", "WORD is 16 bits"),
        ("word", "uint16", "WORD is 16 bits"),
        ("DINT", "int32", "DINT is a 32-bit signed integer"),
        ("dint", "int32", "DINT is a 32-bit signed integer"),
        ("UDINT", "uint32", "UDINT is a 32-bit unsigned integer"),
        ("DWORD", "uint32", "DWORD is 32 bits"),
        ("LINT", "int64", "LINT is a 64-bit signed integer"),
        ("ULINT", "uint64", "ULINT is a 64-bit unsigned integer"),
        ("LWORD", "uint64", "LWORD is 64 bits"),
        ("REAL", "float32", "REAL is a 32-bit float"),
        ("Real", "float32", "REAL is a 32-bit float"),
        ("LREAL", "float64", "LREAL is a 64-bit float"),
        ("BOOL", "bool", "BOOL is one bit"),
    ],
)
def test_iec_type_names_suggest_what_they_mean(
    tmp_path: Path, word: str, meant: str, what: str
) -> None:
    assert type_error(tmp_path, word) == (
        f"unknown value '{word}'; did you mean '{meant}'? (IEC 61131-3 {what})"
    )


@pytest.mark.parametrize(
    ("word", "rest"),
    [
        (
            "SINT",
            "edgegw has no 8-bit type (IEC 61131-3 SINT is an 8-bit signed integer) because a "
            "Modbus register holds 16 bits; if the PLC maps it to a register of its own, read "
            "it as int16",
        ),
        (
            "USINT",
            "edgegw has no 8-bit type (IEC 61131-3 USINT is an 8-bit unsigned integer) because "
            "a Modbus register holds 16 bits; if the PLC maps it to a register of its own, read "
            "it as uint16",
        ),
        (
            "BYTE",
            "edgegw has no 8-bit type (IEC 61131-3 BYTE is 8 bits) because a Modbus register "
            "holds 16 bits; if the PLC maps it to a register of its own, read it as uint16",
        ),
        (
            "int8",
            "edgegw has no 8-bit type: a Modbus register holds 16 bits; if the PLC maps the "
            "value to a register of its own, read it as int16",
        ),
        (
            "uint8",
            "edgegw has no 8-bit type: a Modbus register holds 16 bits; if the PLC maps the "
            "value to a register of its own, read it as uint16",
        ),
        (
            # Spelling alone suggested float64: the user must choose, 2 or 4 registers.
            "float",
            "did you mean 'float32' (IEC 61131-3 REAL, 2 registers) or 'float64' (LREAL, 4 "
            "registers)? Say which: they read different registers",
        ),
        ("double", "did you mean 'float64'? (a double is a 64-bit float, IEC 61131-3 LREAL)"),
        ("single", "did you mean 'float32'? (a single is a 32-bit float, IEC 61131-3 REAL)"),
        ("short", "did you mean 'int16'? (a short is a 16-bit signed integer, IEC 61131-3 INT)"),
        ("ushort", "did you mean 'uint16'? (an unsigned short is 16 bits, IEC 61131-3 UINT)"),
        (
            "integer",
            "did you mean 'int16' (IEC 61131-3 INT, 1 register), 'int32' (DINT, 2 registers) or "
            "'int64' (LINT, 4 registers)? Say which: they read different registers",
        ),
        (
            "long",
            "did you mean 'int32' (IEC 61131-3 DINT, 2 registers) or 'int64' (LINT, 4 "
            "registers)? Say which: they read different registers",
        ),
        (
            "ulong",
            "did you mean 'uint32' (IEC 61131-3 UDINT, 2 registers) or 'uint64' (ULINT, 4 "
            "registers)? Say which: they read different registers",
        ),
    ],
)
def test_other_type_words_get_their_meaning_not_their_spelling(
    tmp_path: Path, word: str, rest: str
) -> None:
    assert type_error(tmp_path, word) == f"unknown value '{word}'; {rest}"


def test_a_typo_still_gets_the_nearest_spelling(tmp_path: Path) -> None:
    assert type_error(tmp_path, "uint61") == (
        "unknown value 'uint61'; did you mean 'uint64'? (one of: int16, uint16, int32, uint32, "
        "int64, uint64, float32, float64, bool, string)"
    )


def test_edgegw_type_names_are_never_taken_for_plc_words() -> None:
    assert [kind for kind in DATA_TYPES if plc_type_hint(kind) is not None] == []


NAME_RULE = (
    "(names are ASCII letters, digits, '_' and '-', not starting with '-': a name becomes an "
    "MQTT topic level, where '/', '+' and '#' are special, and events refer to tags as "
    "source.tag)"
)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ('"g.x"', "'g.x': '.' is not allowed in a name; did you mean 'g_x'?"),
        ('"press 01"', "'press 01': a space is not allowed in a name; did you mean 'press_01'?"),
        ('"line/1"', "'line/1': '/' is not allowed in a name; did you mean 'line_1'?"),
        (
            '"a+b#c"',
            "'a+b#c': '+' and '#' are not allowed in a name; did you mean 'a_b_c'?",
        ),
        (
            '"Temperatür"',
            "'Temperatür': 'ü' is not allowed in a name; did you mean 'Temperatur'?",
        ),
        ('"-x"', "'-x': a name must not start with '-'; did you mean 'x'?"),
        ('"€"', "'€': '€' is not allowed in a name"),
        ('""', "a name must not be empty"),
        (
            '"a.b/c d+e#f,g"',
            "'a.b/c d+e#f,g': '.', '/', a space, '+', '#' and more are not allowed in a name; "
            "did you mean 'a_b_c_d_e_f_g'?",
        ),
    ],
)
def test_a_bad_tag_name_states_the_rule_and_why(tmp_path: Path, name: str, problem: str) -> None:
    [issue] = issues(tmp_path, f'{{name: {name}, address: "holding:0", type: uint16}}')
    assert issue == f"8:16 sources[0].tags[0].name: {problem} {NAME_RULE}"


def test_a_bad_value_name_says_why_it_is_restricted(tmp_path: Path) -> None:
    tag = '{name: t, address: "holding:0", type: uint16, values: {0: "is idle"}}'
    [issue] = issues(tmp_path, tag)
    # `      - {name: t, address: "holding:0", type: uint16, values: {0: ` -> col 67.
    assert issue == (
        "8:67 sources[0].tags[0].values.0: 'is idle': a space is not allowed in a name; did "
        "you mean 'is_idle'? (names are ASCII letters, digits, '_' and '-', not starting with "
        "'-': a value name is published in place of the raw value and used in events)"
    )


def test_names_keep_their_pattern_in_the_json_schema() -> None:
    from edgegw.config.model import GatewayConfig

    schema = GatewayConfig.model_json_schema()
    name = schema["$defs"]["ModbusTag"]["properties"]["name"]
    assert name["pattern"] == "^[A-Za-z0-9_][A-Za-z0-9_-]*$"
    assert name["maxLength"] == 64
