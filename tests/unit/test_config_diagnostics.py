"""YAML positions and config error messages: exact lines, checked against the YAML by hand.

The models below are a toy copy of the real schema's shape (a discriminated union of
sources, Literal types, a field validator, extra="forbid"), so these tests pin the
diagnostics themselves and do not move when the real schema does.

Every LINE:COL in an expected string was counted by hand in the YAML right above it
(1-based); the numbered comments in the YAML constants are there to make that easy to check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgegw.config.diagnostics import did_you_mean, validate_document
from edgegw.config.issues import ConfigIssue, Mark
from edgegw.config.yamlpos import load_yaml_file, load_yaml_text
from edgegw.errors import ConfigError

# --- the toy schema -------------------------------------------------------------------


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Gateway(Strict):
    id: str
    site: str | None = None


class Tag(Strict):
    name: str
    address: str
    type: Literal["int16", "uint16", "int32", "uint32", "float32", "bool"]
    values: dict[int, str] | None = None

    @field_validator("address")
    @classmethod
    def _check_address(cls, value: str) -> str:
        if not value.startswith(("holding:", "coil:")):
            raise ValueError(f"'{value}' is not an address; write TABLE:OFFSET, e.g. 'holding:100'")
        return value


class ModbusSource(Strict):
    name: str
    protocol: Literal["modbus"]
    url: str
    unit: int = Field(default=1, ge=0, le=255)
    poll: str = "1s"
    tags: list[Tag] = []


class OpcSource(Strict):
    name: str
    protocol: Literal["opcua"]
    endpoint: str


class Root(Strict):
    gateway: Gateway
    sources: list[Annotated[ModbusSource | OpcSource, Field(discriminator="protocol")]]


def errors_of(text: str, path: str = "line3.yaml") -> list[str]:
    """The issues a config text produces, from the YAML loader or the model."""
    with pytest.raises(ConfigError) as caught:
        validate_document(Root, load_yaml_text(text, path))
    return caught.value.lines()


# Lines are numbered on the right; nothing in a YAML text below is indented with tabs.
GOOD = """\
gateway:
  id: gw-1
sources:
  - name: press-01
    protocol: modbus
    url: tcp://10.0.0.5:502
    poll: 500ms
    tags:
      - name: speed
        address: holding:100
        type: uint16
      - name: state
        address: holding:101
        type: int16
        values: {0: idle, 1: running}
