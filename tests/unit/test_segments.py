"""Segments: ranges of seqs, and the stored form of their messages."""

from __future__ import annotations

import threading
import zlib

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from edgegw.outbox.segments import (
    decode_items,
    encode_items,
    kind_of,
    merge_ranges,
    missing,
    ranges_of,
)


def test_ranges_of_seqs_join_runs_in_any_order() -> None:
    assert ranges_of([8, 1, 2, 3, 7, 3]) == [(1, 3), (7, 8)]
    assert ranges_of([]) == []
    assert ranges_of([5, 4, 6, 5]) == [(4, 6)]  # contiguous: the one-range shortcut
    assert ranges_of([9]) == [(9, 9)]
    assert ranges_of([1, 3, 5]) == [(1, 1), (3, 3), (5, 5)]


def test_merge_joins_overlapping_and_adjacent_ranges() -> None:
    assert merge_ranges([(5, 9), (1, 2)], [(3, 4), (12, 12), (8, 10)]) == [(1, 10), (12, 12)]


def test_missing_is_what_the_ranges_leave_of_a_span() -> None:
    acked = [(1, 87), (90, 95), (103, 120)]
    assert missing(acked, 88, 102) == [(88, 89), (96, 102)]
    assert missing(acked, 1, 87) == []
    assert missing([], 5, 6) == [(5, 6)]
    assert missing(acked, 96, 96) == [(96, 96)]
    assert missing([(1, 200)], 88, 102) == []


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 120), st.integers(0, 6)), max_size=15),
    st.integers(1, 130),
    st.integers(0, 25),
)
def test_missing_is_the_span_minus_every_acknowledged_seq(
    starts: list[tuple[int, int]], first: int, length: int
) -> None:
    acked = merge_ranges((a, a + n) for a, n in starts)
    last = first + length
    covered = {seq for a, b in acked for seq in range(a, b + 1)}
    expected = ranges_of(seq for seq in range(first, last + 1) if seq not in covered)
    assert missing(acked, first, last) == expected


def test_messages_come_back_byte_for_byte() -> None:
    items = [orjson.dumps({"seq": n, "text": "line\nbreak", "id": f"k{n}"}) for n in range(300)]
    blob = encode_items(items)
    assert decode_items(blob) == items
    assert len(blob) < sum(map(len, items)) / 4


def test_segments_written_with_zlib_by_an_older_edgegw_are_still_read() -> None:
    items = [orjson.dumps({"seq": n, "id": f"k{n}"}) for n in range(50)]
    old = zlib.compress(b"\n".join(items), 1)
    assert decode_items(old) == items
    assert encode_items(items).startswith(b"\x28\xb5\x2f\xfd")  # written: zstandard
    assert decode_items(encode_items(items)) == items


def test_threads_encode_and_decode_segments_at_once() -> None:
    # The codec contexts are per thread: the backlog scan and the CLI read in other threads.
    results: list[bool] = []

    def round_trips(n: int) -> None:
        items = [orjson.dumps({"seq": k, "thread": n}) for k in range(200)]
        results.append(all(decode_items(encode_items(items)) == items for _ in range(50)))

    threads = [threading.Thread(target=round_trips, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == [True] * 4


def test_kinds_are_schema_families() -> None:
    assert kind_of("edgegw.telemetry/1") == "telemetry"
    assert kind_of("edgegw.event/1") == "event"
    assert kind_of("edgegw.gap/1") == "gap"
