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
    assert issues[0].startswith("cfg.yaml:4:8 d.e: environment variable MISSING is not set")
