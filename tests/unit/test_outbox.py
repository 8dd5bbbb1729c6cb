"""The outbox on a real SQLite file: seq, keys, claims, deletes, restarts, retention."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import time
from pathlib import Path

import orjson
import pytest

from edgegw.outbox.store import Outbox, PendingEvent, read_stats


def event(
    key: str, created: float | None = None, schema: str = "edgegw.telemetry/1", size: int = 0
) -> PendingEvent:
    payload = {"schema": schema, "id": key, "value": "x" * size or 1, "seq": 0, "trace": "t"}
    return PendingEvent(key, schema, "a/b", payload, "t", created or time.time())


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


async def test_retention_by_rows_drops_oldest_counts_and_announces_the_gap(
    tmp_path: Path,
) -> None:
    box = Outbox(str(tmp_path / "o.sqlite3"), max_rows=1000, gateway="gw1", gap_topic="g/gap")
    await box.open()
    await box.append([event(f"k{i}") for i in range(1200)])
    rows = await box.claim(0, 5000)
    # 200 over the limit plus 1 % of room, so the next commits do not each drop again
    assert box.dropped == 210
    gap = rows[-1]
    assert (gap.schema, gap.topic, gap.seq) == ("edgegw.gap/1", "g/gap", 1201)
    message = orjson.loads(gap.payload)
    assert message["dropped"] == [[1, 210]]
    assert (message["count"], message["reason"], message["gateway"]) == (210, "max_rows", "gw1")
    assert [row.seq for row in rows[:-1]] == list(range(211, 1201))
    await box.close()
    assert read_stats(box.path).dropped == 210


async def test_retention_drops_telemetry_before_business_events(tmp_path: Path) -> None:
    box = Outbox(str(tmp_path / "o.sqlite3"), max_rows=1000)
    await box.open()
    business = [event(f"e{i}", schema="edgegw.event/1") for i in range(5)]
    await box.append([*business, *(event(f"t{i}") for i in range(1100))])
    rows = await box.claim(0, 5000)
    assert [row.id for row in rows[:5]] == [f"e{i}" for i in range(5)]
    message = orjson.loads(rows[-1].payload)
    assert message["dropped"] == [[6, 120]]  # only telemetry went
    await box.close()


async def test_retention_by_age(outbox: Outbox) -> None:
    now = time.time()
    old = [event(f"old{i}", created=now - 8 * 86400) for i in range(3)]
    old_business = event("old-event", created=now - 8 * 86400, schema="edgegw.event/1")
    await outbox.append([*old, old_business, event("new", created=now)])
    assert await outbox.expire(now) == 3
    rows = await outbox.claim(0, 10)
    # the expired event stays while any telemetry is left to drop instead
    assert [row.id for row in rows[:2]] == ["old-event", "new"]
    assert orjson.loads(rows[2].payload)["dropped"] == [[1, 3]]


async def test_retention_by_size_keeps_the_data_under_max_bytes(tmp_path: Path) -> None:
    box = Outbox(str(tmp_path / "o.sqlite3"), max_bytes=400_000)
    await box.open()
    for start in range(0, 6000, 500):
        await box.append([event(f"k{i}", size=400) for i in range(start, start + 500)])
        await box.expire()
    assert await box._used_bytes() <= 400_000
    assert box.dropped > 0
    rows = await box.claim(0, 10_000)
    kept = [row for row in rows if row.schema != "edgegw.gap/1"]
    gaps = [orjson.loads(row.payload) for row in rows if row.schema == "edgegw.gap/1"]
    assert sum(gap["count"] for gap in gaps) == box.dropped
    assert len(kept) + box.dropped == 6000
    await box.close()


async def test_stats_while_open(outbox: Outbox) -> None:
    await outbox.append([event("a"), event("b")])
    await outbox.delete_acknowledged([2])
    stats = read_stats(outbox.path)
    assert (stats.depth, stats.first_seq, stats.last_seq) == (1, 1, 2)
    assert stats.file_bytes > 0


def read_bytes(path: str) -> bytes:
    return Path(path).read_bytes()


def damage_index(path: Path) -> None:
    """Overwrite the page header of the outbox's id index: quick_check fails, while the
    table's own pages still read."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        root = db.execute(
            "SELECT rootpage FROM sqlite_master WHERE type='index' AND tbl_name='outbox'"
        ).fetchone()[0]
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
    with open(path, "r+b") as handle:
        handle.seek((root - 1) * page_size)
        handle.write(b"\x0d\xff\xff\xff" * 8)


async def test_a_file_that_is_no_database_is_moved_aside_and_seq_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "outbox.sqlite3"
    box = Outbox(str(path), gateway="gw1")
    await box.open()
    await box.append([event(f"k{i}") for i in range(10)])
    await box.close()
    garbage = b"this is not a database" * 200
    path.write_bytes(garbage)  # e.g. a controller's write cache lost on power failure

    again = Outbox(str(path), gateway="gw1")
    await again.open()
    assert again.corrupt_moved_to is not None
    assert read_bytes(again.corrupt_moved_to) == garbage  # kept, never deleted
    rows = await again.claim(0, 10)
    assert [row.schema for row in rows] == ["edgegw.gap/1"]
    gap = orjson.loads(rows[0].payload)
    assert gap["count"] is None
    assert "corrupt outbox moved to" in gap["reason"]
    # above every seq ever assigned (1..10), thanks to the reservation file
    assert rows[0].seq > 10
    await again.append([event("after")])
    assert (await again.claim(rows[0].seq, 10))[0].seq == rows[0].seq + 1
    await again.close()
    assert any("ALARM outbox" in r.message and "damaged" in r.message for r in caplog.records)


