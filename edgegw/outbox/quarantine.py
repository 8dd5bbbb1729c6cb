"""What failed a contract: kept with its rule, value and reason, never published as good.

Also the words and keys of a business-event conflict: an event detected again under an id
already sent, with other data (e.g. a PLC restarted and reused its batch ids).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from edgegw.pipeline.keys import EVENT_NAMESPACE

QuarantineKind = Literal["telemetry", "event"]
CONFLICT_RULE = "conflict"


@dataclass(frozen=True, slots=True)
class QuarantineRecord:
    """One violation. `payload` is the event message an operator may release (events only).

    A tag that stays in violation of one rule is ONE record: the first violating reading
    opens it (`continues` False, `count` 1); later ones come as records with `continues`
    True and the same `key` and `ts`, which add their `count` to it and set its last value
    (`value`) and last time (`last_ts`).
    """

    key: str  # the id the message would have had (a conflict: the id a release gives it)
    kind: QuarantineKind
    subject: str  # source.tag, or the event type
    rule: str  # range | values | sequence | contract | conflict
    value: Any  # the offending value (JSON-able); of a continuation, the latest one
    reason: str
    topic: str
    payload: dict[str, Any] | None
    trace: str
    ts: float  # source timestamp of the value or event (of a lasting one: its first)
    created: float  # when the gateway quarantined it
    count: int = 1  # violating readings this record accounts for
    last_ts: float | None = None  # source timestamp of the latest of them (None: `ts`)
    continues: bool = False  # True: updates the record opened with this key and ts


def data_digest(data: Mapping[str, Any]) -> str:
    """What an event carried, in 32 hex digits: SHA-256 of its `data` fields as compact JSON
    with sorted names. Equal digests under one id: the same event detected again."""
    raw = orjson.dumps(data, option=orjson.OPT_SORT_KEYS, default=str)
    return hashlib.sha256(raw).hexdigest()[:32]


def conflict_key(original: str, digest: str) -> str:
    """The id a released conflict is published under: UUIDv5(EVENT_NAMESPACE,
    `original␟conflict␟digest`). Deterministic, so the same conflicting data released twice
    (or detected again after its release) is still one event; other data, another id."""
    return str(uuid.uuid5(EVENT_NAMESPACE, f"{original}\x1fconflict\x1f{digest}"))


def describe_key(key: Mapping[str, Any]) -> str:
    """{'line': 'L1', 'batch': 'B1006'} -> `{line: L1, batch: B1006}`."""
    return "{" + ", ".join(f"{name}: {_show(value)}" for name, value in key.items()) + "}"


def describe_changes(sent: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    """The fields that differ, old → new: `good 21 → 4, scrap 0 → 2`."""
    names = [*now, *(name for name in sent if name not in now)]
    changes = [
        f"{name} {_show(sent.get(name, _ABSENT))} → {_show(now.get(name, _ABSENT))}"
        for name in names
        if sent.get(name, _ABSENT) != now.get(name, _ABSENT)
        or type(sent.get(name)) is not type(now.get(name))
    ]
    return ", ".join(changes) or "the same values in another form"


_ABSENT: Any = object()


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "(absent)"
    if isinstance(value, str):
        return value
    return orjson.dumps(value, default=str).decode()
