"""The `sinks:` section (issue 16): several sinks, the `mqtt:` section as the sink named mqtt,
and the mistakes a config can make with them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from edgegw.config.diagnostics import validate_document
from edgegw.config.loader import load_config
from edgegw.config.model import GatewayConfig
from edgegw.config.yamlpos import load_yaml_text
from edgegw.errors import ConfigError

BASE: dict[str, Any] = {
    "gateway": {"id": "gw1", "site": "s", "area": "a", "line": "l"},
    "sources": [
        {
            "name": "plc",
            "protocol": "modbus",
            "url": "tcp://127.0.0.1:5020",
            "tags": [{"name": "t", "address": "holding:0", "type": "uint16"}],
        }
    ],
}


def load(**sections: Any) -> GatewayConfig:
    text = yaml.safe_dump({**BASE, **sections}, sort_keys=False)
    return validate_document(GatewayConfig, load_yaml_text(text, "gw.yaml"))


def errors(tmp_path: Path, **sections: Any) -> list[str]:
    """What `edgegw check` says of a file with these sections (cross-entry rules included)."""
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump({**BASE, **sections}, sort_keys=False))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return [line.removeprefix(f"{path}:") for line in caught.value.lines()]


def test_without_sinks_the_mqtt_section_is_the_one_sink() -> None:
    sinks = load().sink_list()
    assert [(s.name, s.type, s.client_id, s.section.port) for s in sinks] == [
        ("mqtt", "mqtt", "edgegw-gw1", 1883)
    ]


def test_sinks_alone_replace_the_default_broker_and_the_mqtt_section_joins_them() -> None:
    second = {"name": "cloud", "type": "mqtt", "url": "mqtt://10.0.0.9:1883"}
    assert [s.name for s in load(sinks=[second]).sink_list()] == ["cloud"]
    both = load(mqtt={"url": "mqtt://127.0.0.1:1883"}, sinks=[second]).sink_list()
    assert [(s.name, s.client_id) for s in both] == [
        ("mqtt", "edgegw-gw1"),
        ("cloud", "edgegw-gw1-cloud"),
    ]


def test_select_takes_kinds_and_telemetry_of_matching_sources() -> None:
    sink = {
        "name": "erp",
        "type": "mqtt",
        "select": {"kinds": ["telemetry", "event"], "sources": ["press-*"]},
    }
    select = load(sinks=[sink]).sink_list()[0].select
    assert select is not None
    assert select.matches("telemetry", "press-01")
    assert not select.matches("telemetry", "filler")
    assert select.matches("event", "")  # events have no source: not filtered by it
    assert not select.matches("gap", "")


def test_two_sinks_with_one_name_are_an_error_at_the_second(tmp_path: Path) -> None:
    lines = errors(
        tmp_path,
        mqtt={"url": "mqtt://127.0.0.1:1883"},
        sinks=[{"name": "mqtt", "type": "mqtt", "url": "mqtt://10.0.0.9:1883"}],
    )
    assert lines[0] == (
        "17:9 sinks[0].name: a second sink named 'mqtt' (the first at line 14); sink names must "
        "be unique, and the mqtt: section is the sink named 'mqtt'"
    )


def test_two_sinks_with_one_client_id_on_one_broker_are_an_error(tmp_path: Path) -> None:
    lines = errors(
        tmp_path,
        sinks=[
            {"name": "a", "type": "mqtt", "client_id": "gw"},
            {"name": "b", "type": "mqtt", "client_id": "gw"},
        ],
    )
    assert lines[0] == (
        "20:14 sinks[1].client_id: sinks 'a' and 'b' connect to 127.0.0.1:1883 with one client "
        "id 'gw'; each would take the other's session over: give one its own client_id"
    )


def test_an_unknown_sink_type_names_the_known_ones(tmp_path: Path) -> None:
    lines = errors(tmp_path, sinks=[{"name": "a", "type": "mqt"}])
    assert "sinks[0].type: unknown value 'mqt'; did you mean 'mqtt'?" in lines[0]
