"""Pre-fill an outbox with the telemetry a gateway would have committed during a broker outage.

Used by `bench.catchup`; also runs alone (the file must not exist yet)::

    .venv/bin/python -m bench.catchup_fill -c CONFIG --source backlog --count 1000000

The rows are genuine: Modbus-like readings (every tag of `--source` read once per poll round,
125 registers per reply sharing a timestamp, values that change at every read, as the bench
simulator serves them) go through the gateway's own `edgegw.pipeline.process.Pipeline` (rules,
report-by-exception, envelope, idempotency key, trace) and into `edgegw.outbox.store.Outbox.append`,
which numbers them (`seq` 1..N, contiguous), serialises them and commits them. The only
difference from a gateway in an outage is the size of the commit groups (`group`, default
20,000 rows instead of the committer's 1,000): fewer transactions, same rows. The readings are
stamped as if the outage ended now: round r of R at now - (R - r) * poll.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from edgegw.config.loader import load_config
from edgegw.config.model import GatewayConfig
from edgegw.outbox.quarantine import QuarantineRecord
from edgegw.outbox.segments import decode_items
from edgegw.outbox.store import Outbox, PendingEvent
from edgegw.pipeline.process import Pipeline
from edgegw.reading import Reading

REGISTERS_PER_REPLY = 125  # the Modbus driver stamps one reply (<= 125 registers) alike
REPLY_SPACING = 0.0002  # seconds between two replies of one poll (about 5,000 requests/s)


@dataclass(frozen=True, slots=True)
class FillResult:
    rows: int
    seq_first: int
    seq_last: int
    distinct_ids: int
    quarantined: int
    seconds: float  # pipeline + append, wall clock
    pipeline_seconds: float  # building the envelopes (Pipeline.process)
    append_seconds: float  # Outbox.append: numbering, orjson, INSERT, COMMIT
    rows_per_s: float
    groups: int
    group_size: int
    file_mb: float
    # The outbox file (and its WAL) over the values it holds: what an outage costs on disk
    # (the fill is the outage: no broker, every value waiting).
    file_bytes: int
    bytes_per_value: float
    method: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _source_tags(config: GatewayConfig, source: str) -> list[str]:
    for entry in config.sources:
        if entry.name == source:
            return [tag.name for tag in entry.tags]
    raise ValueError(f"no source {source!r} in the config")


def _poll_of(config: GatewayConfig, source: str) -> float:
    for entry in config.sources:
        if entry.name == source:
            return float(getattr(entry, "poll", 1.0))
    raise ValueError(f"no source {source!r} in the config")


def _rounds(source: str, tags: list[str], count: int, poll: float) -> Iterator[list[Reading]]:
    """One list of readings per poll round, `count` readings in all, ending about now."""
    rounds = -(-count // len(tags))
    start = time.time() - rounds * poll
    left = count
    for r in range(rounds):
        t0 = start + r * poll
        n = min(left, len(tags))
        # uint16 registers that step at every read: every reading differs from the last one of
        # its tag, so report-by-exception keeps them all (as with the bench simulator).
        yield [
            Reading(
                source,
                tags[i],
                (r + i) & 0xFFFF,
                "good",
                t0 + (i // REGISTERS_PER_REPLY) * REPLY_SPACING,
                t0 + (i // REGISTERS_PER_REPLY) * REPLY_SPACING,
            )
            for i in range(n)
        ]
        left -= n


async def _fill(config: GatewayConfig, source: str, count: int, group: int) -> FillResult:
    tags = _source_tags(config, source)
    poll = _poll_of(config, source)
    pipeline = Pipeline(config)
    # The same Outbox settings as edgegw.service.app.Gateway gives its outbox.
    outbox = Outbox(
        config.outbox_path,
        synchronous=config.outbox.synchronous,
        max_rows=max(config.outbox.max_rows, count + 1),
        max_age=config.outbox.max_age,
        max_bytes=config.outbox.max_bytes,
        gateway=config.gateway.id,
        gap_topic=config.mqtt.gap_topic.format(**config.topic_fields()),
    )
    await outbox.open()
    if outbox.depth:
        await outbox.close()
        raise ValueError(f"{config.outbox_path} is not empty ({outbox.depth} rows)")
    t_start = time.perf_counter()
    t_pipeline = 0.0
    t_append = 0.0
    groups = quarantined = 0
    events: list[PendingEvent] = []
    held: list[QuarantineRecord] = []

    async def commit() -> None:
        nonlocal t_append, groups, quarantined, events, held
        t = time.perf_counter()
        await outbox.append(events, held)
        t_append += time.perf_counter() - t
        groups += 1
        quarantined += len(held)
        events, held = [], []

    try:
        for readings in _rounds(source, tags, count, poll):
            t = time.perf_counter()
            out, records = pipeline.process(readings)
            t_pipeline += time.perf_counter() - t
            events.extend(out)
            held.extend(records)
            if len(events) >= group:
                await commit()
        if events or held:
            await commit()
    finally:
        await outbox.close()
    seconds = time.perf_counter() - t_start
    rows, first, last, distinct = _verify(config.outbox_path)
    size = _file_bytes(config.outbox_path)
    return FillResult(
        rows=rows,
        seq_first=first,
        seq_last=last,
        distinct_ids=distinct,
        quarantined=quarantined,
        seconds=round(seconds, 2),
        pipeline_seconds=round(t_pipeline, 2),
        append_seconds=round(t_append, 2),
        rows_per_s=round(rows / seconds, 1) if seconds else 0.0,
        groups=groups,
        group_size=group,
        file_mb=round(size / 2**20, 1),
        file_bytes=size,
        bytes_per_value=round(size / rows, 1) if rows else 0.0,
        method="edgegw.pipeline.process.Pipeline.process + edgegw.outbox.store.Outbox.append",
    )


def _verify(path: str) -> tuple[int, int, int, int]:
    """(messages, first seq, last seq, distinct ids) as stored: the bench relies on seq 1..N."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    ids: set[str] = set()
    try:
        rows, first, last = db.execute(
            "SELECT sum(count), min(first_seq), max(first_seq + count - 1) FROM segments"
        ).fetchone()
        for (blob,) in db.execute("SELECT items FROM segments"):
            ids.update(orjson.loads(item)["id"] for item in decode_items(blob))
    finally:
        db.close()
    return int(rows or 0), int(first or 0), int(last or 0), len(ids)


def _file_bytes(path: str) -> int:
    return sum(p.stat().st_size for p in (Path(path), Path(path + "-wal")) if p.exists())


def fill_outbox(config_path: Path, source: str, count: int, group: int = 20_000) -> FillResult:
    """Fill the (new, empty) outbox of `config_path` with `count` telemetry rows of `source`."""
    config = load_config(config_path)
    result = asyncio.run(_fill(config, source, count, group))
    if (result.rows, result.seq_first, result.seq_last, result.distinct_ids) != (
        count,
        1,
        count,
        count,
    ):
        raise RuntimeError(f"outbox fill is not seq 1..{count} with distinct ids: {result}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.catchup_fill",
        description="Fill a new outbox with COUNT telemetry rows of one source of CONFIG, built "
        "by the gateway's own pipeline and outbox (see the module docstring).",
    )
    parser.add_argument("-c", "--config", type=Path, required=True)
    parser.add_argument("--source", required=True, help="a source of CONFIG whose tags to use")
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--group", type=int, default=20_000, help="rows per Outbox.append")
    args = parser.parse_args(argv)
    result = fill_outbox(args.config, args.source, args.count, args.group)
    print(orjson.dumps(result.as_dict(), option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
