"""The hand-rolled UUIDv5 and the cached timestamp formatter give the library's exact results."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from edgegw.keys import TELEMETRY_NAMESPACE, telemetry_key, uuid5_text
from edgegw.timefmt import iso_utc


@settings(max_examples=500, deadline=None)
@given(name=st.text())
def test_uuid5_text_is_uuid5(name: str) -> None:
    namespace = uuid.UUID("3c9a7f52-8d4e-5b61-9f2a-7e0d4c1b8a93")
    state = hashlib.sha1(namespace.bytes, usedforsecurity=False)
    assert uuid5_text(state, name) == str(uuid.uuid5(namespace, name))


def test_telemetry_key_derivation_is_unchanged() -> None:
    # The derivation documented in the README: consumers may recompute it.
    name = "gw\x1fpress\x1ftemp\x1f1764666000123457\x1fgood\x1f72.5"
    expected = str(uuid.uuid5(TELEMETRY_NAMESPACE, name))
    assert telemetry_key("gw", "press", "temp", 1764666000.123457, "good", "72.5") == expected


@settings(max_examples=500, deadline=None)
@given(
    stamps=st.lists(
        st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False), min_size=1, max_size=20
    )
)
def test_iso_utc_matches_datetime_whatever_the_order(stamps: list[float]) -> None:
    for ts in stamps:
        seconds = int(ts)
        millis = int((ts - seconds) * 1000)
        when = dt.datetime.fromtimestamp(seconds, dt.UTC)
        assert iso_utc(ts) == when.strftime("%Y-%m-%dT%H:%M:%S") + f".{millis:03d}Z"
