"""What a new config changes against the running one, and whether it can apply without a restart.

The running gateway keeps one outbox for its whole life: settings that would need another
(its path, its durability mode) or another identity (the gateway id, which is in every key)
refuse the reload as a whole, so what runs is always exactly one accepted file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgegw.config.model import GatewayConfig

_RESTART_ONLY: tuple[tuple[str, Callable[[GatewayConfig], object]], ...] = (
    ("gateway.id", lambda c: c.gateway.id),
    ("gateway.state_dir", lambda c: c.gateway.state_dir),
    ("outbox.path", lambda c: c.outbox_path),
    ("outbox.synchronous", lambda c: c.outbox.synchronous),
    ("http", lambda c: c.http),
)


@dataclass(slots=True)
class ConfigChanges:
    added: list[str] = field(default_factory=list)  # source names
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    pipeline: bool = False  # topics, tags, events or sequences: the pipeline is rebuilt
    mqtt: bool = False  # the broker connection is reopened with the new settings
    retention: bool = False  # outbox.max_rows, max_age, max_bytes
    needs_restart: list[str] = field(default_factory=list)  # refused: what would need one

    @property
    def empty(self) -> bool:
        return not (
            self.added
            or self.removed
            or self.changed
            or self.pipeline
            or self.mqtt
            or self.retention
            or self.needs_restart
        )

    def describe(self) -> str:
        parts = [
            f"{what}: {', '.join(names)}"
            for what, names in (
                ("sources added", self.added),
                ("sources removed", self.removed),
                ("sources changed", self.changed),
            )
            if names
        ]
        if self.pipeline and not (self.added or self.removed or self.changed):
            parts.append("events, sequences or topics changed")
        if self.mqtt:
            parts.append("mqtt changed (reconnecting)")
        if self.retention:
            parts.append("outbox retention changed")
        return "; ".join(parts) or "nothing changed"


def diff_configs(old: GatewayConfig, new: GatewayConfig) -> ConfigChanges:
    changes = ConfigChanges()
    for name, get in _RESTART_ONLY:
        if get(old) != get(new):
            changes.needs_restart.append(name)
    before = {source.name: source for source in old.sources}
    after = {source.name: source for source in new.sources}
    changes.added = [name for name in after if name not in before]
    changes.removed = [name for name in before if name not in after]
    changes.changed = [name for name in after if name in before and after[name] != before[name]]
    changes.mqtt = old.mqtt != new.mqtt
    changes.retention = (old.outbox.max_rows, old.outbox.max_age, old.outbox.max_bytes) != (
        new.outbox.max_rows,
        new.outbox.max_age,
        new.outbox.max_bytes,
    )
    changes.pipeline = bool(
        changes.added
        or changes.removed
        or changes.changed
        or old.events != new.events
        or old.sequences != new.sequences
        or old.mqtt.topic != new.mqtt.topic
        or old.mqtt.event_topic != new.mqtt.event_topic
        or old.gateway != new.gateway
    )
    return changes


def file_sha256(path: str | Path) -> str:
    """The config file's hash for audit lines ('' if it cannot be read)."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return ""
