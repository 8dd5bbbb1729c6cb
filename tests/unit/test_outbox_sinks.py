"""The outbox with several sinks: each sink's backlog, what no sink selects, and what is left
when the sinks change between runs. A real SQLite file."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import orjson
import pytest

from edgegw.outbox.backlog import Selector, takes_all
from edgegw.outbox.quarantine import QuarantineRecord
from edgegw.outbox.store import Outbox, PendingEvent, read_stats, read_waiting

pytestmark = pytest.mark.timeout(60)


def telemetry(key: str, source: str, created: float | None = None) -> PendingEvent:
    payload = {"schema": "edgegw.telemetry/1", "id": key, "source": source, "value": 1, "seq": 0}
    return PendingEvent(key, "edgegw.telemetry/1", "a/b", payload, "t", created or time.time())


def business(key: str) -> PendingEvent:
    schema = "edgegw.event/order-started/1"
    payload = {"schema": schema, "id": key, "data": {"order": key}, "seq": 0}
    return PendingEvent(key, schema, "a/e", payload, "t", time.time())


def sources(*patterns: str) -> Selector:
    return lambda kind, source: kind == "telemetry" and source in patterns


async def opened(path: Path, sinks: dict[str, Selector]) -> Outbox:
    box = Outbox(str(path), gateway="gw", sinks=sinks)
    await box.open()
    return box


async def test_each_sink_has_its_own_backlog(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    sinks = {"all": takes_all, "press": sources("press")}
    box = await opened(path, sinks)
    early = time.time() - 100
    await box.append([telemetry(f"p{i}", "press", early) for i in range(3)])  # seq 1..3
    await box.append([telemetry(f"o{i}", "oven") for i in range(2)])  # seq 4..5
    await box.delete_acknowledged([1, 2, 3, 4], "all")

    health = await box.health()
    assert health.sinks["all"].waiting == 1
    assert health.sinks["all"].first_seq == 5
    assert health.sinks["press"].waiting == 3
    assert health.sinks["press"].first_seq == 1
    oldest = health.sinks["press"].oldest_created
    assert oldest is not None
    assert oldest <= early + 1
    assert box.depth == 5  # stored: 4 stays with its segment until 5 is acknowledged
    assert health.oldest_created == oldest

    stats = read_stats(str(path), sinks)  # waiting for some sink: 1..3 for press, 5 for all
    assert (stats.depth, stats.first_seq, stats.last_seq) == (4, 1, 5)
    assert {name: b.waiting for name, b in stats.sinks.items()} == {"all": 1, "press": 3}
    document = stats.as_dict()["sinks"]
    assert document["all"]["first_seq"] == 5
    assert document["press"]["oldest_age_seconds"] >= 99

    await box.delete_acknowledged([1, 2, 3], "press")
    await box.delete_acknowledged([5], "all")
    health = await box.health()
    assert {name: b.waiting for name, b in health.sinks.items()} == {"all": 0, "press": 0}
    assert health.oldest_created is None
    assert box.depth == 0
    await box.close()


async def test_what_no_sink_selects_is_not_stored_and_takes_no_seq(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    box = await opened(tmp_path / "outbox.sqlite3", {"press-only": sources("press")})
    with caplog.at_level(logging.WARNING, logger="edgegw.outbox.store"):
        stored = await box.append(
            [telemetry("p1", "press"), telemetry("o1", "oven"), business("PO1")]
        )
        stored += await box.append([telemetry("o2", "oven"), telemetry("p2", "press")])
    assert stored == 2
    rows = await box.claim(0, 10, "press-only")
    assert [(row.seq, row.id) for row in rows] == [(1, "p1"), (2, "p2")]  # gap-free
    assert [orjson.loads(row.payload)["seq"] for row in rows] == [1, 2]
    assert box.unrouted == 3
    assert (await box.health()).unrouted == 3
    said = [r.getMessage() for r in caplog.records if "no sink selects" in r.getMessage()]
    assert len(said) == 2, said  # once per kind and source, not per commit
    assert any("telemetry of source oven" in line for line in said)
    assert any(line.startswith("no sink selects event:") for line in said)

    # Retention's gap message is not stored either when no sink selects gaps.
    box.max_rows = 500
    for start in range(3, 1003, 100):  # ten segments: the oldest go, the newest stay
        await box.append([telemetry(f"p{i}", "press") for i in range(start, start + 100)])
    assert box.dropped > 0
    stored_kinds = {m["schema"] for m in read_waiting(box.path, None)}  # every stored message
    assert stored_kinds == {"edgegw.telemetry/1"}
    await box.close()


async def test_an_event_no_sink_took_is_not_remembered_as_sent(tmp_path: Path) -> None:
    """Its id must not be recorded: once a sink selects events (config changed, restart), the
    same event detected again is sent, not dropped as "sent before"."""
    path = tmp_path / "outbox.sqlite3"
    box = await opened(path, {"telemetry-only": sources("press")})
    assert await box.append([business("PO1")]) == 0
    await box.close()
    box = await opened(path, {"all": takes_all})
    assert await box.append([business("PO1")]) == 1
    assert [row.id for row in await box.claim(0, 10, "all")] == ["PO1"]
    assert box.known_events == 0
    await box.close()


async def test_a_released_event_waits_in_the_quarantine_while_no_sink_takes_events(
    tmp_path: Path,
) -> None:
    box = await opened(tmp_path / "outbox.sqlite3", {"telemetry-only": sources("press")})
    record = QuarantineRecord(
        "PO9", "event", "order-started", "contract", None, "qty is missing", "a/e",
        {"schema": "edgegw.event/order-started/1", "id": "PO9", "data": {}, "seq": 0}, "t",
        time.time(), time.time(),
    )  # fmt: skip
    await box.append([], [record])
    await box.db.execute("UPDATE quarantine SET released = 1")
    await box.db.commit()
    assert await box.move_released() == 0
    rows = await box.db.execute_fetchall("SELECT id FROM quarantine")
    assert [row[0] for row in rows] == ["PO9"]  # kept, still released, not lost
    await box.close()


async def test_seq_is_not_reused_after_the_newest_segments_were_tidied_away(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.sqlite3"
    box = await opened(path, {"a": sources("press"), "b": sources("oven")})
    await box.append([telemetry(f"p{i}", "press") for i in range(3)])  # 1..3
    await box.append([telemetry(f"o{i}", "oven") for i in range(3)])  # 4..6
    await box.delete_acknowledged([1, 2, 3], "a")
    await box.close()
    box = await opened(path, {"a": sources("press")})  # b removed: 4..6 deleted at start
    assert box.depth == 0
    await box.close()
    box = await opened(path, {"a": sources("press")})  # nothing appended in between
    await box.append([telemetry("p9", "press")])
    assert [row.seq for row in await box.claim(0, 10, "a")] == [7]
    await box.close()


async def test_at_start_what_no_configured_sink_waits_for_is_deleted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "outbox.sqlite3"
    box = await opened(path, {"a": takes_all, "b": takes_all})
    await box.append([telemetry(f"p{i}", "press") for i in range(3)])  # 1..3
    await box.append([telemetry(f"o{i}", "oven") for i in range(3)])  # 4..6
    await box.delete_acknowledged([1, 2, 3, 4, 5], "b")
    await box.delete_acknowledged([6], "a")  # a acknowledged only the last
    await box.close()

    # Sink a is removed: what b acknowledged leaves, b's partial ack of the oven segment stays.
    with caplog.at_level(logging.WARNING, logger="edgegw.outbox.store"):
        box = await opened(path, {"b": takes_all})
    assert box.depth == 3
    assert [row.seq for row in await box.claim(0, 10, "b")] == [6]
    assert any("forgotten: a" in r.getMessage() for r in caplog.records)
    stats = read_stats(str(path), {"b": takes_all})
    assert (stats.depth, stats.first_seq) == (1, 6)
    await box.close()

    # b now selects only the press: the oven segment, which nobody selects, leaves as data
    # loss does (a typo in a select: must not look like delivery): ERROR, counted.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="edgegw.outbox.store"):
        box = await opened(path, {"b": sources("press")})
    assert box.depth == 0
    assert box.dropped == 3
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "selected by no configured sink: telemetry of oven" in errors[0]
    assert "ranges=4-6" in errors[0]
    assert await box.claim(0, 10, "b") == []
    await box.close()
    assert read_stats(str(path), {"b": sources("press")}).depth == 0


async def test_what_no_sink_selects_any_more_is_announced_by_a_gap_message(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.sqlite3"
    box = await opened(path, {"b": takes_all})
    await box.append([telemetry(f"p{i}", "press") for i in range(4)])  # 1..4, not sent
    await box.close()

    box = await opened(path, {"b": lambda kind, _source: kind in ("event", "gap")})
    rows = await box.claim(0, 10, "b")
    assert [row.kind for row in rows] == ["gap"]
    gap = orjson.loads(rows[0].payload)
    assert (gap["dropped"], gap["count"], rows[0].seq) == ([[1, 4]], 4, 5)
    assert gap["reason"] == "selected by no configured sink: telemetry of press"
    await box.close()


async def test_each_reader_is_told_of_new_messages_on_its_own(tmp_path: Path) -> None:
    # One shared event, cleared by the forwarder that woke first, left the other sink's
    # forwarder asleep with new messages committed.
    box = await opened(tmp_path / "outbox.sqlite3", {"a": takes_all, "b": takes_all})
    first, second = box.appended_event(), box.appended_event()
    assert first.is_set()  # what is stored already waits
    assert second.is_set()
    first.clear()
    second.clear()
    await box.append([telemetry("p1", "press")])
    assert first.is_set()
    first.clear()
    assert second.is_set()
    await box.close()
