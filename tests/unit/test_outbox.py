"""The outbox on a real SQLite file: seq, keys, claims, deletes, restarts, retention."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import time
from pathlib import Path

import orjson
import pytest

from edgegw.outbox.segments import StoredEvent
from edgegw.outbox.store import Outbox, PendingEvent, read_stats


def event(
    key: str, created: float | None = None, schema: str = "edgegw.telemetry/1", size: int = 0
) -> PendingEvent:
    value = os.urandom(size // 2).hex() if size else 1  # random: a segment compresses "x" * n
    payload = {"schema": schema, "id": key, "value": value, "seq": 0, "trace": "t"}
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
    assert {len(row) for row in rows} == {len(StoredEvent._fields)}  # made by tuple.__new__
    assert [orjson.loads(row.payload)["seq"] for row in rows] == [1, 2, 3]
    assert [row.id for row in rows] == ["k1", "k2", "k3"]
    assert outbox.depth == 3


async def test_a_telemetry_id_twice_in_one_group_is_kept_once_without_gaps(
    outbox: Outbox,
) -> None:
    await outbox.append([event("k1"), event("k2")])
    # Same key twice in one group: kept once. A key committed in an earlier group is not
    # looked up (schema 5: telemetry ids are not indexed; consumers dedupe by id, as they must
    # for at-least-once delivery anyway): it gets a seq of its own.
    assert await outbox.append([event("k2"), event("k3"), event("k3"), event("k4")]) == 3
    rows = await outbox.claim(0, 10)
    assert [(row.seq, row.id) for row in rows] == [
        (1, "k1"),
        (2, "k2"),
        (3, "k2"),
        (4, "k3"),
        (5, "k4"),
    ]
    assert outbox.duplicates == 1


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


async def test_retention_by_values_drops_oldest_segments_counts_and_announces_the_gap(
    tmp_path: Path,
) -> None:
    box = Outbox(str(tmp_path / "o.sqlite3"), max_rows=1000, gateway="gw1", gap_topic="g/gap")
    await box.open()
    for start in range(0, 1200, 100):  # commit groups of 100: a segment each
        await box.append([event(f"k{i}") for i in range(start, start + 100)])
    rows = await box.claim(0, 5000)
    gaps = [row for row in rows if row.kind == "gap"]
    messages = [orjson.loads(gap.payload) for gap in gaps]
    # Whole segments went, oldest first, each drop announced where it happened in the stream.
    dropped = [seq for m in messages for a, b in m["dropped"] for seq in range(a, b + 1)]
    assert dropped == list(range(1, box.dropped + 1))
    assert box.dropped % 100 == 0
    assert all(m["reason"] == "max_rows" and m["gateway"] == "gw1" for m in messages)
    assert sum(m["count"] for m in messages) == box.dropped
    assert all(gap.schema == "edgegw.gap/1" for gap in gaps)
    # Every seq assigned is either kept or announced as dropped; the limit holds.
    kept = [row.seq for row in rows]
    assert sorted(kept + dropped) == list(range(1, box.last_seq + 1))
    assert box.depth == len(kept) <= 1000 + 1000 // 100
    await box.close()
    assert read_stats(box.path).dropped == box.dropped


async def test_retention_drops_telemetry_before_business_events(tmp_path: Path) -> None:
    box = Outbox(str(tmp_path / "o.sqlite3"), max_rows=1000)
    await box.open()
    business = [event(f"e{i}", schema="edgegw.event/1") for i in range(5)]
    await box.append(business)
    for start in range(0, 1100, 100):
        await box.append([event(f"t{i}") for i in range(start, start + 100)])
    rows = await box.claim(0, 5000)
    assert [row.id for row in rows[:5]] == [f"e{i}" for i in range(5)]
    gaps = [orjson.loads(row.payload) for row in rows if row.kind == "gap"]
    assert gaps
    # Only telemetry went (seq 6 on), oldest first, in whole segments.
    dropped = [seq for m in gaps for a, b in m["dropped"] for seq in range(a, b + 1)]
    assert dropped == list(range(6, 6 + len(dropped)))
    await box.close()


async def test_retention_by_age(outbox: Outbox) -> None:
    now = time.time()
    old = [event(f"old{i}", created=now - 8 * 86400) for i in range(3)]
    old_business = event("old-event", created=now - 8 * 86400, schema="edgegw.event/1")
    await outbox.append([*old, old_business])
    await outbox.append([event("new", created=now)])
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
    await outbox.append([event("c")])
    await outbox.delete_acknowledged([1])  # part of a segment: it stays, 1 is not waiting
    stats = read_stats(outbox.path)
    assert (stats.depth, stats.first_seq, stats.last_seq) == (2, 2, 3)
    await outbox.delete_acknowledged([2])  # the whole segment: it leaves
    stats = read_stats(outbox.path)
    assert (stats.depth, stats.first_seq, stats.last_seq) == (1, 3, 3)
    assert stats.file_bytes > 0


def read_bytes(path: str) -> bytes:
    return Path(path).read_bytes()


def damage_index(path: Path) -> None:
    """Overwrite the page header of the event id index: quick_check fails, while the
    segments' own pages still read."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        root = db.execute(
            "SELECT rootpage FROM sqlite_master WHERE type='index' AND tbl_name='event_keys'"
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
    await box.append([event(f"k{i}") for i in range(10)])
    await box.append([event(f"k{i}") for i in range(10, 50)])
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
            return int(db.execute("SELECT coalesce(sum(count), 0) FROM segments").fetchone()[0])
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
            assert other.execute("SELECT sum(count) FROM segments").fetchone()[0] == 100
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
        (seq, f"k{seq}", "edgegw.telemetry/1", "a/b", orjson.dumps({"id": f"k{seq}", "seq": seq}),
         "t", 1.0)
        for seq in (6, 7)
    ]  # fmt: skip
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
        assert await box.append([event("k8")]) == 1
        assert [r.seq for r in await box.claim(7, 10)] == [8]
    finally:
        await box.close()
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone() == (5,)
    names = {row[0] for row in check.execute("SELECT name FROM sqlite_master")}
    key_columns = {row[1] for row in check.execute("PRAGMA table_info(event_keys)")}
    check.close()
    assert "outbox_v2" not in names
    assert "outbox" not in names
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
        (
            12,
            "t12",
            "edgegw.telemetry/1",
            "a/b",
            orjson.dumps({"id": "t12", "seq": 12}),
            "t",
            1.0,
            5,
        ),
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
    assert "outbox schema migrated from version 3 to 5" in caplog.text
    assert (
        "business event batch.completed key {batch: B1} detected again; not sent twice (what "
        "was sent under its id is not known: an older edgegw sent it)"
    ) in caplog.text
    with contextlib.closing(sqlite3.connect(path)) as check:
        assert check.execute("PRAGMA user_version").fetchone() == (5,)
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