"""
#  1 gateway:
#  2   id: gw-1
#  3 sources:
#  4   - name: press-01              'name' at col 5
#  5     protocol: modbus            'modbus' at col 15
#  6     url: tcp://10.0.0.5:502
#  7     poll: 500ms                 'poll' at col 5
#  8     tags:
#  9       - name: speed
# 10         address: holding:100    'holding:100' at col 18
# 11         type: uint16            'uint16' at col 15
# 12       - name: state
# 13         address: holding:101
# 14         type: int16
# 15         values: {0: idle, 1: running}   '{' 17, '0' 18, 'idle' 21, '1' 27, 'running' 30


def test_good_config_loads_with_plain_types() -> None:
    doc = load_yaml_text(GOOD, "line3.yaml")
    config = validate_document(Root, doc)
    source = config.sources[0]
    assert isinstance(source, ModbusSource)
    assert source.poll == "500ms"
    assert source.tags[0].address == "holding:100"
    assert doc.data["sources"][0]["poll"] == "500ms"
    assert doc.value_marks[()] == Mark(1, 1)
    assert doc.key_marks[("sources", 0, "poll")] == Mark(7, 5)
    assert doc.value_marks[("sources", 0, "poll")] == Mark(7, 11)
    assert doc.value_marks[("sources", 0, "tags", 0, "address")] == Mark(10, 18)


def test_scalars_keep_their_yaml_types() -> None:
    doc = load_yaml_text("a: 1\nb: 0.5\nc: true\nd: 7d\ne: '1'\nf:\ng: 2024-05-01\n")
    # Timestamps stay text: the config has no date fields.
    assert doc.data == {
        "a": 1,
        "b": 0.5,
        "c": True,
        "d": "7d",
        "e": "1",
        "f": None,
        "g": "2024-05-01",
    }
    assert doc.path == "<string>"


def test_unknown_key_points_at_the_key_and_suggests_the_closest() -> None:
    text = GOOD.replace("    poll: 500ms", "    pol: 500ms")
    assert errors_of(text) == [
        "line3.yaml:7:5 sources[0].pol: unknown key 'pol'; did you mean 'poll'?",
        "1 error; gateway not started.",
    ]


def test_unknown_key_without_a_near_name_lists_the_valid_keys() -> None:
    text = GOOD.replace("        type: uint16", "        type: uint16\n        colour: red")
    # 'colour' is on the new line 12, after 8 spaces.
    assert errors_of(text) == [
        "line3.yaml:12:9 sources[0].tags[0].colour: unknown key 'colour'; "
        "valid keys: name, address, type, values",
        "1 error; gateway not started.",
    ]


def test_unknown_literal_value_suggests_the_closest() -> None:
    text = GOOD.replace("type: uint16", "type: uint61")
    assert errors_of(text) == [
        "line3.yaml:11:15 sources[0].tags[0].type: unknown value 'uint61'; did you mean "
        "'uint16'? (one of: int16, uint16, int32, uint32, float32, bool)",
        "1 error; gateway not started.",
    ]


def test_every_error_is_reported_sorted_by_position() -> None:
    # pydantic reports the tag's Literal error before the source's unknown key: sorted here.
    text = GOOD.replace("    poll: 500ms", "    pol: 500ms").replace("type: uint16", "type: uint61")
    assert errors_of(text) == [
        "line3.yaml:7:5 sources[0].pol: unknown key 'pol'; did you mean 'poll'?",
        "line3.yaml:11:15 sources[0].tags[0].type: unknown value 'uint61'; did you mean "
        "'uint16'? (one of: int16, uint16, int32, uint32, float32, bool)",
        "2 errors; gateway not started.",
    ]


def test_validator_message_without_pydantic_prefix() -> None:
    text = GOOD.replace("address: holding:100", "address: holdng:100")
    assert errors_of(text) == [
        "line3.yaml:10:18 sources[0].tags[0].address: 'holdng:100' is not an address; "
        "write TABLE:OFFSET, e.g. 'holding:100'",
        "1 error; gateway not started.",
    ]


def test_type_and_range_errors_show_the_value() -> None:
    text = GOOD.replace("    poll: 500ms", "    unit: 300\n    poll: [1]").replace(
        "  id: gw-1", "  id: 17"
    )
    # line 2 '17' at col 7; line 7 'unit: 300' value at col 11; line 8 'poll: [1]' at col 11.
    assert errors_of(text) == [
        "line3.yaml:2:7 gateway.id: expected a string, got 17; put the value in quotes",
        "line3.yaml:7:11 sources[0].unit: must be <= 255 (got 300)",
        "line3.yaml:8:11 sources[0].poll: expected a string, got a list",
        "3 errors; gateway not started.",
    ]
    text = GOOD.replace("    poll: 500ms", "    unit: abc")
    assert errors_of(text)[0] == ("line3.yaml:7:11 sources[0].unit: expected an integer, got 'abc'")


def test_missing_key_points_at_the_mapping_that_lacks_it() -> None:
    text = GOOD.replace("    url: tcp://10.0.0.5:502\n", "")
    assert errors_of(text) == [
        "line3.yaml:4:5 sources[0]: missing required key 'url'",
        "1 error; gateway not started.",
    ]
    text = GOOD.replace("  id: gw-1", "  site: plant-1")
    assert errors_of(text) == [
        "line3.yaml:2:3 gateway: missing required key 'id'",
        "1 error; gateway not started.",
    ]


def test_missing_top_level_key_has_no_path() -> None:
    text = "gateway:\n  id: gw-1\n"
    assert errors_of(text) == [
        "line3.yaml:1:1: missing required key 'sources'",
        "1 error; gateway not started.",
    ]


def test_unknown_protocol_suggests_the_closest_and_lists_all() -> None:
    text = GOOD.replace("protocol: modbus", "protocol: modbuss")
    assert errors_of(text) == [
        "line3.yaml:5:15 sources[0].protocol: unknown protocol 'modbuss'; did you mean "
        "'modbus'? (one of: modbus, opcua)",
        "1 error; gateway not started.",
    ]


def test_missing_protocol_is_a_missing_key() -> None:
    text = GOOD.replace("    protocol: modbus\n", "")
    assert errors_of(text) == [
        "line3.yaml:4:5 sources[0]: missing required key 'protocol'",
        "1 error; gateway not started.",
    ]


def test_unknown_key_candidates_come_from_the_chosen_union_member() -> None:
    text = """\
