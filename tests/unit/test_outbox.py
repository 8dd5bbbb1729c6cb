"""The outbox on a real SQLite file: seq, keys, claims, deletes, restarts, retention."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from edgegw.outbox import Outbox, PendingEvent, read_stats


def event(key: str, created: float | None = None) -> PendingEvent:
    payload = {"schema": "edgegw.telemetry/1", "id": key, "value": 1, "seq": 0, "trace": "t"}
    return PendingEvent(key, "edgegw.telemetry/1", "a/b", payload, "t", created or time.time())


@pytest.fixture
async def outbox(tmp_path: Path):  # type: ignore[no-untyped-def]
    box = Outbox(str(tmp_path / "outbox.sqlite3"))
    await box.open()
    yield box
    await box.close()


async def test_seq_is_assigned_at_commit_and_written_into_the_payload(outbox: Outbox) -> None:
    assert await outbox.append([event("k1"), event("k2"), event("k3")]) == 3
    rows = await outbox.claim(0, 10)
    assert [row.seq for row in rows] == [1, 2, 3]
    assert [orjson.loads(row.payload)["seq"] for row in rows] == [1, 2, 3]
    assert [row.id for row in rows] == ["k1", "k2", "k3"]
    assert outbox.depth == 3


async def test_duplicate_keys_are_refused_without_gaps(outbox: Outbox) -> None:
    await outbox.append([event("k1"), event("k2")])
    # Same key twice in one group, and a key already stored.
    assert await outbox.append([event("k2"), event("k3"), event("k3"), event("k4")]) == 2
    rows = await outbox.claim(0, 10)
    assert [(row.seq, row.id) for row in rows] == [(1, "k1"), (2, "k2"), (3, "k3"), (4, "k4")]
    assert outbox.duplicates == 2


async def test_claim_pages_in_seq_order(outbox: Outbox) -> None:
    await outbox.append([event(f"k{i}") for i in range(10)])
    first = await outbox.claim(0, 4)
    second = await outbox.claim(first[-1].seq, 4)
    assert [row.seq for row in first + second] == list(range(1, 9))


async def test_seq_continues_after_restart_even_when_emptied(tmp_path: Path) -> None:
    path = str(tmp_path / "outbox.sqlite3")
    box = Outbox(path)
    await box.open()
    await box.append([event(f"k{i}") for i in range(5)])
    assert await box.delete_acknowledged([1, 2, 3, 4, 5]) == 5
    await box.close()

    again = Outbox(path)
    await again.open()
    assert again.depth == 0
    await again.append([event("k-new")])
    rows = await again.claim(0, 10)
    assert [row.seq for row in rows] == [6]
    await again.close()


async def test_unacknowledged_rows_survive_a_restart_with_key_and_seq(tmp_path: Path) -> None:
    path = str(tmp_path / "outbox.sqlite3")
    box = Outbox(path)
    await box.open()
    await box.append([event(f"k{i}") for i in range(4)])
    await box.delete_acknowledged([1, 3])
    before = [(row.seq, row.id, row.payload) for row in await box.claim(0, 10)]
    await box.close()

    again = Outbox(path)
    await again.open()
    after = [(row.seq, row.id, row.payload) for row in await again.claim(0, 10)]
    assert after == before
    assert [seq for seq, _, _ in after] == [2, 4]
    await again.close()


async def test_retention_by_rows_drops_oldest_and_counts(tmp_path: Path) -> None:
    box = Outbox(str(tmp_path / "o.sqlite3"), max_rows=1000)
    await box.open()
    await box.append([event(f"k{i}") for i in range(1200)])
    rows = await box.claim(0, 5000)
    assert len(rows) == 1000
    assert rows[0].seq == 201
    assert box.dropped == 200
    await box.close()
    assert read_stats(box.path).dropped == 200


async def test_retention_by_age(outbox: Outbox) -> None:
    now = time.time()
    old = [event(f"old{i}", created=now - 8 * 86400) for i in range(3)]
    await outbox.append([*old, event("new", created=now)])
    assert await outbox.expire(now) == 3
    assert [row.id for row in await outbox.claim(0, 10)] == ["new"]


async def test_stats_while_open(outbox: Outbox) -> None:
    await outbox.append([event("a"), event("b")])
    await outbox.delete_acknowledged([2])
    stats = read_stats(outbox.path)
    assert (stats.depth, stats.first_seq, stats.last_seq) == (1, 1, 2)
    assert stats.file_bytes > 0


async def test_damaged_file_is_reported_plainly(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    from edgegw.errors import OutboxError

    box = Outbox(str(path))
    with pytest.raises(OutboxError, match="outbox"):
        await box.open()