async def test_a_version_4_backlog_becomes_segments_with_every_seq_and_payload(
    tmp_path: Path,
) -> None:
    """The upgrade of a line that was down for a while: a version 4 file holding a backlog of
    two sources interleaved with business events, a gap in seq from acknowledged rows, and a
    quarantine record. Every message comes out again with its seq and its exact bytes."""
    path = tmp_path / "outbox.sqlite3"
    backlog = []
    for seq in range(1, 3001):
        if seq in range(500, 600):
            continue  # acknowledged and deleted before the upgrade
        if seq % 250 == 0:
            body = {"schema": "edgegw.event/1", "id": f"e{seq}", "type": "batch.completed"}
            backlog.append((seq, f"e{seq}", "edgegw.event/1", "ev", body, 0))
        else:
            source = "press" if seq % 3 else "filler"
            body = {"schema": "edgegw.telemetry/1", "id": f"t{seq}", "source": source}
            backlog.append((seq, f"t{seq}", "edgegw.telemetry/1", "t", body, seq * 1000))
    with contextlib.closing(sqlite3.connect(path)) as old:
        old.executescript(_V3_OUTBOX)
        old.execute("ALTER TABLE event_keys ADD COLUMN digest TEXT")
        old.execute("ALTER TABLE event_keys ADD COLUMN data BLOB")
        for column in ("count INTEGER NOT NULL DEFAULT 1", "last_value BLOB", "last_ts REAL"):
            old.execute(f"ALTER TABLE quarantine ADD COLUMN {column}")
        old.execute("UPDATE meta SET value = 3000 WHERE name = 'last_seq'")
        old.executemany(
            "INSERT INTO outbox VALUES (?,?,?,?,?,?,?,?)",
            [
                (seq, key, schema, topic, orjson.dumps(body | {"seq": seq}), "tr", 1.0, key_ts)
                for seq, key, schema, topic, body, key_ts in backlog
            ],
        )
        old.execute(
            "INSERT INTO quarantine(id, kind, subject, rule, value, reason, topic, payload, "
            "trace, ts, created) VALUES ('q1','telemetry','press.p','range','130','too high',"
            "'a/b',NULL,'t',10.0,10.0)"
        )
        old.execute("PRAGMA user_version=4")
        old.commit()

    box = Outbox(str(path))
    await box.open()
    try:
        assert box.depth == len(backlog)
        assert box.last_seq == 3000
        rows = await box.claim(0, 10_000)
        assert [(r.seq, r.payload) for r in rows] == [
            (seq, orjson.dumps(body | {"seq": seq})) for seq, _, _, _, body, _ in backlog
        ]
        assert {r.kind for r in rows if r.id.startswith("e")} == {"event"}
        assert {r.source for r in rows if r.id.startswith("t")} == {"press", "filler"}
        segments = await box.segments(limit=10_000)
        assert all(len({(s.kind, s.source)}) == 1 for s in segments)
        assert all(s.size == len(s.items) <= 1000 for s in segments)
        # Runs of consecutive seqs of one source: never across a gap in seq.
        assert all(
            [orjson.loads(i)["seq"] for i in s.items]
            == list(range(s.first_seq, s.first_seq + s.size))
            for s in segments
        )
        assert await box.append([event("new")]) == 1
        assert [r.seq for r in await box.claim(3000, 10)] == [3001]
    finally:
        await box.close()
    with contextlib.closing(sqlite3.connect(path)) as check:
        assert check.execute("PRAGMA user_version").fetchone() == (5,)
        assert check.execute("SELECT count(*) FROM quarantine").fetchone() == (1,)
        names = {row[0] for row in check.execute("SELECT name FROM sqlite_master")}
    assert "outbox" not in names


async def test_a_partly_acknowledged_segment_is_sent_again_only_in_its_unacknowledged_part(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "outbox.sqlite3")
    box = Outbox(path)
    await box.open()
    await box.append([event(f"k{i}") for i in range(10)])  # one segment, seq 1..10
    assert await box.delete_acknowledged([1, 2, 3, 7]) == 0  # the segment stays
    assert [row.seq for row in await box.claim(0, 20)] == [4, 5, 6, 8, 9, 10]
    await box.close()

    again = Outbox(path)  # the acknowledged ranges were kept in the file
    await again.open()
    assert [row.seq for row in await again.claim(0, 20)] == [4, 5, 6, 8, 9, 10]
    assert await again.delete_acknowledged([4, 5, 6, 8, 9, 10]) == 10  # now it leaves whole
    assert again.depth == 0
    assert await again.claim(0, 20) == []
    await again.close()
    assert read_stats(path).depth == 0