async def test_readable_rows_of_a_damaged_file_are_carried_over(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    box = Outbox(str(path), gateway="gw1")
    await box.open()
    await box.append([event(f"k{i}") for i in range(50)])
    await box.delete_acknowledged(range(1, 11))
    await box.close()
    damage_index(path)

    again = Outbox(str(path), gateway="gw1")
    await again.open()
    assert again.corrupt_moved_to is not None
    rows = await again.claim(0, 100)
    carried = [row.id for row in rows if row.schema != "edgegw.gap/1"]
    assert carried == [f"k{i}" for i in range(10, 50)]
    assert [row.seq for row in rows[:40]] == list(range(11, 51))
    await again.close()


def rows_in_main_file(path: Path, scratch: Path) -> int:
    """Rows of the outbox that the main database file holds by itself, without its -wal file:
    what a copy of the file alone, taken now, contains. Rows get there only through a
    checkpoint, and with synchronous=normal SQLite fsyncs the WAL before every checkpoint and
    the main file after it: rows in the main file are rows a power cut cannot take."""
    copy = scratch / f"main-only-{time.monotonic_ns()}.sqlite3"
    shutil.copyfile(path, copy)  # not the -wal file: a commit only in the WAL is not in here
    try:
        with contextlib.closing(sqlite3.connect(copy)) as db:
            return int(db.execute("SELECT count(*) FROM outbox").fetchone()[0])
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):
            raise
        return 0  # not even the table: it was created in the WAL only


