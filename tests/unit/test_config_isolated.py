"""The daemon's config, parsed in a child process, is the config parsed in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgegw.config.isolated import load_config_isolated
from edgegw.config.loader import load_config
from edgegw.errors import ConfigError

pytestmark = pytest.mark.timeout(30)

VALID = """\
gateway: {id: gw-1, site: s, area: a, line: l}
mqtt: {url: "mqtt://127.0.0.1:1883", batch: {max_values: 100, max_delay: 50ms}}
sources:
  - name: press
    protocol: modbus
    url: tcp://127.0.0.1:5020
    tags:
      - {name: temp, address: "holding:0", type: float32, unit: degC, min: -20, max: 200}
  - name: filler
    protocol: opcua
    url: opc.tcp://127.0.0.1:4840/line/
    tags:
      - {name: speed, node: "nsu=urn:edgegw:sim:filler;s=Filler.Speed"}
"""


def test_the_same_config_comes_back(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(VALID)
    assert load_config_isolated(path) == load_config(path)


def test_errors_come_back_with_their_positions(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(VALID.replace("type: float32", "type: float33"))
    with pytest.raises(ConfigError) as in_process:
        load_config(path)
    with pytest.raises(ConfigError) as isolated:
        load_config_isolated(path)
    assert isolated.value.lines() == in_process.value.lines()
    assert isolated.value.lines()[0].startswith(f"{path}:8:50 sources[0].tags[0].type:")