gateway: {id: gw-1}
sources:
  - name: opc-1
    protocol: opcua
    endpiont: opc.tcp://10.0.0.9:4840
"""
    # 'endpiont' is on line 5 after 4 spaces; only OpcSource has 'endpoint'.
    assert errors_of(text) == [
        "line3.yaml:3:5 sources[0]: missing required key 'endpoint'",
        "line3.yaml:5:5 sources[0].endpiont: unknown key 'endpiont'; did you mean 'endpoint'?",
        "2 errors; gateway not started.",
    ]


def test_integer_keys_of_a_value_map_keep_their_type_and_marks() -> None:
    doc = load_yaml_text(GOOD, "line3.yaml")
    values_path = ("sources", 0, "tags", 1, "values")
    assert doc.data["sources"][0]["tags"][1]["values"] == {0: "idle", 1: "running"}
    assert doc.value_marks[values_path] == Mark(15, 17)
    assert doc.key_marks[(*values_path, 0)] == Mark(15, 18)
    assert doc.value_marks[(*values_path, 0)] == Mark(15, 21)
    assert doc.key_marks[(*values_path, 1)] == Mark(15, 27)
    assert doc.value_marks[(*values_path, 1)] == Mark(15, 30)


def test_errors_inside_a_value_map_point_at_the_key_or_the_value() -> None:
    text = GOOD.replace("{0: idle, 1: running}", "{0: idle, 1: [running], x: stop}")
    # '{0: idle, 1: [running], x: stop}' starts at col 17: '[' is col 30, 'x' is col 41.
    assert errors_of(text) == [
        "line3.yaml:15:30 sources[0].tags[1].values.1: expected a string, got a list",
        "line3.yaml:15:41 sources[0].tags[1].values.x: expected an integer as the key, got 'x'",
        "2 errors; gateway not started.",
    ]


DUPLICATES = """\
gateway:
  id: gw-1
sources:
  - name: press-01
    protocol: modbus
    poll: 1s
    url: tcp://10.0.0.5:502
    poll: 2s
gateway:
  id: gw-2
"""


def test_every_duplicate_key_is_reported_with_its_first_line() -> None:
    assert errors_of(DUPLICATES) == [
        "line3.yaml:8:5 sources[0].poll: duplicate key 'poll' (first defined at line 6)",
        "line3.yaml:9:1 gateway: duplicate key 'gateway' (first defined at line 1)",
        "2 errors; gateway not started.",
    ]


def test_duplicate_integer_keys() -> None:
    text = "states: {0: idle, 1: run, 0: stop}\n"
    # '{' is col 9; the second '0' is col 27.
    with pytest.raises(ConfigError) as caught:
        load_yaml_text(text, "c.yaml")
    assert caught.value.lines() == [
        "c.yaml:1:27 states.0: duplicate key '0' (first defined at line 1)",
        "1 error; gateway not started.",
    ]


def test_syntax_error_bad_indentation() -> None:
    text = """\
gateway:
  id: gw-1
sources:
  - name: press-01
    protocol: modbus
    url: tcp://10.0.0.5:502
   poll: 1s
