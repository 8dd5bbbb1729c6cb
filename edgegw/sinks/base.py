"""What every sink reports about itself."""

from __future__ import annotations

from dataclasses import dataclass

from edgegw.histogram import HistogramSnapshot


@dataclass(frozen=True, slots=True)
class SinkHealth:
    """A sink and its forwarder at one moment, as /metrics, /healthz and `edgegw status` show
    it."""

    name: str
    address: str  # where it delivers: host:port, a directory
    up: bool
    connects: int  # successful connections (more than 1: reconnects)
    last_error: str | None
    published: int  # acknowledged and deleted
    refused: int  # refusals (MQTT: PUBACK >= 0x80): kept and retried
    intake_waits: int  # times intake waited for this forwarder (overload)
    latency: HistogramSnapshot  # source timestamp to acknowledgement, per value
