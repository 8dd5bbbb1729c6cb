"""`protocol:` value → driver. A new protocol is one module plus one line here."""

from __future__ import annotations

from edgegw.config.model import SourceConfig
from edgegw.sources.base import Source


def build_source(config: SourceConfig) -> Source:
    # Drivers are imported when a source needs them: asyncua alone is about 30 MB of RSS, which
    # a Modbus-only gateway should not pay.
    if config.protocol == "modbus":
        if config.multi_device:
            from edgegw.sources.modbus.line import ModbusLine

            return ModbusLine(config)
        from edgegw.sources.modbus.driver import ModbusSource

        return ModbusSource(config)
    if config.protocol == "opcua":
        from edgegw.sources.opcua.driver import OpcUaSource

        return OpcUaSource(config)
    raise AssertionError(f"no driver for protocol {config.protocol!r}")