"""
    # 'poll' on line 7 has 3 spaces before it: col 4. The blocks above: 'sources' at 0,
    # the list's '-' at 2, the item's keys at 4.
    assert errors_of(text) == [
        "line3.yaml:7:4: this line is indented by 3 spaces, which lines up with no block "
        "above it (those are indented by 0, 2 or 4 spaces); indent it like the other lines "
        "of its block, with spaces",
        "1 error; gateway not started.",
    ]


def test_syntax_error_unclosed_list() -> None:
    text = "gateway:\n  id: gw-1\ntags: [speed, state\nurl: tcp://x\n"
    # line 4 'url:' -> the ':' is col 4.
    assert errors_of(text) == [
        "line3.yaml:4:4: expected ',' or ']', but got ':' (while reading a [...] list started "
        "on line 3); is a closing ']' missing?",
        "1 error; gateway not started.",
    ]


def test_syntax_error_tab_indentation() -> None:
    assert errors_of("gateway:\n\tid: gw-1\n") == [
        "line3.yaml:2:1: a tab character cannot be used for indentation in YAML; use spaces",
        "1 error; gateway not started.",
    ]


def test_syntax_error_tab_between_values() -> None:
    # 'id:' then a tab: col 6.
    assert errors_of("gateway:\n  id:\tgw-1\n") == [
        "line3.yaml:2:6: a tab character cannot separate values in YAML; use spaces",
        "1 error; gateway not started.",
    ]


# --- YAML mistakes in plain words: each PyYAML message a newcomer met, and what it says now


def yaml_error(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_yaml_text(text, "c.yaml")
    assert caught.value.lines()[-1] == "1 error; gateway not started."
    return caught.value.lines()[0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            # PyYAML: "mapping values are not allowed here", at the second ':' (col 20).
            "gateway:\n  id: gw\n  description: note: this\n",
            "c.yaml:3:20: a ':' followed by a space starts a mapping inside a value; put the "
            'value in quotes: description: "note: this"',
            id="colon-inside-a-value",
        ),
        pytest.param(
            # A value that has a '"' already: no suggestion we could not quote right.
            'gateway:\n  description: say "hi": now\n',
            "c.yaml:2:24: a ':' followed by a space starts a mapping inside a value; put the "
            "value in quotes",
            id="colon-inside-a-value-with-quotes",
        ),
        pytest.param(
            # 'protocol' is at col 7, under 'name' (col 5) it would be right: the ':' is col 15.
            "sources:\n  - name: a\n      protocol: modbus\n",
            "c.yaml:3:15: this line is indented more than the line above (line 2), so it reads "
            "as more of that line's value; indent it by 4 spaces like the keys above, or put a "
            "value that contains ': ' in quotes",
            id="indented-too-far",
        ),
        pytest.param(
            # Line 2 'id gw' lacks its ':'; PyYAML finds out on line 3.
            "gateway:\n  id gw\n  site: x\n",
            "c.yaml:2:3: this line has no ':'; a line in a mapping is 'key: value'",
            id="line-without-colon",
        ),
        pytest.param(
            # PyYAML: "could not find expected ':'" on line 4 (the line after 'site:x').
            "gateway:\n  id: gw\n  site:x\n",
            "c.yaml:3:3: a key needs a ':' followed by a space before its value: site: x",
            id="no-space-after-colon",
        ),
        pytest.param(
            "gateway:\n  id: gw\n  site x\nmqtt: {}\n",
            "c.yaml:3:3: this line has no ':'; a line in a mapping is 'key: value'",
            id="no-colon-before-a-mapping",
        ),
        pytest.param(
            # 'a b' is one value (col 3 continues it), then ': ' cannot follow it.
            "- a\n  b: c\n",
            "c.yaml:2:4: a ':' here starts a mapping inside a value: is this line indented "
            "too far, or is a value missing quotes?",
            id="colon-after-a-continued-value",
        ),
        pytest.param(
            # PyYAML: "expected <block end>, but found '<block sequence start>'".
            "sources:\n  - name: a\n    tags:\n      - {name: x}\n       - {name: y}\n",
            "c.yaml:5:8: this line is indented by 7 spaces, which lines up with no block above "
            "it (those are indented by 0, 2, 4, 6 or 8 spaces); indent it like the other lines "
            "of its block, with spaces",
            id="list-item-one-space-off",
        ),
        pytest.param(
            " gateway: {id: gw}\nmqtt: {}\n",
            "c.yaml:2:1: this line is indented by 0 spaces, which lines up with no block above "
            "it (those are indented by 1 space); indent it like the other lines of its block, "
            "with spaces",
            id="first-line-indented",
        ),
        pytest.param(
            # PyYAML: "expected <block end>, but found '-'".
            "gateway:\n  id: gw\n  - x\n",
            "c.yaml:3:3: a list item ('- ...') among the 'key: value' lines of the mapping "
            "started on line 2; write it as 'key: value', or put the list under a key that "
            "ends with ':'",
            id="list-item-among-keys",
        ),
        pytest.param(
            # PyYAML: "expected <block end>, but found '?'": 'tags' belongs to the item.
            "sources:\n  - name: a\n  tags:\n    - {name: x}\n",
            "c.yaml:3:3: a 'key: value' line among the items ('- ...') of the list started on "
            "line 2; if it belongs to the item above, indent it by 4 spaces like that item's "
            "keys; if it starts a new item, begin it with '- '",
            id="key-among-list-items",
        ),
        pytest.param(
            "gateway:\n  id: gw\n  : x\n",
            "c.yaml:3:3: this line starts with ':'; the key before it is missing ('key: value')",
            id="value-without-key",
        ),
        pytest.param(
            "gateway:\n  id: 'gw\n  site: x\n",
            "c.yaml:2:7: the quote ' that opens this value is never closed; add the closing ' "
            "(the file ends before one)",
            id="unclosed-quote",
        ),
        pytest.param(
            'gateway:\n  id: "gw" x\n',
            "c.yaml:2:12: text follows the closing quote; put all of the value inside the quotes",
            id="text-after-quote",
        ),
        pytest.param(
            'gateway: {id: "gw" x}\n',
            "c.yaml:1:20: text follows the closing quote; put all of the value inside the quotes",
            id="text-after-quote-in-braces",
        ),
        pytest.param(
            "tags: [a, {b: 1} c]\n",
            "c.yaml:1:18: expected ',' or ']', but got a value (while reading a [...] list); "
            "is a ',' missing between two values?",
            id="missing-comma",
        ),
        pytest.param(
            "gateway:\n  id: @gw\n",
            "c.yaml:2:7: a value cannot start with '@' in YAML; put the value in quotes",
            id="reserved-character",
        ),
        pytest.param(
            "tags:\n  - {name: x, unit: *}\n",
            "c.yaml:2:21: '*' starts an alias (*name) in YAML; put a value that starts with '*' "
            "in quotes",
            id="alias-sign",
        ),
        pytest.param(
            "gateway:\n  id: &\n",
            "c.yaml:2:7: '&' starts an anchor (&name) in YAML; put a value that starts with '&' "
            "in quotes",
            id="anchor-sign",
        ),
    ],
)
def test_yaml_mistakes_in_plain_words(text: str, expected: str) -> None:
    assert yaml_error(text) == expected


def test_second_document_is_refused() -> None:
    assert errors_of("gateway: {id: a}\n---\ngateway: {id: b}\n") == [
        "line3.yaml:2:1: a second YAML document starts here; a config file holds exactly one "
        "(remove this '---' and what follows, or merge it into the first)",
        "1 error; gateway not started.",
    ]


def test_unsupported_tags_are_all_reported() -> None:
    text = "a: !env BROKER\nb: !!binary aGk=\n"
    with pytest.raises(ConfigError) as caught:
        load_yaml_text(text, "c.yaml")
    assert caught.value.lines() == [
        "c.yaml:1:4 a: unsupported YAML tag '!env'; write a plain value instead",
        "c.yaml:2:4 b: unsupported YAML tag '!!binary'; write a plain value instead",
        "2 errors; gateway not started.",
    ]


MERGE = """\
defaults: &modbus
  protocol: modbus
  poll: 1s