async def test_normal_mode_syncs_the_wal_on_request(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    box = Outbox(str(path), synchronous="normal")
    await box.open()
    try:
        await box.append([event(f"k{i}") for i in range(100)])
        # Committed (a second connection sees the rows: a process crash loses nothing), but
        # only in the WAL, which synchronous=normal does not fsync at commit.
        with contextlib.closing(sqlite3.connect(path)) as other:
            assert other.execute("SELECT count(*) FROM outbox").fetchone()[0] == 100
        assert rows_in_main_file(path, tmp_path) == 0
        await box.sync()
        # While the outbox is still open (close() checkpoints by itself, which would hide a
        # sync() that does nothing): the rows are now in the main file.
        assert rows_in_main_file(path, tmp_path) == 100
    finally:
        await box.close()


async def test_a_gap_message_follows_its_schema(tmp_path: Path) -> None:
    import jsonschema

    from edgegw.pipeline.events.schemas import envelope

    box = Outbox(str(tmp_path / "o.sqlite3"), max_rows=1000, gateway="gw1", gap_topic="g")
    await box.open()
    await box.append([event(f"k{i}") for i in range(1100)])
    gap = [row for row in await box.claim(0, 2000) if row.schema == "edgegw.gap/1"]
    jsonschema.validate(orjson.loads(gap[0].payload), envelope("edgegw.gap-1"))
    await box.close()


async def test_duplicates_with_their_key_timestamp_are_refused(outbox: Outbox) -> None:
    def stamped(key: str, micros: int) -> PendingEvent:
        return event(key)._replace(key_ts=micros)

    await outbox.append([stamped("k1", 10), stamped("k2", 10), stamped("k3", 20)])
    assert await outbox.append([stamped("k2", 10), stamped("k3", 20), stamped("k4", 20)]) == 1
    assert [(row.seq, row.id) for row in await outbox.claim(0, 10)] == [
        (1, "k1"),
        (2, "k2"),
        (3, "k3"),
        (4, "k4"),
    ]
    assert outbox.duplicates == 2


_V2_OUTBOX = """
CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, schema TEXT NOT NULL, topic TEXT NOT NULL,
    payload BLOB NOT NULL, trace TEXT NOT NULL, created REAL NOT NULL
);
CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO meta(name, value) VALUES ('last_seq', 7), ('dropped', 2);
CREATE TABLE event_keys (id TEXT PRIMARY KEY, created REAL NOT NULL);
PRAGMA user_version=2;
"""


async def test_a_version_2_outbox_is_migrated_with_its_rows_and_counters(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(_V2_OUTBOX)
    rows = [
        (seq, f"k{seq}", "edgegw.telemetry/1", "a/b", orjson.dumps({"seq": seq}), "t", 1.0)
        for seq in (6, 7)
    ]
    old.executemany("INSERT INTO outbox VALUES (?,?,?,?,?,?,?)", rows)
    old.commit()
    old.close()

    box = Outbox(str(path))
    await box.open()
    try:
        assert (box.depth, box.dropped) == (2, 2)
        assert [(r.seq, r.id, r.payload) for r in await box.claim(0, 10)] == [
            (seq, key, payload) for seq, key, _, _, payload, _, _ in rows
        ]
        assert await box.append([event("k7"), event("k8")]) == 1  # k7 is stored already
        assert [r.seq for r in await box.claim(7, 10)] == [8]
    finally:
        await box.close()
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone() == (4,)
    names = {row[0] for row in check.execute("SELECT name FROM sqlite_master")}
    key_columns = {row[1] for row in check.execute("PRAGMA table_info(event_keys)")}
    check.close()
    assert "outbox_v2" not in names
    assert {"digest", "data"} <= key_columns


# The schema of version 3 as edgegw wrote it (outbox, meta, event_keys, quarantine).
_V3_OUTBOX = """
CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL, schema TEXT NOT NULL, topic TEXT NOT NULL,
    payload BLOB NOT NULL, trace TEXT NOT NULL, created REAL NOT NULL,
    key_ts INTEGER NOT NULL DEFAULT 0, UNIQUE (key_ts, id)
);
CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO meta(name, value) VALUES ('last_seq', 12), ('dropped', 0);
CREATE TABLE event_keys (id TEXT PRIMARY KEY, created REAL NOT NULL);
CREATE TABLE quarantine (
    qid INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, kind TEXT NOT NULL,
    subject TEXT NOT NULL, rule TEXT NOT NULL, value BLOB NOT NULL, reason TEXT NOT NULL,
    topic TEXT NOT NULL, payload BLOB, trace TEXT NOT NULL, ts REAL NOT NULL,
    created REAL NOT NULL, released REAL, UNIQUE (id, ts)
);
PRAGMA user_version=3;
"""


async def test_a_version_3_outbox_is_migrated_with_backlog_keys_and_quarantine(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from edgegw.outbox.quarantine import QuarantineRecord

    path = tmp_path / "outbox.sqlite3"
    business = {"schema": "edgegw.event/1", "id": "e11", "type": "batch.completed"}
    backlog = [
        (11, "e11", "edgegw.event/1", "ev", orjson.dumps(business | {"seq": 11}), "t", 1.0, 0),
        (12, "t12", "edgegw.telemetry/1", "a/b", orjson.dumps({"seq": 12}), "t", 1.0, 5),
    ]
    held = ("q1", "telemetry", "cell.p", "range", b"130", "130 is above max 100", "a/b", None)
    with contextlib.closing(sqlite3.connect(path)) as old:
        old.executescript(_V3_OUTBOX)
        old.executemany("INSERT INTO outbox VALUES (?,?,?,?,?,?,?,?)", backlog)
        old.executemany("INSERT INTO event_keys VALUES (?, ?)", [("e11", time.time())])
        old.execute(
            "INSERT INTO quarantine(id, kind, subject, rule, value, reason, topic, payload, "
            "trace, ts, created) VALUES (?,?,?,?,?,?,?,?,'t',10.0,10.0)",
            held,
        )
        old.commit()

    box = Outbox(str(path))
    with caplog.at_level("INFO", logger="edgegw.outbox.store"):
        await box.open()
        try:
            assert [(r.seq, r.id, r.payload) for r in await box.claim(0, 10)] == [
                (seq, key, payload) for seq, key, _, _, payload, *_ in backlog
            ]
            # Detected again under a key an older edgegw sent: its data is unknown, so it is
            # taken for the same event (not sent twice), and said so.
            again = business_event("e11", {"good": 5}, batch="B1")
            assert await box.append([again, event("t13")]) == 1
            # The old quarantine record goes on as a lasting violation.
            more = QuarantineRecord(
                "q1", "telemetry", "cell.p", "range", 140, "140 is above max 100", "a/b",
                None, "t", 10.0, time.time(), count=3, last_ts=13.0, continues=True,
            )  # fmt: skip
            await box.append([], [more])
            assert [r.seq for r in await box.claim(12, 10)] == [13]
        finally:
            await box.close()
    assert "outbox schema migrated from version 3 to 4" in caplog.text
    assert (
        "business event batch.completed key {batch: B1} detected again; not sent twice (what "
        "was sent under its id is not known: an older edgegw sent it)"
    ) in caplog.text
    with contextlib.closing(sqlite3.connect(path)) as check:
        assert check.execute("PRAGMA user_version").fetchone() == (4,)
        rows = check.execute(
            "SELECT id, value, reason, count, last_value, last_ts FROM quarantine"
        ).fetchall()
        assert rows == [("q1", b"130", "130 is above max 100", 4, b"140", 13.0)]
        keys = check.execute("SELECT id, digest, data FROM event_keys").fetchall()
        assert keys == [("e11", None, None)]


def business_event(key: str, data: dict[str, object], batch: str = "B1006") -> PendingEvent:
    payload = {
        "schema": "edgegw.event/1",
        "id": key,
        "gateway": "gw1",
        "type": "batch.completed",
        "key": {"batch": batch},
        "data": data,
        "ts": "2026-01-01T00:00:05.000Z",
        "seq": 0,
        "trace": "tr",
    }
    return PendingEvent(key, "edgegw.event/1", "s/a/L1/events/batch.completed", payload, "tr", 1.0)
