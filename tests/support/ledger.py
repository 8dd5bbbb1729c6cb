"""Counting what went in and what came out: the proof behind "nothing lost".

Every wait here is progress-based (tests.support.wait.until_progress): the test's paho
subscriber receives far slower than the gateway sends (a 27,000-message backlog took 47 s
here), so a wait goes on while seqs keep arriving and fails when they stop, naming the ones
missing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import orjson

from edgegw.outbox.store import read_stats, read_waiting
from tests.support.subscriber import Received, Subscriber
from tests.support.wait import STALL, until, until_progress


def telemetry(messages: list[Received]) -> list[dict[str, Any]]:
    """Every data message (telemetry, events, gap notices): those with a seq."""
    out = []
    for message in messages:
        if message.topic.endswith("/status") or "/schemas/" in message.topic:
            continue
        payload = orjson.loads(message.payload)
        if isinstance(payload, dict) and payload.get("schema") == "edgegw.batch/1":
            out.extend(payload["items"])  # each item keeps its own id and seq
        elif isinstance(payload, dict) and "seq" in payload:
            out.append(payload)
    return out


def identical_duplicates(messages: list[Received]) -> tuple[int, int]:
    """(distinct ids, duplicates); AssertionError if a resend differs from its first copy."""
    first: dict[str, bytes] = {}
    duplicates = 0
    for message in messages:
        if message.topic.endswith("/status") or "/schemas/" in message.topic:
            continue
        key = orjson.loads(message.payload).get("id")
        if key is None:
            continue
        if key in first:
            duplicates += 1
            assert first[key] == message.payload, f"id {key} was sent with other content"
        else:
            first[key] = message.payload
    return len(first), duplicates


def stored(outbox_path: str) -> list[dict[str, Any]]:
    """Messages still waiting in the outbox file."""
    return read_waiting(outbox_path)


def ranges(numbers: Iterable[int], limit: int = 5) -> str:
    """`1201..1250, 1300` for a set of numbers: the first `limit` runs, then how many more."""
    runs: list[list[int]] = []
    for n in sorted(numbers):
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    shown = ", ".join(f"{a}..{b}" if b > a else str(a) for a, b in runs[:limit])
    return shown + (f" and {len(runs) - limit} more runs" if len(runs) > limit else "")


class Tally:
    """What a subscriber received so far: its data items (telemetry, batch items, gap notices)
    and their seqs, each message parsed once however often the test looks."""

    def __init__(self, subscriber: Subscriber) -> None:
        self.subscriber = subscriber
        self.items: list[dict[str, Any]] = []
        self.seqs: set[int] = set()
        self._parsed = 0

    def refresh(self) -> Tally:
        new = self.subscriber.since(self._parsed)
        self._parsed += len(new)
        items = telemetry(new)
        self.items.extend(items)
        self.seqs.update(p["seq"] for p in items)
        return self

    def count(self) -> int:
        """Data items received (repeats included)."""
        return len(self.refresh().items)

    async def wait_items(self, n: int, *, what: str = "data items received") -> None:
        """Until `n` data items arrived, for as long as they keep arriving."""
        await until_progress(self.count, n, what=what)

    async def wait_seqs(self, expected: set[int], *, stall: float = STALL) -> None:
        """Until every seq in `expected` arrived, for as long as new ones keep arriving;
        AssertionError naming the seqs missing once none arrived for `stall` s."""

        def received() -> int:
            return len(expected & self.refresh().seqs)

        def missing() -> str:
            absent = expected - self.seqs
            return f"{len(absent)} seqs never arrived: {ranges(absent)}"

        await until_progress(
            received, len(expected), stall=stall, what="seqs received", missing=missing
        )


def acknowledged_through(outbox_path: str) -> int:
    """The highest seq up to which every row has left the outbox (acknowledged and deleted),
    as the file shows it."""
    stats = read_stats(outbox_path)
    if stats.depth == 0 or stats.first_seq is None:
        return stats.last_seq
    return stats.first_seq - 1


async def backlog_sent(outbox_path: str, *, stall: float = STALL) -> None:
    """Until every row committed so far has been acknowledged, for as long as the outbox keeps
    draining; then until the outbox is empty at one look (the gateway keeps reading and the
    forwarder keeps up with that)."""
    target = read_stats(outbox_path).last_seq

    def waiting() -> str:
        stats = read_stats(outbox_path)
        return f"{stats.depth} rows wait in the outbox from seq {stats.first_seq}"

    await until_progress(
        lambda: acknowledged_through(outbox_path),
        target,
        stall=stall,
        what="seqs acknowledged",
        missing=waiting,
    )
    await until(
        lambda: read_stats(outbox_path).depth == 0, 20, "the outbox empty", describe=waiting
    )


async def delivered_and_stored(
    subscriber: Subscriber, outbox_path: str, *, stall: float = STALL
) -> tuple[list[dict[str, Any]], int]:
    """What the consumer received plus what still waits in the outbox, and the last seq.

    Call it once the gateway has stopped. The broker may still be handing this subscriber
    thousands of messages: it waits while the acknowledged seqs keep arriving and fails, naming
    the missing ones, when none arrived for `stall` s.
    """
    stats = read_stats(outbox_path)
    left = stored(outbox_path)
    sent = set(range(1, stats.last_seq + 1)) - {p["seq"] for p in left}
    tally = Tally(subscriber)
    await tally.wait_seqs(sent, stall=stall)
    return tally.items + left, stats.last_seq


def assert_complete(received: list[dict[str, Any]], last_seq: int) -> dict[int, str]:
    """Every seq 1..last_seq arrived, each always with the same id, and nothing else."""
    id_of_seq: dict[int, str] = {}
    for message in received:
        previous = id_of_seq.setdefault(message["seq"], message["id"])
        assert previous == message["id"], f"seq {message['seq']} arrived with two ids"
    missing = sorted(set(range(1, last_seq + 1)) - set(id_of_seq))
    assert not missing, f"{len(missing)} seqs never arrived, first {missing[:10]}"
    assert max(id_of_seq) == last_seq
    assert len(set(id_of_seq.values())) == last_seq, "two seqs share an id"
    return id_of_seq


def assert_unbroken_runs(received: list[dict[str, Any]], stops: int = 0) -> int:
    """Each bench tag increments at every read: its distinct values form one unbroken run.

    `stops` clean stops in between may each have cancelled one read in flight (the register
    moved on, the reply was never taken: nothing was accepted), so each tag may miss that
    many values; a real loss shows as more.
    """
    by_tag: dict[str, set[int]] = defaultdict(set)
    for message in received:
        if message.get("quality") == "good" and "tag" in message:
            by_tag[message["tag"]].add(message["value"])
    for tag, seen in by_tag.items():
        missing = (max(seen) - min(seen) + 1) - len(seen)
        assert missing <= stops, f"{tag} lost {missing} values (allowed {stops})"
    return sum(len(seen) for seen in by_tag.values())
