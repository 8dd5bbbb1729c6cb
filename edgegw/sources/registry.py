"""`protocol:` value → driver. A new protocol is one module plus one line here."""

from __future__ import annotations

from edgegw.config.model import SourceConfig
from edgegw.sources.base import Source
from edgegw.sources.modbus.driver import ModbusSource
from edgegw.sources.opcua.driver import OpcUaSource


def build_source(config: SourceConfig) -> Source:
    if config.protocol == "modbus":
        return ModbusSource(config)
    if config.protocol == "opcua":
        return OpcUaSource(config)
    raise AssertionError(f"no driver for protocol {config.protocol!r}")
