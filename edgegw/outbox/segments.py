"""Segments: the unit of storage. The messages of one source from one commit group, numbered
with a contiguous seq range, stored as ONE row with their JSON compressed together.

Per value, a row of its own cost an insert, an index entry, a claim and a delete (about 12 µs
of SQLite work) and about 425 bytes of disk; a segment pays those once. Its messages are
compressed together with zstandard level 1: 500 telemetry messages of 276 bytes each took
0.24 µs per value to compress and 0.08 µs to expand, to 23 bytes each; zlib level 1 (the
first format, still read) took 1.11 µs and 0.42 µs, to 36 bytes (measured here, 2026-12-05).
That is what lets a 2 GB outbox hold tens of millions of values through a broker outage.
"""

from __future__ import annotations

import bisect
import operator
import threading
import zlib
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import orjson
import zstandard

TELEMETRY = "telemetry"
EVENT = "event"
GAP = "gap"

_ZSTD_LEVEL = 1  # level 3, the library default, gave 28 bytes per value here for 1.8x the CPU
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # a zstandard frame; a zlib stream starts with 0x78
_range_end = operator.itemgetter(1)
_codecs = threading.local()  # a zstandard context is not thread-safe; making one costs ~3 µs


def kind_of(schema: str) -> str:
    """The family of a message schema: `edgegw.telemetry/1` -> `telemetry`."""
    return schema.removeprefix("edgegw.").split("/", 1)[0]


def encode_items(items: Sequence[bytes]) -> bytes:
    """Messages (JSON, one object each) to a segment's stored form. orjson never writes a raw
    line break inside a JSON text, so one per message separates them."""
    try:
        compressor: zstandard.ZstdCompressor = _codecs.compressor
    except AttributeError:
        compressor = _codecs.compressor = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
    return compressor.compress(b"\n".join(items))


def decode_items(blob: bytes) -> list[bytes]:
    """A segment's messages, from either stored form: zstandard, or zlib as written by
    edgegw before 2026-12 (no migration: both are read, only zstandard is written)."""
    if not blob.startswith(_ZSTD_MAGIC):
        return zlib.decompress(blob).split(b"\n")
    try:
        decompressor: zstandard.ZstdDecompressor = _codecs.decompressor
    except AttributeError:
        decompressor = _codecs.decompressor = zstandard.ZstdDecompressor()
    return decompressor.decompress(blob).split(b"\n")


class Segment(NamedTuple):
    """A stored segment, as claimed for sending: items `first_seq`..`last_seq`."""

    first_seq: int
    size: int  # messages in it
    kind: str  # telemetry | event | gap | ...
    source: str  # the source of its telemetry; "" for gateway-level messages
    created: float  # wall clock when the gateway received its first value
    source_ts: float  # the oldest source timestamp among its items (latency)
    items: list[bytes]  # one JSON message per seq, seq included

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.size - 1


class StoredEvent(NamedTuple):
    """One message of a claimed segment (a named tuple: made per value, three times cheaper
    than a frozen dataclass). Its id, schema and trace are in its JSON: `fields()` parses them
    when a sink needs them one by one (batched sending does not)."""

    seq: int
    payload: bytes
    kind: str
    source: str
    created: float
    source_time: float  # when the value was taken at the source (events: when seen)

    def fields(self) -> dict[str, Any]:
        message: dict[str, Any] = orjson.loads(self.payload)
        return message

    @property
    def id(self) -> str:
        return str(self.fields()["id"])

    @property
    def schema(self) -> str:
        return str(self.fields()["schema"])

    @property
    def trace(self) -> str:
        return str(self.fields().get("trace", ""))


def ranges_of(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """[1, 2, 3, 7, 8] -> [(1, 3), (7, 8)] (sorted first). Called with every acknowledged seq:
    sorting plain ints and one pass cost a fifth of merging one range per seq."""
    ordered = sorted(set(seqs))
    if not ordered:
        return []
    if ordered[-1] - ordered[0] + 1 == len(ordered):
        return [(ordered[0], ordered[-1])]
    out = []
    start = prev = ordered[0]
    for seq in ordered:
        if seq > prev + 1:
            out.append((start, prev))
            start = seq
        prev = seq
    out.append((start, prev))
    return out


def merge_ranges(*groups: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The union of inclusive ranges, sorted, adjacent ones joined."""
    merged: list[tuple[int, int]] = []
    for first, last in sorted(r for group in groups for r in group):
        if merged and first <= merged[-1][1] + 1:
            if last > merged[-1][1]:
                merged[-1] = (merged[-1][0], last)
        else:
            merged.append((first, last))
    return merged


def missing(ranges: Sequence[tuple[int, int]], first: int, last: int) -> list[tuple[int, int]]:
    """The parts of first..last that merged `ranges` do not contain."""
    out: list[tuple[int, int]] = []
    at = first
    # Bisection to the first range that ends at or after `first`: a sink's ranges can be
    # thousands long (a refused topic leaves a hole in every segment) and every segment asks.
    # A walk from the start made a backlog scan of 8,000 such segments take 0.9 s.
    for index in range(bisect.bisect_left(ranges, first, key=_range_end), len(ranges)):
        start, end = ranges[index]
        if start > last:
            break
        if start > at:
            out.append((at, start - 1))
        at = end + 1
        if at > last:
            return out
    out.append((at, last))
    return out
