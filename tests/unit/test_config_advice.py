"""`edgegw check` warnings: sequences with states that have no way out, and status tags read
less often than their shortest state lasts."""

from __future__ import annotations

from pathlib import Path

from edgegw.config.advice import ConfigWarning, config_warnings
from edgegw.config.loader import load_config
from tests.support.cli import run_edgegw

HEAD = """\
gateway: {id: gw1, site: s, area: a, line: l, state_dir: /tmp/unused}
sources:
  - name: cell
    protocol: modbus
    url: tcp://127.0.0.1:5020
    poll: 1s
    tags:
      - {name: order_status, address: "holding:30", type: uint16,
         values: {0: created, 1: released, 2: running, 3: completed, 4: aborted}}
sequences:
  - tag: cell.order_status
"""


def warnings_of(tmp_path: Path, sequence: str) -> list[str]:
    path = tmp_path / "gw.yaml"
    path.write_text(HEAD + sequence)
    return [str(w) for w in config_warnings(str(path), load_config(path))]


def test_states_with_no_way_out_are_named_where_they_are_first_reached(tmp_path: Path) -> None:
    # The README's example before the fix: a cycling tag stuck bad after its first order.
    got = warnings_of(
        tmp_path,
        "    transitions: {created: [released], released: [running], "
        "running: [completed, aborted]}\n",
    )
    path = tmp_path / "gw.yaml"
    assert got == [
        f"{path}:12:71 sequences[0].transitions.running[0]: warning: state 'completed' has no "
        "way out: once cell.order_status is 'completed', any change is a sequence violation "
        "and the tag stays bad; say where it goes next (e.g. completed: [created]), or if the "
        "tag rests there for good, add it to final: [completed]",
        f"{path}:12:82 sequences[0].transitions.running[1]: warning: state 'aborted' has no way "
        "out: once cell.order_status is 'aborted', any change is a sequence violation and the "
        "tag stays bad; say where it goes next (e.g. aborted: [created]), or if the tag rests "
        "there for good, add it to final: [aborted]",
    ]


def test_a_cycle_or_final_states_give_no_warning(tmp_path: Path) -> None:
    cycle = (
        "    transitions: {created: [released], released: [running], "
        "running: [completed, aborted], completed: [created], aborted: [created]}\n"
    )
    assert warnings_of(tmp_path, cycle) == []
    final = (
        "    transitions: {created: [released], released: [running], "
        "running: [completed, aborted], completed: []}\n"
        "    final: [completed, aborted]\n"
    )
    assert warnings_of(tmp_path, final) == []


def test_a_final_state_that_is_no_state_is_named(tmp_path: Path) -> None:
    got = warnings_of(
        tmp_path,
        "    transitions: {created: [released], released: [created]}\n    final: [done]\n",
    )
    assert got == [
        f"{tmp_path / 'gw.yaml'}:13:13 sequences[0].final[0]: warning: final state 'done' is "
        "not in transitions (created, released)"
    ]


CYCLE = "    transitions: {created: [released], released: [created]}\n"


def test_a_tag_read_less_often_than_its_shortest_state_is_warned_about(tmp_path: Path) -> None:
    got = warnings_of(tmp_path, CYCLE + "    min_state: 500ms\n")
    assert got == [
        f"{tmp_path / 'gw.yaml'}:13:16 sequences[0].min_state: warning: cell.order_status is "
        "read every 1s (sources[0].poll) but a state can last only 500ms: a state between two "
        "reads is missed and the next change looks like a disallowed transition; read it more "
        "often than every 500ms"
    ]
    assert warnings_of(tmp_path, CYCLE + "    min_state: 2s\n") == []


def test_the_interval_of_a_device_on_a_line_and_of_an_opc_ua_source(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(
        """\
gateway: {id: gw1, site: s, area: a, line: l, state_dir: /tmp/unused}
sources:
  - name: line
    protocol: modbus
    url: tcp://127.0.0.1:5020
    poll: 100ms
    devices:
      - unit: 1
        name: press
        poll: 3s
        tags: [{name: state, address: "holding:0", type: uint16, values: {0: a, 1: b}}]
  - name: filler
    protocol: opcua
    url: opc.tcp://127.0.0.1:4840/
    interval: 2s
    tags: [{name: state, node: "ns=2;s=State"}]
sequences:
  - {tag: press.state, transitions: {a: [b], b: [a]}, min_state: 1s}
  - {tag: filler.state, transitions: {a: [b], b: [a]}, min_state: 1s}
"""
    )
    got = config_warnings(str(path), load_config(path))
    assert [(w.line, w.path) for w in got] == [
        (18, "sequences[0].min_state"),
        (19, "sequences[1].min_state"),
    ]
    assert "press.state is read every 3s (sources[0].devices[0].poll)" in got[0].message
    assert "filler.state is read every 2s (sources[1].interval)" in got[1].message


def test_a_warning_is_data_formatted_once() -> None:
    warning = ConfigWarning("gw.yaml", 3, 7, "sequences[0].final[0]", "something")
    assert str(warning) == "gw.yaml:3:7 sequences[0].final[0]: warning: something"
    assert str(ConfigWarning("gw.yaml", None, None, "", "x")) == "gw.yaml: warning: x"


def readme_example() -> str:
    """The YAML example of the documentation's "Business events and data contracts" page."""
    text = (Path(__file__).parents[2] / "docs" / "events.md").read_text()
    section = text.split("# Business events and data contracts", 1)[1]
    return section.split("```yaml\n", 1)[1].split("```", 1)[0]


def test_the_readme_example_cycles_without_warnings_or_quarantine(tmp_path: Path) -> None:
    from edgegw.pipeline.process import Pipeline
    from edgegw.reading import Reading

    path = tmp_path / "gw.yaml"
    path.write_text(
        "gateway: {id: gw1, site: s, area: a, line: L1, state_dir: /tmp/unused}\n"
        + readme_example()
    )
    config = load_config(path)
    assert config_warnings(str(path), config) == []
    pipeline = Pipeline(config)
    held = []
    # Three orders, one aborted: created -> released -> running -> completed|aborted -> ...
    for at, status in enumerate([0, 1, 2, 3, 0, 1, 2, 4, 0, 1, 2, 3, 0]):
        reading = Reading("cell", "order_status", status, "good", 1000.0 + at, 1000.0 + at)
        held += pipeline.process([reading])[1]
    assert held == []


def test_check_prints_the_warnings_and_still_passes(tmp_path: Path) -> None:

    path = tmp_path / "gw.yaml"
    text = HEAD.replace("/tmp/unused", str(tmp_path / "state"))
    path.write_text(text + "    transitions: {created: [released], released: [running]}\n")
    done = run_edgegw("check", "-c", str(path))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{path}: ok (1 sources, 1 tags)\n"
    assert done.stderr.splitlines() == [
        f"{path}:12:51 sequences[0].transitions.released[0]: warning: state 'running' has no "
        "way out: once cell.order_status is 'running', any change is a sequence violation and "
        "the tag stays bad; say where it goes next (e.g. running: [created]), or if the tag "
        "rests there for good, add it to final: [running]"
    ]


def test_min_state_must_be_longer_than_0(tmp_path: Path) -> None:
    import pytest

    from edgegw.errors import ConfigError

    path = tmp_path / "gw.yaml"
    path.write_text(HEAD + CYCLE + "    min_state: 0s\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.lines()[0] == (
        f"{path}:11:5 sequences[0]: 'min_state' must be longer than 0"
    )
