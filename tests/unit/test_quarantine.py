"""Quarantine semantics on a real outbox file: business-event repeats and conflicts, their
release under a new id, and lasting violations as one record (counted in vs out)."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from edgegw.cli import quarantine as quarantine_cli
from edgegw.outbox.quarantine import QuarantineRecord, conflict_key, data_digest, describe_changes
from edgegw.outbox.store import Outbox, PendingEvent
from edgegw.pipeline.events.schemas import envelope
from edgegw.pipeline.keys import event_key

TOPIC = "s/a/L1/events/batch.completed"
B1006 = event_key("gw1", "batch.completed", [("batch", '"B1006"')])


def completed(data: dict[str, Any], batch: str = "B1006", at: int = 5) -> PendingEvent:
    key = event_key("gw1", "batch.completed", [("batch", orjson.dumps(batch).decode())])
    payload = {
        "schema": "edgegw.event/1",
        "id": key,
        "gateway": "gw1",
        "type": "batch.completed",
        "key": {"batch": batch},
        "data": data,
        "ts": f"2026-01-01T00:00:{at:02d}.000Z",
        "seq": 0,
        "trace": f"trace{at}",
    }
    return PendingEvent(key, "edgegw.event/1", TOPIC, payload, f"trace{at}", 1.0)


def broken(event: PendingEvent, why: str) -> QuarantineRecord:
    """The event as the detector holds it when it breaks its contract."""
    return QuarantineRecord(
        event.id,
        "event",
        "batch.completed",
        "contract",
        event.payload["data"],
        why,
        TOPIC,
        event.payload,
        event.trace,
        1_767_225_612.0,
        1.0,
    )


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    box = Outbox(str(tmp_path / "outbox.sqlite3"), gateway="gw1")
    await box.open()
    yield box
    await box.close()


def held(path: str) -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute("SELECT * FROM quarantine ORDER BY qid")]


async def sent(box: Outbox) -> list[dict[str, Any]]:
    return [orjson.loads(row.payload) for row in await box.claim(0, 100)]


async def test_a_true_repeat_is_not_sent_twice_and_names_type_and_key(
    outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    assert await outbox.append([completed({"good": 21})]) == 1
    with caplog.at_level(logging.INFO, logger="edgegw.outbox.store"):
        assert await outbox.append([completed({"good": 21}, at=9)]) == 0
    assert len(await sent(outbox)) == 1
    assert held(outbox.path) == []
    assert (outbox.known_events, outbox.conflicts) == (1, 0)
    (line,) = [r for r in caplog.records if "detected again" in r.getMessage()]
    assert line.levelno == logging.INFO
    assert line.getMessage() == (
        "business event batch.completed key {batch: B1006} detected again with the same data; "
        "not sent twice"
    )


async def test_other_data_under_a_sent_key_is_a_conflict_held_and_counted(
    outbox: Outbox, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    await outbox.append([completed({"good": 21, "scrap": 0})])
    with caplog.at_level(logging.INFO, logger="edgegw.outbox.store"):
        # Detected 3 times with the PLC's new counts (after a blip, after a restart): one
        # record, counted 3 times; never sent under the old id.
        for at in (5, 7, 8):
            assert await outbox.append([completed({"good": 4, "scrap": 0}, at=at)]) == 0
    assert len(await sent(outbox)) == 1
    assert outbox.conflicts == 3
    (record,) = held(outbox.path)
    reason = "batch.completed key {batch: B1006} was already sent with other data: good 21 → 4"
    assert (record["rule"], record["kind"], record["reason"], record["count"]) == (
        "conflict",
        "event",
        reason,
        3,
    )
    assert orjson.loads(record["value"]) == {
        "sent": {"good": 21, "scrap": 0},
        "detected": {"good": 4, "scrap": 0},
    }
    new_id = conflict_key(B1006, data_digest({"good": 4, "scrap": 0}))
    assert record["id"] == new_id
    quarantine_cli.list_records(outbox.path, since=None, as_json=False)
    listed = capsys.readouterr().out.splitlines()[0]
    assert listed.endswith(
        f"conflict {reason}  (seen 3 times, the last at 2026-01-01T00:00:08.000Z)"
    )
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3
    assert warnings[0].getMessage() == (
        f"business event conflict: {reason}; held in the quarantine (rule conflict): release "
        f"publishes it as id={new_id} supersedes={B1006}, or drop it"
    )


async def test_a_released_conflict_is_sent_once_under_its_own_id(
    outbox: Outbox, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    await outbox.append([completed({"good": 21})])
    await outbox.append([completed({"good": 4}, at=5)])
    (record,) = held(outbox.path)

    assert quarantine_cli.release(outbox.path, str(record["qid"])) == 0
    new_id = conflict_key(B1006, data_digest({"good": 4}))
    assert capsys.readouterr().out == (
        f"released #{record['qid']} (batch.completed id {new_id}, a new event superseding "
        f"{B1006}); the running gateway publishes it within seconds (or at its next start)\n"
    )
    with caplog.at_level(logging.INFO, logger="edgegw.outbox.store"):
        # Seen again before the gateway moved the release: still the one record.
        assert await outbox.append([completed({"good": 4}, at=9)]) == 0
        assert [(r["count"], r["qid"]) for r in held(outbox.path)] == [(2, record["qid"])]
        assert quarantine_cli.release(outbox.path, new_id) == 0  # released twice
        assert "was already released at" in capsys.readouterr().out
        assert await outbox.move_released() == 1
        assert await outbox.move_released() == 0
        # The same conflicting data detected once more: the released event is that data.
        assert await outbox.append([completed({"good": 4}, at=10)]) == 0

    messages = await sent(outbox)
    assert [(m["id"], m.get("supersedes"), m["data"]) for m in messages] == [
        (B1006, None, {"good": 21}),
        (new_id, B1006, {"good": 4}),
    ]
    jsonschema.validate(messages[1], envelope("edgegw.event-1"))
    assert held(outbox.path) == []
    assert (outbox.conflicts, outbox.known_events) == (2, 1)
    text = caplog.text
    published = f"audit: released event published id={new_id} seq=2 trace=trace5"
    assert f"{published} supersedes={B1006}" in text
    assert (
        "business event batch.completed key {batch: B1006} detected again with the same data as "
        f"its released conflict id={new_id}; not sent twice"
    ) in text


async def test_a_conflict_can_be_dropped(
    outbox: Outbox, capsys: pytest.CaptureFixture[str]
) -> None:
    await outbox.append([completed({"good": 21})])
    await outbox.append([completed({"good": 4})])
    (record,) = held(outbox.path)
    assert quarantine_cli.drop(outbox.path, str(record["qid"])) == 0
    assert capsys.readouterr().out == (
        f"dropped #{record['qid']} (batch.completed: batch.completed key {{batch: B1006}} was "
        "already sent with other data: good 21 → 4)\n"
    )
    assert held(outbox.path) == []
    assert await outbox.move_released() == 0
    assert len(await sent(outbox)) == 1


async def test_two_versions_in_one_commit_are_one_event_and_one_conflict(outbox: Outbox) -> None:
    first, second = completed({"good": 21}), completed({"good": 22}, at=6)
    assert await outbox.append([first, second, completed({"good": 21}, at=7)]) == 1
    assert [m["data"] for m in await sent(outbox)] == [{"good": 21}]
    (record,) = held(outbox.path)
    assert record["reason"].endswith("was already sent with other data: good 21 → 22")
    assert (outbox.conflicts, outbox.known_events) == (1, 1)


async def test_an_event_sent_good_and_detected_again_breaking_its_contract_leaves_a_trace(
    outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    await outbox.append([completed({"good": 30}, batch="B1007")])
    bad = completed({"good": -1}, batch="B1007", at=12)
    # The same data as sent (a contract made stricter by a reload): a repeat, said so.
    same = completed({"good": 30}, batch="B1007", at=13)
    with caplog.at_level(logging.INFO, logger="edgegw.outbox.store"):
        await outbox.append([], [broken(bad, "good -1 is below min 0")])
        await outbox.append([], [broken(same, "good 30 is above max 20")])
    (record,) = held(outbox.path)
    assert record["rule"] == "conflict"
    assert record["reason"] == (
        "batch.completed key {batch: B1007} was already sent with other data: good 30 → -1; "
        "it also breaks its contract: good -1 is below min 0"
    )
    assert (
        "business event batch.completed key {batch: B1007} detected again with the same data; "
        "not sent twice"
    ) in caplog.text
    assert len(await sent(outbox)) == 1


async def test_a_held_event_never_sent_keeps_its_own_id(outbox: Outbox) -> None:
    bad = completed({"good": -1})
    await outbox.append([], [broken(bad, "good -1 is below min 0")])
    (record,) = held(outbox.path)
    assert (record["id"], record["rule"]) == (B1006, "contract")


def test_changes_are_listed_old_to_new() -> None:
    assert describe_changes({"good": 21, "scrap": 1, "op": "ann"}, {"good": 4, "scrap": 1}) == (
        "good 21 → 4, op ann → (absent)"
    )
    assert describe_changes({"good": None}, {"good": 4, "lot": "L7"}) == (
        "good null → 4, lot (absent) → L7"
    )
    assert describe_changes({"good": 21}, {"good": 21.0}) == "good 21 → 21.0"
    assert describe_changes({"n": [1]}, {"n": [1.0]}) == "the same values in another form"


async def test_a_lasting_violation_is_one_record_listed_with_its_count_and_last_value(
    outbox: Outbox, capsys: pytest.CaptureFixture[str]
) -> None:
    def value(v: int, at: float, *, first: bool) -> QuarantineRecord:
        return QuarantineRecord(
            "k-level", "telemetry", "cell.level", "range", v, f"{v} is above max 3", "t",
            None, "tr", 100.0, 100.0, count=1 if first else 4, last_ts=at, continues=not first,
        )  # fmt: skip

    await outbox.append([], [value(4, 100.0, first=True)])
    await outbox.append([], [value(9, 110.0, first=False)])
    await outbox.append([], [value(5, 112.5, first=False)])
    assert quarantine_cli.list_records(outbox.path, since=None, as_json=False) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2
    assert out[0].endswith(
        "cell.level                   range    4 is above max 3  (9 values until "
        "1970-01-01T00:01:52.500Z, the last 5)"
    )
    assert quarantine_cli.list_records(outbox.path, since=None, as_json=True) == 0
    (record,) = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (record["value"], record["count"], record["last_value"]) == (4, 9, 5)
    assert record["last_ts"] == "1970-01-01T00:01:52.500Z"
