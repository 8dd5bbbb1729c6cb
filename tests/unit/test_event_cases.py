"""Golden cases: config + PLC script -> business events and quarantine rows (tests/events)."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
import yaml

from edgegw.config.loader import load_config
from edgegw.outbox.store import Outbox, read_waiting
from edgegw.pipeline.events.schemas import all_schemas
from edgegw.pipeline.process import Pipeline
from edgegw.reading import Reading

CASES = sorted(p for p in (Path(__file__).parent.parent / "events").iterdir() if p.is_dir())
EPOCH = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def readings_of(step: dict[str, Any] | list[list[Any]]) -> list[Reading]:
    """A mapping step is one poll; a list step `[[ref, value, at], ...]` is a batch in that
    exact order (e.g. several queued samples of one OPC UA tag)."""
    if isinstance(step, list):
        return [r for ref, value, at in step for r in readings_of({"at": at, ref: value})]
    at = EPOCH + float(step.get("at", 0))
    out = []
    for ref, value in step.items():
        if ref == "at":
            continue
        source, tag = ref.split(".", 1)
        if isinstance(value, dict) and "bad" in value:
            out.append(Reading(source, tag, None, "bad", at, at, str(value["bad"])))
        else:
            out.append(Reading(source, tag, value, "good", at, at))
    return out


async def run_case(case: Path, state: Path) -> dict[str, Any]:
    config = load_config(case / "config.yaml")
    script = yaml.safe_load((case / "script.yaml").read_text())
    path = str(state / "outbox.sqlite3")
    outbox = Outbox(path)
    await outbox.open()
    pipeline = Pipeline(config)
    bad: list[dict[str, Any]] = []
    try:
        for step in script:
            if step == "restart":
                await outbox.close()
                outbox = Outbox(path)
                await outbox.open()
                pipeline = Pipeline(config)
                continue
            events, held = pipeline.process(readings_of(step))
            bad.extend(
                {"tag": f"{e.payload['source']}.{e.payload['tag']}", "reason": e.payload["reason"]}
                for e in events
                if e.payload.get("quality") == "bad"
            )
            await outbox.append(events, held)
    finally:
        await outbox.close()
    events = [m for m in read_waiting(path) if m["schema"] == "edgegw.event/1"]
    with contextlib.closing(sqlite3.connect(path)) as db:
        quarantine = [
            {"kind": k, "subject": s, "rule": r, "reason": why}
            # A lasting violation: how many values it held back, and the last of them.
            | ({"count": count, "last": orjson.loads(last)} if count > 1 else {})
            for k, s, r, why, count, last in db.execute(
                "SELECT kind, subject, rule, reason, count, last_value FROM quarantine ORDER BY qid"
            )
        ]
    schemas = all_schemas(config)
    for event in events:
        jsonschema.validate(event, schemas[event["type"]])
    return {
        "events": [{"type": e["type"], "key": e["key"], "data": e["data"]} for e in events],
        "ids": [e["id"] for e in events],
        "quarantine": quarantine,
        "bad": bad,
    }


@pytest.mark.parametrize("case", CASES, ids=[p.name for p in CASES])
async def test_event_case(case: Path, tmp_path: Path) -> None:
    expected = yaml.safe_load((case / "expected.yaml").read_text())
    got = await run_case(case, tmp_path)
    shown = yaml.safe_dump({k: got[k] for k in ("events", "quarantine", "bad")}, sort_keys=False)
    # Every case states all three (`[]` for none): a missing key would compare nothing.
    assert set(expected) == {"events", "quarantine", "bad"}, f"{case.name}/expected.yaml"
    assert got["events"] == expected["events"], shown
    assert got["quarantine"] == expected["quarantine"], shown
    assert got["bad"] == expected["bad"], shown
    assert len(set(got["ids"])) == len(got["ids"]), "one row per event id"


async def test_an_event_held_by_its_contract_and_detected_again_is_one_record(
    tmp_path: Path,
) -> None:
    case = tmp_path / "held-again"
    case.mkdir()
    (case / "config.yaml").write_bytes(
        (
            Path(__file__).parent.parent / "events" / "contract-violations" / "config.yaml"
        ).read_bytes()
    )
    (case / "script.yaml").write_text(
        """
- {at: 0, cell.state: 1, cell.batch: B001, cell.good: 10}
- {at: 1, cell.state: 3, cell.batch: B001, cell.good: 120000}
- {at: 2, cell.state: {bad: "no reply within 1s"}, cell.batch: B001, cell.good: 120000}
- {at: 3, cell.state: 3, cell.batch: B001, cell.good: 120000}
- restart
- {at: 4, cell.state: 3, cell.batch: B001, cell.good: 120000}
"""
    )
    state = tmp_path / "state"
    state.mkdir()
    got = await run_case(case, state)
    assert got["events"] == []
    assert [(r["rule"], r["reason"]) for r in got["quarantine"]] == [
        ("contract", "good 120000 is above max 100000")
    ]
    # Detected at 1 s, again after the bad read (3 s) and after the restart (4 s): counted.
    assert got["quarantine"][0]["count"] == 3
