"""Counting what went in and what came out: the proof behind "nothing lost"."""

from __future__ import annotations

import contextlib
import sqlite3
from collections import defaultdict
from typing import Any

import orjson

from edgegw.outbox import read_stats
from tests.support.subscriber import Received, Subscriber


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
    with contextlib.closing(sqlite3.connect(outbox_path)) as db:
        return [
            orjson.loads(row[0]) for row in db.execute("SELECT payload FROM outbox ORDER BY seq")
        ]


async def delivered_and_stored(
    subscriber: Subscriber, outbox_path: str
) -> tuple[list[dict[str, Any]], int]:
    """What the consumer received plus what still waits in the outbox, and the last seq."""
    stats = read_stats(outbox_path)
    left = stored(outbox_path)
    sent = set(range(1, stats.last_seq + 1)) - {p["seq"] for p in left}
    # The gateway drains a backlog faster than this paho subscriber (QoS 1, 20 in flight at the
    # broker) receives it: the broker may still be handing over thousands after the stop.
    received = await subscriber.wait_for(
        lambda m: {p["seq"] for p in telemetry(m)} >= sent, 40, what="every acknowledged seq"
    )
    return telemetry(received) + left, stats.last_seq


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
