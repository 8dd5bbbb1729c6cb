"""`${NAME}` references in config values."""

from __future__ import annotations

from edgegw.config.envsubst import expand_env
from edgegw.config.yamlpos import load_yaml_text

TEXT = """\
a: ${USER_NAME}
b: "pre-${HOST:-localhost}-post"
c: ["literal $${NOT_EXPANDED}", "${EMPTY}"]
d: {e: "${MISSING}"}
"""


def test_references_are_filled_from_the_environment() -> None:
    doc = load_yaml_text(TEXT, "cfg.yaml")
    issues = expand_env(doc, {"USER_NAME": "op", "EMPTY": "", "MISSING": "x"})
    assert issues == []
    assert doc.data == {
        "a": "op",
        "b": "pre-localhost-post",
        "c": ["literal ${NOT_EXPANDED}", ""],
        "d": {"e": "x"},
    }


def test_an_unset_variable_is_an_error_at_its_position() -> None:
    doc = load_yaml_text(TEXT, "cfg.yaml")
    issues = expand_env(doc, {"USER_NAME": "op", "EMPTY": ""})
    assert len(issues) == 1
    assert str(issues[0]).startswith("cfg.yaml:4:8 d.e: environment variable MISSING is not set")


def test_a_name_without_braces_is_an_error_that_suggests_braces() -> None:
    # `mqtt://$BROKER:1883` as a shell would write it: taken literally it would be a host name.
    doc = load_yaml_text('mqtt: {url: "mqtt://$BROKER:1883"}\n', "cfg.yaml")
    assert [str(issue) for issue in expand_env(doc, {"BROKER": "10.0.0.2"})] == [
        "cfg.yaml:1:13 mqtt.url: '$BROKER' is not expanded (only ${NAME} is); did you mean "
        "'${BROKER}'? Write $$BROKER for a literal '$BROKER'"
    ]


def test_one_hint_per_value_however_many_names() -> None:
    doc = load_yaml_text("a: $A-$B-$C\nb: ok\n", "cfg.yaml")
    assert [str(issue) for issue in expand_env(doc, {})] == [
        "cfg.yaml:1:4 a: '$A' is not expanded (only ${NAME} is); did you mean '${A}'? "
        "Write $$A for a literal '$A'"
    ]


def test_dollars_that_name_nothing_stay_as_written() -> None:
    text = "a: 'cost: 5$'\nb: '^B[0-9]+$'\nc: '$1 $ $-x'\nd: '$$NAME and $${X} and $$'\n"
    doc = load_yaml_text(text, "cfg.yaml")
    assert [str(issue) for issue in expand_env(doc, {"NAME": "n", "X": "x"})] == []
    assert doc.data == {
        "a": "cost: 5$",
        "b": "^B[0-9]+$",
        "c": "$1 $ $-x",
        "d": "$NAME and ${X} and $$",  # $$NAME and $${ are the literal forms
    }


def test_values_from_the_environment_are_not_scanned_for_dollars() -> None:
    doc = load_yaml_text("a: ${PASSWORDISH}\nb: '${U:-$DEFAULT}'\n", "cfg.yaml")
    assert [str(issue) for issue in expand_env(doc, {"PASSWORDISH": "pa$word"})] == []
    assert doc.data == {"a": "pa$word", "b": "$DEFAULT"}