press:
  <<: *modbus
  name: press-01
  poll: 250ms
"""


def test_merge_keys_written_keys_win_and_merged_values_keep_their_own_marks() -> None:
    doc = load_yaml_text(MERGE, "c.yaml")
    assert doc.data["press"] == {"name": "press-01", "poll": "250ms", "protocol": "modbus"}
    assert doc.value_marks[("press", "poll")] == Mark(7, 9)
    # 'protocol' came from the anchored mapping: its position is where it is written.
    assert doc.key_marks[("press", "protocol")] == Mark(2, 3)
    assert doc.value_marks[("press", "protocol")] == Mark(2, 13)


def test_merge_of_a_scalar_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        load_yaml_text("a: &one 1\nb:\n  <<: *one\n", "c.yaml")
    assert caught.value.lines() == [
        "c.yaml:3:3 b: '<<' (merge) needs a mapping or a list of mappings, "
        "e.g. '<<: *defaults' or '<<: [*a, *b]'",
        "1 error; gateway not started.",
    ]


def test_alias_bomb_is_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    with pytest.raises(ConfigError) as caught:
        load_yaml_text("\n".join(lines) + "\n", "c.yaml")
    assert "refusing to load it" in caught.value.lines()[0]
    assert caught.value.lines()[-1] == "1 error; gateway not started."


def test_empty_file(tmp_path: Path) -> None:
    for content in ("", "# only a comment\n", "---\n"):
        path = tmp_path / "empty.yaml"
        path.write_text(content)
        with pytest.raises(ConfigError) as caught:
            load_yaml_file(path)
        assert caught.value.lines() == [
            f"{path}: file is empty",
            "1 error; gateway not started.",
        ]


def test_nonexistent_file_names_the_file_and_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_yaml_file(path)
    assert caught.value.lines() == [
        f"{path}: cannot read the file: No such file or directory",
        "1 error; gateway not started.",
    ]


def test_file_path_is_printed_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "line3.yaml").write_text(GOOD.replace("    poll:", "    pol:"))
    monkeypatch.chdir(tmp_path)
    doc = load_yaml_file("config/line3.yaml")
    assert doc.path == "config/line3.yaml"
    with pytest.raises(ConfigError) as caught:
        validate_document(Root, doc)
    assert caught.value.lines()[0].startswith("config/line3.yaml:7:5 sources[0].pol: ")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"gateway:\n  id: caf\xe9\n")
    with pytest.raises(ConfigError) as caught:
        load_yaml_file(path)
    assert caught.value.lines()[0] == f"{path}: the file is not UTF-8 text (byte 0xe9 on line 2)"


def test_a_config_issue_formats_as_one_line() -> None:
    assert str(ConfigIssue("c.yaml", Mark(3, 9), "mqtt.qos", "must be <= 1 (got 2)")) == (
        "c.yaml:3:9 mqtt.qos: must be <= 1 (got 2)"
    )
    assert str(ConfigIssue("c.yaml", None, "mqtt", "bad")) == "c.yaml mqtt: bad"
    assert str(ConfigIssue("c.yaml", Mark(1, 1), "", "bad")) == "c.yaml:1:1: bad"
    assert str(ConfigIssue("c.yaml", None, "", "file is empty")) == "c.yaml: file is empty"


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("pol", "poll"),
        ("uint61", "uint16"),
        ("modbuss", "modbus"),
        ("POLL", "poll"),  # case-insensitive exact match wins
        ("Int16", "int16"),
        ("colour", None),
        ("x", None),
    ],
)
def test_did_you_mean(word: str, expected: str | None) -> None:
    candidates = ["poll", "unit", "int16", "uint16", "modbus", "opcua", "name"]
    assert did_you_mean(word, candidates) == expected


# --- either parser ----------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
SAMPLE_CONFIGS = sorted(
    [*REPO.glob("config/*.yaml"), *REPO.glob("tests/configs/*/config.yaml")], key=str
)


@pytest.mark.parametrize("path", SAMPLE_CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_libyaml_and_pure_python_parsers_give_the_same_data_and_positions(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # libyaml composes the config when it is installed (faster, less memory); a machine
    # without it must read every file to the same data with the same positions.
    import yaml

    text = path.read_text(encoding="utf-8")
    fast = _loaded(text, path.name)
    monkeypatch.setattr(yaml, "__with_libyaml__", False)
    assert fast == _loaded(text, path.name)


def _loaded(text: str, name: str) -> object:
    """The data and positions of a YAML text, or the error's text (some samples are wrong on
    purpose)."""
    try:
        doc = load_yaml_text(text, name)
    except ConfigError as exc:
        return str(exc)
    return (doc.data, doc.value_marks, doc.key_marks)


def test_the_installed_pyyaml_has_libyaml() -> None:
    # The daemon's start-up memory figure assumes it (edgegw/config/yamlpos.py).
    import yaml

    assert yaml.__with_libyaml__
