"""What failed a contract: kept with its rule, value and reason, never published as good."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

QuarantineKind = Literal["telemetry", "event"]


@dataclass(frozen=True, slots=True)
class QuarantineRecord:
    """One violation. `payload` is the event message an operator may release (events only)."""

    key: str  # the id the message would have had
    kind: QuarantineKind
    subject: str  # source.tag, or the event type
    rule: str  # range | values | sequence | contract
    value: Any  # the offending value (JSON-able)
    reason: str
    topic: str
    payload: dict[str, Any] | None
    trace: str
    ts: float  # source timestamp of the value or event
    created: float  # when the gateway quarantined it
