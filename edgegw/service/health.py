"""The gateway's state at one moment, put together from each component's own snapshot.

/metrics, /healthz and `edgegw status` read this, never the components themselves: a
component can change inside without the HTTP side knowing, and the HTTP side imports no
part of the running gateway.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from edgegw.outbox.store import OutboxHealth
from edgegw.sinks.base import SinkHealth
from edgegw.sources.base import SourceHealth


@dataclass(frozen=True, slots=True)
class GatewayHealth:
    gateway: str
    version: str
    uptime: float  # seconds
    wall_time: float  # time.time() when taken: ages are counted from it
    committed: int  # events committed to the outbox
    quarantined: int  # quarantine records opened since start
    alarm: str | None  # why the outbox takes no data, while it does not
    reloads: Mapping[str, int]  # applied, refused
    rates: Mapping[str, float]  # per second over the last few seconds
    outbox: OutboxHealth
    sinks: tuple[SinkHealth, ...]
    sources: tuple[SourceHealth, ...]

    def failing(self) -> list[str]:
        """What is wrong, one line each; empty when all is well."""
        failing = [
            f"source {s.name}: {s.last_error or 'not connected'}" for s in self.sources if not s.up
        ]
        failing.extend(
            f"source {s.name}: {len(s.bad_tags)} tag(s) cannot be read: "
            + "; ".join(f"{tag} ({why})" for tag, why in s.bad_tags[:5])
            + ("; ..." if len(s.bad_tags) > 5 else "")
            for s in self.sources
            if s.up and s.bad_tags
        )
        for source in self.sources:
            failing.extend(
                f"device {d.name} ({source.name} unit {d.unit}): {d.last_error}"
                for d in source.devices
                if d.breaker_open
            )
        failing.extend(
            f"{'broker' if sink.name == 'mqtt' else 'sink ' + sink.name}: "
            f"{sink.last_error or 'not connected'}"
            for sink in self.sinks
            if not sink.up
        )
        if self.alarm:
            failing.append(f"outbox: {self.alarm}")
        return failing
