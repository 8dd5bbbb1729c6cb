"""The SQLite outbox: every accepted message lives here until each sink acknowledged it.

Contract:
- `append()` returns only once its messages are committed; only then is an event accepted.
- `seq` is assigned at commit, per gateway, gap-free and never reused: the highest seq ever
  assigned survives in the `meta` table even when the outbox is empty.
- Messages are stored in segments (segments.py): the messages of one source from one commit
  group in one row. A segment leaves only once every sink that selects it acknowledged all of
  it (`delete_acknowledged()`), or by retention, which is counted and logged at ERROR because
  it is data loss. Each sink's acknowledged ranges are kept in the file: after a restart a
  sink gets exactly what it had not acknowledged.
- A business event's id is committed once (`event_keys`); a telemetry id twice in one commit
  group is kept once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import sqlite3
import time
import uuid
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import aiosqlite
import orjson

from edgegw.errors import OutboxError, OutboxFull
from edgegw.outbox.backlog import (
    NOTHING_WAITING,
    Backlogs,
    Selector,
    SinkBacklog,
    age_seconds,
    finished,
    read_acks,
    read_backlogs,
    snapshot,
    takes_all,
)
from edgegw.outbox.quarantine import (
    CONFLICT_RULE,
    QuarantineRecord,
    conflict_key,
    data_digest,
    describe_changes,
    describe_key,
)
from edgegw.outbox.schema import (
    INSERT_SEGMENT,
    SCHEMA,
    SCHEMA_VERSION,
    SEGMENT_MAX,
    migrate,
    salvage,
)
from edgegw.outbox.segments import (
    EVENT,
    TELEMETRY,
    Segment,
    StoredEvent,
    decode_items,
    encode_items,
    kind_of,
    merge_ranges,
    missing,
    ranges_of,
)
from edgegw.timefmt import iso_utc

log = logging.getLogger(__name__)

DEFAULT_SINK = "mqtt"
_new = tuple.__new__


# A record with the id and ts of one already held is the same lasting violation: it adds its
# count and becomes the last value (the first value and reason stay).
_INSERT_QUARANTINE = (
    "INSERT INTO quarantine(id, kind, subject, rule, value, reason, topic, payload, trace, ts, "
    "created, count, last_value, last_ts) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT (id, ts) DO UPDATE SET count = count + excluded.count, "
    "last_value = excluded.last_value, last_ts = excluded.last_ts"
)
# The same conflict detected again while its record waits (released or not: a release is
# moved into the outbox by this process, under the same lock): one record, counted.
_REPEAT_CONFLICT = (
    "UPDATE quarantine SET count = count + ?, last_value = ?, last_ts = ? "
    "WHERE id = ? AND rule = 'conflict'"
)
# An event held by its contract and detected again with the same data (after a bad read, after
# a restart) while its record waits unreleased: the same record, counted, not one more per
# detection with one id (an operator would otherwise release one and see the others refused).
_REPEAT_HELD_EVENT = (
    "UPDATE quarantine SET count = count + ?, last_value = ?, last_ts = ? "
    "WHERE id = ? AND kind = 'event' AND rule = ? AND value = ? AND released IS NULL"
)
EVENT_SCHEMA_PREFIX = "edgegw.event/"
GAP_SCHEMA = "edgegw.gap/1"
NORMAL_SYNC_INTERVAL = 0.2  # seconds; with synchronous=normal, the power-loss window
SEQ_RESERVE_BLOCK = 100_000  # seq numbers reserved per write of the .seq file
GAP_NAMESPACE = uuid.UUID("8e1b5c2a-47d3-5f90-a6c4-1d2e3f405162")
EVENT_KEY_RETENTION = 400 * 86400.0  # seconds an event id is remembered, at least
BACKLOG_REUSE = 1.0  # seconds a backlog scan serves /metrics and /healthz (Outbox._backlogs)
_BUMP_LAST_SEQ = "UPDATE meta SET value = max(value, ?) WHERE name = 'last_seq'"


class PendingEvent(NamedTuple):
    """An event on its way into the outbox; `payload` gets its `seq` at commit. (A named
    tuple: one is made per value read.)"""

    id: str
    schema: str
    topic: str
    payload: dict[str, Any]
    trace: str
    created: float
    key_ts: int = 0  # telemetry: the source timestamp in its id, in µs (keys.key_micros)


class _Cut(NamedTuple):
    """A batch cut into segment rows."""

    rows: list[tuple[Any, ...]]
    stored: int  # values numbered and stored
    unrouted: list[tuple[str, str, int]]  # kind, source, values: selected by no sink
    skipped: list[PendingEvent]  # those values: not stored, no seq

    def kept(self, batch: list[PendingEvent]) -> list[PendingEvent]:
        """The events of `batch` that were stored."""
        if not self.skipped:
            return batch
        skipped = {id(event) for event in self.skipped}
        return [event for event in batch if id(event) not in skipped]


class _Again(NamedTuple):
    """A business event detected again under an id committed before."""

    payload: dict[str, Any]
    ts: float  # the trigger's source timestamp
    key: str
    digest: str  # of its data
    sent: tuple[str | None, Any]  # digest and data sent under the id (None: not known)
    topic: str
    broken: str | None = None  # the contract it breaks (a quarantined event)


@dataclass(slots=True)
class _Notes:
    """What a commit found, counted and logged once it is committed."""

    repeats: int = 0
    conflicts: int = 0
    lines: list[tuple[int, str, tuple[Any, ...]]] = field(default_factory=list)

    def say(self, level: int, message: str, *args: Any) -> None:
        self.lines.append((level, message, args))


@dataclass(frozen=True, slots=True)
class OutboxStats:
    path: str
    depth: int
    first_seq: int | None
    last_seq: int
    oldest_created: float | None
    dropped: int
    file_bytes: int
    quarantined: int = 0
    sinks: Mapping[str, SinkBacklog] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        now = time.time()
        return {
            "path": self.path,
            "depth": self.depth,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "oldest_age_seconds": age_seconds(self.oldest_created, now),
            "dropped": self.dropped,
            "file_bytes": self.file_bytes,
            "quarantined": self.quarantined,
            "sinks": {
                name: {
                    "waiting": backlog.waiting,
                    "first_seq": backlog.first_seq,
                    "oldest_age_seconds": age_seconds(backlog.oldest_created, now),
                }
                for name, backlog in self.sinks.items()
            },
        }


@dataclass(frozen=True, slots=True)
class OutboxHealth:
    """The outbox at one moment, as /metrics, /healthz and `edgegw status` show it."""

    depth: int
    oldest_created: float | None  # wall clock when the oldest waiting row was received
    dropped: int  # by retention, announced by gap messages
    duplicates: int  # refused: their id was committed before
    conflicts: int  # business events detected again with other data
    recovered_from_corruption: bool
    unrouted: int = 0  # not stored: no sink selects their kind and source
    sinks: Mapping[str, SinkBacklog] = field(default_factory=dict)


class Outbox:
    """One SQLite file in WAL mode, written by one connection whose calls are serialised."""

    def __init__(
        self,
        path: str,
        *,
        synchronous: str = "full",
        max_rows: int = 10_000_000,
        max_age: float = 7 * 86400.0,
        max_bytes: int | None = None,
        gateway: str = "",
        gap_topic: str = "edgegw/gap",
        sinks: dict[str, Selector] | None = None,
    ) -> None:
        self.path = path
        # Each sink that takes messages from this outbox, and what it selects: a segment
        # leaves once all that select it acknowledged it.
        self.sinks: dict[str, Selector] = dict(sinks or {DEFAULT_SINK: takes_all})
        self._acked: dict[str, list[tuple[int, int]]] = {name: [] for name in self.sinks}
        self.max_bytes = max_bytes
        self.gateway = gateway
        self.gap_topic = gap_topic
        self.synchronous = synchronous
        self.max_rows = max_rows  # values waiting, at most
        self.max_age = max_age
        self.depth = 0  # values waiting
        self.dropped = 0
        self.duplicates = 0
        self.known_events = 0  # business events not sent twice: detected again, same data
        self.conflicts = 0  # business events detected again with other data (quarantined)
        self.unrouted = 0  # not stored: no sink selects their kind and source
        self._routes: dict[tuple[str, str], bool] = {}  # (kind, source) -> some sink selects
        self._backlog_scan: asyncio.Future[Backlogs | None] | None = None  # see _backlogs
        self._kinds: dict[str, str] = {}  # schema -> segments.kind_of(schema): asked per value
        self._scanned_at = 0.0  # monotonic
        self._said_unrouted: set[tuple[str, str]] = set()
        self._next_seq = 1
        self._reserved = 0  # every seq assigned is <= this, recorded in the .seq file
        self.corrupt_moved_to: str | None = None
        self._db: aiosqlite.Connection | None = None
        # One connection, and SQLite transactions must not interleave across awaits.
        self._lock = asyncio.Lock()
        # One event per reader (`appended_event`): a shared one, cleared by the first reader
        # that woke, left the other sinks' forwarders asleep with new data committed.
        self._appended: weakref.WeakSet[asyncio.Event] = weakref.WeakSet()

    def appended_event(self) -> asyncio.Event:
        """An event of the caller's own, set at every commit of new messages (set at first:
        what is stored already waits)."""
        event = asyncio.Event()
        event.set()
        self._appended.add(event)
        return event

    def _announce(self) -> None:
        for event in self._appended:
            event.set()

    async def open(self) -> None:
        """Open (create, migrate) the outbox. A damaged file is moved aside, never deleted:
        the rows that can still be read are carried over, a fresh file is started with `seq`
        above anything ever assigned, and an ERROR alarm plus an `edgegw.gap/1` message say
        so."""
        _prepare_directory(self.path)
        self._reserved = _read_reservation(self._reservation_path)
        try:
            db, counters = await self._open_checked()
        except _Damaged as damage:
            aside = _move_aside(self.path)
            log.error(
                "ALARM outbox %s is damaged (%s); moved to %s and starting a fresh outbox",
                self.path,
                damage,
                aside,
            )
            self.corrupt_moved_to = aside
            db, counters = await self._open_checked()
            self._db = db
            await self._recover_from(aside, str(damage))
            return
        last_meta, dropped, max_seq, depth = counters
        self._db = db
        self._next_seq = max(int(last_meta), int(max_seq or 0)) + 1
        self.depth = int(depth)
        self.dropped = int(dropped)
        await self._settle()
        log.info(
            "outbox open path=%s depth=%d next_seq=%d synchronous=%s",
            self.path,
            self.depth,
            self._next_seq,
            self.synchronous,
        )

    async def _open_checked(
        self,
    ) -> tuple[aiosqlite.Connection, tuple[int, int, int | None, int]]:
        try:
            db = await aiosqlite.connect(self.path)
        except sqlite3.DatabaseError as exc:
            raise OutboxError(f"cannot open outbox {self.path}: {exc}") from exc
        try:
            return db, await self._prepare(db)
        except BaseException as exc:
            # aiosqlite's worker thread is not a daemon: an unclosed connection would keep
            # the process from exiting.
            with contextlib.suppress(Exception):
                await db.close()
            if isinstance(exc, _Damaged):
                raise
            if isinstance(exc, sqlite3.DatabaseError):
                if _is_corruption(exc):
                    raise _Damaged(str(exc)) from exc
                raise OutboxError(f"cannot open outbox {self.path}: {exc}") from exc
            raise

    async def _recover_from(self, aside: str, why: str) -> None:
        """Carry readable segments over from a damaged file; continue seq above all of them."""
        salvaged = await asyncio.to_thread(salvage, aside)
        highest = max([self._reserved, *(row[0] + row[1] - 1 for row in salvaged)])
        async with self._lock:
            if salvaged:
                await self.db.executemany(INSERT_SEGMENT, salvaged)
            self._next_seq = highest + 1
            values = sum(row[1] for row in salvaged)
            gap = self._gap_event(
                [], None, f"corrupt outbox moved to {aside} ({why}); {values} messages saved"
            )
            self.depth = values
            cut = self._segments([gap])
            await self.db.executemany(INSERT_SEGMENT, cut.rows)
            # Numbering goes on above every seq the damaged file may have held.
            await self.db.execute(_BUMP_LAST_SEQ, (self._next_seq - 1 + cut.stored,))
            await self.db.commit()
            self._stored(cut)
        log.error(
            "ALARM outbox recovered messages=%d from %s; seq continues at %d; messages not "
            "recovered are lost (a gap message says so)",
            values,
            aside,
            self._next_seq,
        )

    async def _prepare(self, db: aiosqlite.Connection) -> tuple[int, int, int | None, int]:
        """Check the file, migrate the schema, read the counters and each sink's acks."""
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
        verdict = [row[0] for row in await _fetch(db, "PRAGMA quick_check")]
        if verdict != ["ok"]:
            raise _Damaged("; ".join(verdict[:3]))
        version = (await _fetch(db, "PRAGMA user_version"))[0][0]
        if version > SCHEMA_VERSION:
            raise OutboxError(
                f"outbox {self.path} has schema version {version}, newer than this edgegw "
                f"understands ({SCHEMA_VERSION}); upgrade edgegw or move the file aside"
            )
        if 0 < version < SCHEMA_VERSION:
            started = time.monotonic()
            migrated = await asyncio.to_thread(migrate, self.path)
            if migrated is not None:
                log.info(
                    "outbox schema migrated from version %d to %d path=%s messages=%d seconds=%.1f",
                    migrated[0],
                    SCHEMA_VERSION,
                    self.path,
                    migrated[1],
                    time.monotonic() - started,
                )
        await db.executescript(SCHEMA)
        await db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        await db.commit()
        (last_meta,) = (await _fetch(db, "SELECT value FROM meta WHERE name='last_seq'"))[0]
        (dropped,) = (await _fetch(db, "SELECT value FROM meta WHERE name='dropped'"))[0]
        max_seq, depth = (
            await _fetch(db, "SELECT max(first_seq + count - 1), sum(count) FROM segments")
        )[0]
        stored: dict[str, list[tuple[int, int]]] = {}
        for sink, first, last in await _fetch(db, "SELECT sink, first, last FROM sink_acks"):
            stored.setdefault(sink, []).append((int(first), int(last)))
        for sink in self._acked:
            # Sorted and joined: `missing` bisects them (rows written by delete_acknowledged
            # may overlap, all of them acknowledged seqs).
            self._acked[sink] = merge_ranges(stored.get(sink, ()))
        return int(last_meta), int(dropped), max_seq, int(depth or 0)

    async def _settle(self) -> None:
        """At start, after the sinks or their `select:` changed since the last run: drop what
        no configured sink selects any more (data loss: retention's ERROR, count and gap
        message, since a typo in a `select:` must not look like delivery), delete segments
        every sink that selects them acknowledged, and forget the acks of removed sinks."""
        rows = await _fetch(self.db, "SELECT first_seq, count, kind, source FROM segments")
        unselected = [
            (first, count) for first, count, kind, source in rows if not self._routed(kind, source)
        ]
        if unselected:
            what = sorted(
                {
                    f"{kind} of {source}" if source else kind
                    for _, _, kind, source in rows
                    if not self._routed(kind, source)
                }
            )
            try:
                await self._drop(unselected, f"selected by no configured sink: {', '.join(what)}")
            except sqlite3.DatabaseError as exc:
                await self._rollback_quietly()
                log.error("outbox: could not drop what no sink selects (next start tries): %s", exc)
                return
        done = [
            (first, count)
            for first, count, kind, source in rows
            if self._routed(kind, source)
            and finished(kind, source, first, first + count - 1, self._acked, self.sinks)
        ]
        gone = [
            row[0]
            for row in await _fetch(self.db, "SELECT DISTINCT sink FROM sink_acks")
            if row[0] not in self.sinks
        ]
        if not done and not gone:
            return
        kept = {sink: _clip(acked, done) for sink, acked in self._acked.items()}
        try:
            await self._delete_segments([first for first, _ in done])
            await self.db.executemany("DELETE FROM sink_acks WHERE sink = ?", [(g,) for g in gone])
            for sink, ranges in kept.items():
                await self.db.execute("DELETE FROM sink_acks WHERE sink = ?", (sink,))
                await self.db.executemany(
                    "INSERT INTO sink_acks VALUES (?, ?, ?)", [(sink, a, b) for a, b in ranges]
                )
            # Deleting the newest segments must not let numbering restart below them.
            await self.db.execute(_BUMP_LAST_SEQ, (self._next_seq - 1,))
            await self.db.commit()
        except sqlite3.DatabaseError as exc:
            # Only tidying: the gateway starts without it (a full disk must not keep it from
            # starting) and the next start tries again.
            await self._rollback_quietly()
            log.error(
                "outbox: could not delete what no sink waits for (next start tries again): %s", exc
            )
            return
        self._acked = kept
        values = sum(count for _, count in done)
        self.depth -= values
        log.warning(
            "outbox: %d stored values that every sink selecting them acknowledged were deleted; "
            "acks of sinks no longer configured forgotten: %s (sinks or their select: changed "
            "since the last run)",
            values,
            ", ".join(gone) or "none",
        )

    async def _delete_segments(self, firsts: Sequence[int]) -> None:
        """Delete segments by first seq, in the caller's transaction."""
        for start in range(0, len(firsts), 500):  # under SQLite's bound-parameter limit
            part = firsts[start : start + 500]
            await self.db.execute(
                f"DELETE FROM segments WHERE first_seq IN ({','.join('?' * len(part))})", part
            )

    async def sync(self) -> None:
        """Make every commit so far durable (synchronous=normal): a passive checkpoint fsyncs
        the WAL. The gateway calls it every NORMAL_SYNC_INTERVAL, which bounds what a power
        loss can take."""
        async with self._lock:
            await self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    async def close(self) -> None:
        if self._db is not None:
            async with self._lock:
                await self._db.close()
                self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise OutboxError("outbox is not open")
        return self._db

    @property
    def _reservation_path(self) -> str:
        return self.path + ".seq"

    def _reserve(self, upto: int) -> None:
        """Record, durably and before use, a bound above every seq this outbox will assign:
        if the database is ever lost, numbering resumes above it and no seq is reused."""
        self._reserved = upto + SEQ_RESERVE_BLOCK
        _write_reservation(self._reservation_path, self._reserved)

    @property
    def last_seq(self) -> int:
        return self._next_seq - 1

    async def append(
        self, events: Sequence[PendingEvent], quarantine: Sequence[QuarantineRecord] = ()
    ) -> int:
        """Commit events (and quarantine records) in one transaction; returns how many events
        were new (not duplicate keys, not business events committed before).

        A business event whose id was committed before is not sent twice: with the same data
        it is a repeat (logged at info, counted in `known_events`); with other data it is a
        conflict (WARNING, counted in `conflicts`), held in the quarantine with rule
        `conflict` for an operator to release under a new id (`conflict_key`) or drop.
        """
        if not events and not quarantine:
            return 0
        unique: dict[str, PendingEvent] = {}
        again: list[PendingEvent] = []  # business events whose id came twice in this group
        for event in events:
            if unique.setdefault(event.id, event) is not event:
                if event.schema.startswith(EVENT_SCHEMA_PREFIX):
                    again.append(event)
                else:
                    self.duplicates += 1
        async with self._lock:
            batch = list(unique.values())
            notes = _Notes()
            try:
                if (
                    again
                    or any(e.schema.startswith(EVENT_SCHEMA_PREFIX) for e in batch)
                    or any(r.kind == "event" for r in quarantine)
                ):
                    batch, quarantine = await self._judge_events(batch, again, quarantine, notes)
                cut = self._segments(batch)
                await self.db.executemany(INSERT_SEGMENT, cut.rows)
                # Only what was stored: an event no sink took must not count as sent.
                await self._record_event_keys(cut.kept(batch))
                if quarantine:
                    await self._hold(quarantine)
                await self.db.commit()
            except sqlite3.DatabaseError as exc:
                await self._rollback_quietly()
                raise _write_error(exc) from exc
            self._stored(cut)
            # Counted and said only once committed: a failed commit is tried again.
            self.duplicates += notes.repeats
            self.known_events += notes.repeats
            self.conflicts += notes.conflicts
            for level, message, args in notes.lines:
                log.log(level, message, *args)
            if self.depth > self.max_rows:
                # Some room beyond the limit, so a full outbox is one gap message now and
                # then rather than one per commit (whole segments go: a little more still).
                await self._drop_oldest(
                    self.depth - self.max_rows + max(1, self.max_rows // 100), "max_rows"
                )
        self._announce()
        return cut.stored

    async def _sent(self, ids: Iterable[str]) -> dict[str, tuple[str | None, Any]]:
        """id -> (digest, data) of the remembered event ids among `ids` (None, None: sent by
        an edgegw before version 4, which did not record what it sent)."""
        wanted = list(set(ids))
        sent: dict[str, tuple[str | None, Any]] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = await _fetch(
                self.db, f"SELECT id, digest, data FROM event_keys WHERE id IN ({marks})", chunk
            )
            for key, digest, data in rows:
                sent[key] = (digest, None if data is None else orjson.loads(data))
        return sent

    async def _judge_events(
        self,
        batch: list[PendingEvent],
        again: list[PendingEvent],
        quarantine: Sequence[QuarantineRecord],
        notes: _Notes,
    ) -> tuple[list[PendingEvent], list[QuarantineRecord]]:
        """The events to commit and the quarantine records to hold, once business events
        whose id was committed before are told apart: repeats are dropped (and said),
        conflicts become quarantine records with rule `conflict`.

        A quarantined event (it broke its contract) whose id was committed good before is not
        held under that id either: a release could only send other data under it. It is a
        conflict if its data differs, else a repeat; either way it leaves a trace."""
        held_events = [r for r in quarantine if r.kind == "event" and r.payload is not None]
        sent = await self._sent(
            [e.id for e in (*batch, *again) if e.schema.startswith(EVENT_SCHEMA_PREFIX)]
            + [r.key for r in held_events]
        )
        keep: list[PendingEvent] = []
        found: list[_Again] = []
        for event in (*batch, *again):
            if not event.schema.startswith(EVENT_SCHEMA_PREFIX):
                keep.append(event)
                continue
            data = event.payload.get("data") or {}
            digest = data_digest(data)
            known = sent.get(event.id)
            if known is None:
                keep.append(event)
                sent[event.id] = (digest, data)
                continue
            found.append(
                _Again(event.payload, _trigger_time(event), event.id, digest, known, event.topic)
            )
        records: list[QuarantineRecord] = []
        for record in quarantine:
            known = sent.get(record.key) if record.kind == "event" else None
            if known is None or record.payload is None:
                records.append(record)
                continue
            data = record.payload.get("data") or {}
            digest = data_digest(data)
            repeat = _Again(record.payload, record.ts, record.key, digest, known, record.topic)
            found.append(repeat._replace(broken=record.reason))
        if found:
            records += await self._repeats_and_conflicts(found, notes)
        return keep, records

    async def _repeats_and_conflicts(
        self, found: list[_Again], notes: _Notes
    ) -> list[QuarantineRecord]:
        """Business events detected again under an id committed before."""
        conflicts = [
            conflict_key(again.key, again.digest)
            for again in found
            if again.sent[0] is not None and again.sent[0] != again.digest
        ]
        released = await self._sent(conflicts) if conflicts else {}
        records: dict[str, QuarantineRecord] = {}
        now = time.time()
        for payload, ts, key, digest, (sent_digest, sent_data), topic, broken in found:
            what = f"{payload.get('type')} key {describe_key(payload.get('key') or {})}"
            if sent_digest is None or sent_digest == digest:
                notes.repeats += 1
                if sent_digest is None:
                    notes.say(
                        logging.INFO,
                        "business event %s detected again; not sent twice (what was sent under "
                        "its id is not known: an older edgegw sent it)",
                        what,
                    )
                else:
                    notes.say(
                        logging.INFO,
                        "business event %s detected again with the same data; not sent twice",
                        what,
                    )
                continue
            new_key = conflict_key(key, digest)
            if new_key in released:
                notes.repeats += 1
                notes.say(
                    logging.INFO,
                    "business event %s detected again with the same data as its released "
                    "conflict id=%s; not sent twice",
                    what,
                    new_key,
                )
                continue
            data = payload.get("data") or {}
            changes = describe_changes(sent_data, data)
            reason = f"{what} was already sent with other data: {changes}"
            if broken is not None:
                reason += f"; it also breaks its contract: {broken}"
            notes.conflicts += 1
            notes.say(
                logging.WARNING,
                "business event conflict: %s; held in the quarantine (rule conflict): release "
                "publishes it as id=%s supersedes=%s, or drop it",
                reason,
                new_key,
                key,
            )
            first = records.get(new_key)
            if first is not None:  # the same conflict twice in one group: one record
                records[new_key] = replace(first, count=first.count + 1, last_ts=ts)
                continue
            message = {"schema": payload.get("schema", "edgegw.event/1"), "id": new_key}
            message["supersedes"] = key
            message |= {k: v for k, v in payload.items() if k not in ("schema", "id")}
            records[new_key] = QuarantineRecord(
                key=new_key,
                kind="event",
                subject=str(payload.get("type")),
                rule=CONFLICT_RULE,
                value={"sent": sent_data, "detected": data},
                reason=reason,
                topic=topic,
                payload=message,
                trace=str(payload.get("trace", "")),
                ts=ts,
                created=now,
            )
        return list(records.values())

    async def _hold(self, records: Sequence[QuarantineRecord]) -> None:
        """Write quarantine records; a lasting violation or a repeated conflict updates the
        record it continues (the caller holds the lock and commits)."""
        fresh = []
        for record in records:
            if record.rule == CONFLICT_RULE:
                cursor = await self.db.execute(
                    _REPEAT_CONFLICT,
                    (
                        record.count,
                        orjson.dumps(record.value, default=str),
                        record.last_ts or record.ts,
                        record.key,
                    ),
                )
                if cursor.rowcount:
                    continue
            elif record.kind == "event":
                value = orjson.dumps(record.value, default=str)
                cursor = await self.db.execute(
                    _REPEAT_HELD_EVENT,
                    (
                        record.count,
                        value,
                        record.last_ts or record.ts,
                        record.key,
                        record.rule,
                        value,
                    ),
                )
                if cursor.rowcount:
                    continue
            fresh.append(record)
        await self.db.executemany(_INSERT_QUARANTINE, _quarantine_rows(fresh))

    async def _record_event_keys(self, batch: list[PendingEvent]) -> None:
        keys = [
            (e.id, e.created, data_digest(data), orjson.dumps(data))
            for e in batch
            if e.schema.startswith(EVENT_SCHEMA_PREFIX)
            for data in (e.payload.get("data") or {},)
        ]
        if keys:
            await self.db.executemany(
                "INSERT OR IGNORE INTO event_keys(id, created, digest, data) VALUES (?, ?, ?, ?)",
                keys,
            )

    async def move_released(self) -> int:
        """Append the events an operator released from quarantine; returns how many.

        One transaction: the outbox rows, their remembered ids and the removal from the
        quarantine. A released event whose id was committed meanwhile (detected again with
        valid data) is not sent a second time with other data: it is removed, and said so.
        A released conflict has an id of its own (`conflict_key`) and its message names the
        event it supersedes; released twice, it is still sent once.
        """
        async with self._lock:
            rows = await _fetch(
                self.db,
                "SELECT qid, id, topic, payload, trace FROM quarantine "
                "WHERE released IS NOT NULL AND payload IS NOT NULL ORDER BY qid LIMIT 1000",
            )
            if not rows:
                return 0
            ids = list({row[1] for row in rows})
            marks = ",".join("?" * len(ids))
            known = {
                r[0]
                for r in await _fetch(
                    self.db,
                    f"SELECT id FROM event_keys WHERE id IN ({marks})",
                    ids,
                )
            }
            now = time.time()
            events: dict[str, PendingEvent] = {}
            superseded = []
            for _qid, key, topic, payload, trace in rows:
                if key in known or key in events:
                    superseded.append((key, trace))
                    continue
                schema = _event_schema(payload)
                events[key] = PendingEvent(key, schema, topic, orjson.loads(payload), trace, now)
            if not self._routed(EVENT, ""):
                # Released, but no sink takes business events: they stay in the quarantine,
                # released, until a sink selects them (said once).
                if ("release", "") not in self._said_unrouted:
                    self._said_unrouted.add(("release", ""))
                    log.warning(
                        "released events wait in the quarantine: no sink selects business "
                        "events (sinks[].select.kinds)"
                    )
                return 0
            batch = list(events.values())
            qids = [row[0] for row in rows]
            try:
                cut = self._segments(batch)
                await self.db.executemany(INSERT_SEGMENT, cut.rows)
                await self._record_event_keys(batch)
                await self.db.execute(
                    f"DELETE FROM quarantine WHERE qid IN ({','.join('?' * len(qids))})", qids
                )
                await self.db.commit()
            except sqlite3.DatabaseError as exc:
                await self._rollback_quietly()
                raise OutboxError(f"outbox write failed: {exc}") from exc
            self._stored(cut)
        self._announce()
        for event in batch:
            supersedes = event.payload.get("supersedes")
            log.warning(
                "audit: released event published id=%s seq=%s trace=%s%s",
                event.id,
                event.payload.get("seq"),
                event.trace,
                f" supersedes={supersedes}" if supersedes else "",
                extra={"audit": "quarantine-release-published", "trace": event.trace},
            )
        for key, trace in superseded:
            log.warning(
                "audit: released event not sent: an event with this id was committed already "
                "id=%s trace=%s",
                key,
                trace,
                extra={"audit": "quarantine-release-superseded", "trace": trace},
            )
        return len(batch)

    def _segments(self, batch: list[PendingEvent]) -> _Cut:
        """Number the batch from the next seq and cut it into segment rows: one per source
        and kind, in the order they first appear (each `payload` gets its `seq`). A group no
        sink selects is not stored and gets no seq. The caller advances the seq once the rows
        are committed (`_stored`)."""
        groups: dict[tuple[str, str], list[PendingEvent]] = {}
        kinds = self._kinds
        for event in batch:
            kind = kinds.get(event.schema)
            if kind is None:
                kind = kinds[event.schema] = kind_of(event.schema)
            source = event.payload.get("source", "") if kind == TELEMETRY else ""
            groups.setdefault((kind, source), []).append(event)
        seq = self._next_seq
        if seq + len(batch) - 1 > self._reserved:
            self._reserve(seq + len(batch) - 1)
        dumps = orjson.dumps
        rows = []
        unrouted = []
        skipped: list[PendingEvent] = []
        for (kind, source), events in groups.items():
            if not self._routed(kind, source):
                unrouted.append((kind, source, len(events)))
                skipped.extend(events)
                continue
            for start in range(0, len(events), SEGMENT_MAX):
                part = events[start : start + SEGMENT_MAX]
                first = seq
                items = []
                for event in part:
                    event.payload["seq"] = seq
                    items.append(dumps(event.payload))
                    seq += 1
                created = min(event.created for event in part)
                stamps = [event.key_ts for event in part if event.key_ts]
                source_ts = min(stamps) / 1e6 if stamps else created
                rows.append(
                    (first, len(part), kind, source, created, source_ts, encode_items(items))
                )
        return _Cut(rows, seq - self._next_seq, unrouted, skipped)

    def _routed(self, kind: str, source: str) -> bool:
        routed = self._routes.get((kind, source))
        if routed is None:
            routed = any(selects(kind, source) for selects in self.sinks.values())
            self._routes[(kind, source)] = routed
        return routed

    def _stored(self, cut: _Cut) -> None:
        """Account for a committed cut: seq and depth advance; what no sink selects is counted
        and said once per kind and source."""
        self._next_seq += cut.stored
        self.depth += cut.stored
        for kind, source, count in cut.unrouted:
            self.unrouted += count
            if (kind, source) not in self._said_unrouted:
                self._said_unrouted.add((kind, source))
                log.warning(
                    "no sink selects %s%s: not stored (count=%d; further ones counted in "
                    "edgegw_outbox_unrouted_total); change a sink's select: to deliver them",
                    kind,
                    f" of source {source}" if source else "",
                    count,
                )

    async def _rollback_quietly(self) -> None:
        try:
            await self.db.rollback()
        except sqlite3.DatabaseError:
            log.exception("outbox rollback failed path=%s", self.path)

    async def health(self) -> OutboxHealth:
        backlogs = await self._backlogs()
        return OutboxHealth(
            depth=self.depth,
            oldest_created=backlogs.total.oldest_created if backlogs else None,
            dropped=self.dropped,
            duplicates=self.duplicates,
            conflicts=self.conflicts,
            recovered_from_corruption=self.corrupt_moved_to is not None,
            unrouted=self.unrouted,
            sinks=backlogs.sinks if backlogs else {},  # not known: no figure, rather than 0
        )

    async def _backlogs(self) -> Backlogs | None:
        """Each sink's backlog, None when the file cannot be read. One scan at a time, shared
        by every caller and reused for BACKLOG_REUSE seconds: scrapes of /metrics and /healthz
        may overlap, and a scan of a long backlog takes a worker thread tens of milliseconds
        (a GIL it shares with the event loop)."""
        if self.depth == 0:
            return Backlogs(dict.fromkeys(self.sinks, NOTHING_WAITING), NOTHING_WAITING, None)
        scan = self._backlog_scan
        if scan is None or (scan.done() and time.monotonic() - self._scanned_at > BACKLOG_REUSE):
            scan = self._backlog_scan = asyncio.ensure_future(self._scan_backlogs())
        # Shielded: a caller that gives up must not cancel the scan the others wait for.
        return await asyncio.shield(scan)

    async def _scan_backlogs(self) -> Backlogs | None:
        try:
            return await asyncio.to_thread(self._read_backlogs)
        except (sqlite3.DatabaseError, OSError) as exc:  # moved aside, unreadable: alarm says
            log.debug("outbox backlog unreadable path=%s: %s", self.path, exc)
            return None
        finally:
            self._scanned_at = time.monotonic()

    def _read_backlogs(self) -> Backlogs:
        with snapshot(self.path) as db:
            return read_backlogs(db, self.sinks)

    async def claim(
        self, after_seq: int, limit: int, sink: str = DEFAULT_SINK
    ) -> list[StoredEvent]:
        """The next messages for `sink` in seq order after `after_seq`, at most `limit`: those of
        the segments it selects that it has not acknowledged. They stay until acknowledged."""
        selects = self.sinks[sink]
        acked = self._acked[sink]
        out: list[StoredEvent] = []
        page = max(8, limit // 50)  # segments per query: mostly hundreds of values each
        while True:
            async with self._lock:
                rows = await _fetch(
                    self.db,
                    "SELECT first_seq, count, kind, source, created, source_ts, items "
                    "FROM segments WHERE first_seq > ? AND first_seq + count - 1 > ? "
                    "ORDER BY first_seq LIMIT ?",
                    (after_seq - SEGMENT_MAX, after_seq, page),
                )
            for first, count, kind, source, created, source_ts, blob in rows:
                last = first + count - 1
                if selects(kind, source):
                    due = missing(acked, max(first, after_seq + 1), last)
                    items = decode_items(blob) if due else []
                    for a, b in due:
                        n = min(b - a + 1, limit - len(out))
                        # tuple.__new__: a named tuple's own __new__ is a Python function,
                        # twice the cost of the tuple (measured: 0.32 vs 0.12 µs per value).
                        out.extend(
                            [
                                _new(StoredEvent, (seq, item, kind, source, created, source_ts))
                                for seq, item in zip(
                                    range(a, a + n), items[a - first : a - first + n], strict=True
                                )
                            ]
                        )
                        if len(out) == limit:
                            return out
                after_seq = last
            if len(rows) < page:
                return out

    async def segments(self, after_seq: int = 0, limit: int = 100) -> list[Segment]:
        """Stored segments in seq order (for tools and tests: no sink's acks applied)."""
        rows = await _fetch(
            self.db,
            "SELECT first_seq, count, kind, source, created, source_ts, items FROM segments "
            "WHERE first_seq > ? ORDER BY first_seq LIMIT ?",
            (after_seq, limit),
        )
        return [
            Segment(first, size, kind, source, created, source_ts, decode_items(blob))
            for first, size, kind, source, created, source_ts, blob in rows
        ]

    async def delete_acknowledged(self, seqs: Iterable[int], sink: str = DEFAULT_SINK) -> int:
        """Record what `sink` acknowledged; delete the segments every sink that selects them
        has acknowledged whole; returns how many values left the outbox.

        Without an fsync of its own: an acknowledgement lost to a power cut only sends its
        messages again (consumers drop them by id), and the next commit of new messages syncs
        the log with it. Syncing every delete cost as much as syncing the data itself.
        """
        new = ranges_of(seqs)
        if not new:
            return 0
        async with self._lock:
            acked = merge_ranges(self._acked[sink], new)
            rows = await _fetch(
                self.db,
                "SELECT first_seq, count, kind, source FROM segments "
                "WHERE first_seq > ? AND first_seq <= ? ORDER BY first_seq",
                (new[0][0] - SEGMENT_MAX, new[-1][1]),
            )
            everyone = {**self._acked, sink: acked}
            done: list[tuple[int, int]] = [
                (first, count)
                for first, count, kind, source in rows
                if finished(kind, source, first, first + count - 1, everyone, self.sinks)
            ]
            # Only integers and the sink's name (config rule: [A-Za-z0-9_-]) are formatted
            # into the script: one trip to the SQLite thread.
            name = sink.replace("'", "''")
            kept = _clip(acked, done)
            # Only the rows that changed: with holes in every segment (a refused topic) a sink
            # has thousands of ranges, and rewriting them all at every flush kept a core busy.
            # A row left over from before a clip by another sink's delete still holds only
            # acknowledged seqs, and the next start merges it away.
            before, after = set(self._acked[sink]), set(kept)
            script = "".join(
                [
                    "PRAGMA synchronous=NORMAL;BEGIN;",
                    *(f"DELETE FROM segments WHERE first_seq = {first:d};" for first, _ in done),
                    *(
                        f"DELETE FROM sink_acks WHERE sink = '{name}' AND first = {a:d};"
                        for a, _ in before - after
                    ),
                    *(
                        f"INSERT OR REPLACE INTO sink_acks VALUES ('{name}', {a:d}, {b:d});"
                        for a, b in after - before
                    ),
                    # Deleting the newest segment must not let numbering restart below it.
                    f"UPDATE meta SET value = max(value, {new[-1][1]:d}) WHERE name = 'last_seq';",
                    f"COMMIT;PRAGMA synchronous={self.synchronous.upper()};",
                ]
            )
            try:
                await self.db.executescript(script)
            except sqlite3.DatabaseError as exc:
                await self._rollback_quietly()
                await self._restore_synchronous()
                raise OutboxError(f"outbox delete failed: {exc}") from exc
            self._acked[sink] = kept
            for other in self._acked:
                if other != sink:
                    self._acked[other] = _clip(self._acked[other], done)
        deleted = sum(count for _, count in done)
        self.depth -= deleted
        return deleted

    async def _restore_synchronous(self) -> None:
        try:
            await self.db.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
        except sqlite3.DatabaseError:
            log.exception("cannot restore synchronous=%s path=%s", self.synchronous, self.path)

    async def expire(self, now: float | None = None) -> int:
        """Retention by age (and by size); returns how many values were dropped.

        Telemetry past `max_age` is dropped; business events only once no telemetry is left
        to drop, so retention never takes an event while it could take a value instead.
        """
        now = time.time() if now is None else now
        cutoff = now - self.max_age
        dropped = 0
        async with self._lock:
            # Remembered event ids are tiny; they outlive the data so that a line standing in
            # 'done' for weeks does not send its last batch again after a restart.
            key_cutoff = now - max(self.max_age, EVENT_KEY_RETENTION)
            await self.db.execute("DELETE FROM event_keys WHERE created < ?", (key_cutoff,))
            await self.db.commit()
            while True:
                segments = await self._oldest(100, telemetry_only=True, before=cutoff)
                if not segments:
                    segments = await self._oldest(100, telemetry_only=False, before=cutoff)
                    if not segments or await self._has_telemetry():
                        break
                dropped += await self._drop(segments, "max_age")
            dropped += await self._enforce_size()
        return dropped

    async def _oldest(
        self, count: int, *, telemetry_only: bool, before: float | None = None
    ) -> list[tuple[int, int]]:
        """(first_seq, count) of the oldest segments: telemetry goes first; business events
        and gap messages only when none is left."""
        where = [f"kind = '{TELEMETRY}'"] if telemetry_only else []
        params: list[Any] = []
        if before is not None:
            where.append("created < ?")
            params.append(before)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        rows = await _fetch(
            self.db,
            f"SELECT first_seq, count FROM segments {clause}ORDER BY first_seq LIMIT ?",
            (*params, count),
        )
        return [(int(row[0]), int(row[1])) for row in rows]

    async def _has_telemetry(self) -> bool:
        rows = await _fetch(self.db, f"SELECT 1 FROM segments WHERE kind = '{TELEMETRY}' LIMIT 1")
        return bool(rows)

    async def _oldest_values(self, values: int, *, telemetry_only: bool) -> list[tuple[int, int]]:
        """The oldest segments holding at least `values` values (fewer if the outbox has
        fewer)."""
        out: list[tuple[int, int]] = []
        after = 0
        while sum(count for _, count in out) < values:
            rows = await _fetch(
                self.db,
                "SELECT first_seq, count FROM segments WHERE first_seq > ? "
                + (f"AND kind = '{TELEMETRY}' " if telemetry_only else "")
                + "ORDER BY first_seq LIMIT 200",
                (after,),
            )
            if not rows:
                break
            for first, count in rows:
                out.append((int(first), int(count)))
                if sum(c for _, c in out) >= values:
                    break
            after = int(rows[-1][0])
        return out

    async def _drop_oldest(self, values: int, why: str) -> None:
        """Make room for `values` values: oldest telemetry first, then oldest events."""
        segments = await self._oldest_values(values, telemetry_only=True)
        if sum(count for _, count in segments) < values:
            segments = await self._oldest_values(values, telemetry_only=False)
        if segments:
            await self._drop(segments, why)

    async def _used_bytes(self) -> int:
        (pages,) = (await _fetch(self.db, "PRAGMA page_count"))[0]
        (free,) = (await _fetch(self.db, "PRAGMA freelist_count"))[0]
        (size,) = (await _fetch(self.db, "PRAGMA page_size"))[0]
        return int((pages - free) * size)

    async def _enforce_size(self) -> int:
        """Keep the data under `max_bytes`; deleted pages are reused, the file does not grow."""
        if self.max_bytes is None:
            return 0
        dropped = 0
        while self.depth > 1 and (used := await self._used_bytes()) > self.max_bytes:
            # Down to 90 % of the limit, estimated from the mean size per value, so that one
            # pass (one gap message) usually does; the loop measures again after each commit.
            per_value = used / self.depth
            values = max(1, int((used - 0.9 * self.max_bytes) / per_value) + 1)
            segments = await self._oldest_values(values, telemetry_only=True)
            if not segments:
                segments = await self._oldest_values(values, telemetry_only=False)
            if not segments:
                break
            dropped += await self._drop(segments, "max_bytes")
        return dropped

    async def _drop(self, segments: list[tuple[int, int]], why: str) -> int:
        """Retention: the caller holds the lock. Counted, logged at ERROR and announced on the
        wire with an `edgegw.gap/1` message in the same transaction: this is data loss."""
        deleted = sum(count for _, count in segments)
        ranges = merge_ranges((first, first + count - 1) for first, count in segments)
        await self._delete_segments([first for first, _ in segments])
        await self.db.execute(_BUMP_LAST_SEQ, (ranges[-1][1],))
        await self.db.execute(
            "UPDATE meta SET value = value + ? WHERE name = 'dropped'", (deleted,)
        )
        gap = self._gap_event(ranges, deleted, why)
        cut = self._segments([gap])
        await self.db.executemany(INSERT_SEGMENT, cut.rows)
        await self.db.commit()
        self.depth -= deleted
        self._stored(cut)
        self.dropped += deleted
        for sink in self._acked:
            self._acked[sink] = _clip(self._acked[sink], segments)
        log.error(
            "outbox retention dropped events count=%d ranges=%s reason=%s gap_seq=%s",
            deleted,
            ";".join(f"{a}-{b}" for a, b in ranges),
            why,
            gap.payload["seq"] or "none (no sink selects gap messages)",
        )
        return deleted

    def _gap_event(
        self, ranges: list[tuple[int, int]], count: int | None, why: str
    ) -> PendingEvent:
        now = time.time()
        trace = os.urandom(8).hex()
        spans = "\x1f".join(f"{a}-{b}" for a, b in ranges) or why
        key = str(uuid.uuid5(GAP_NAMESPACE, f"{self.gateway}\x1f{spans}\x1f{self._next_seq}"))
        payload: dict[str, Any] = {
            "schema": GAP_SCHEMA,
            "id": key,
            "gateway": self.gateway,
            "dropped": [[a, b] for a, b in ranges],
            "count": count,
            "reason": why,
            "ts": iso_utc(now),
            "seq": 0,
            "trace": trace,
        }
        return PendingEvent(key, GAP_SCHEMA, self.gap_topic, payload, trace, now)


def _clip(
    acked: list[tuple[int, int]], deleted: Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    """A sink's acknowledged ranges without the seqs of deleted segments (first, count):
    only ranges over what is still stored need keeping. One sweep over both, sorted: at a
    start after a long outage both lists can be tens of thousands long."""
    cuts = merge_ranges((first, first + count - 1) for first, count in deleted)
    if not cuts:
        return acked
    out: list[tuple[int, int]] = []
    i = 0
    for a, b in sorted(acked):
        while i < len(cuts) and cuts[i][1] < a:
            i += 1
        start, j = a, i
        while j < len(cuts) and cuts[j][0] <= b:
            if cuts[j][0] > start:
                out.append((start, cuts[j][0] - 1))
            start = max(start, cuts[j][1] + 1)
            j += 1
        if start <= b:
            out.append((start, b))
    return out


def _quarantine_rows(records: Sequence[QuarantineRecord]) -> list[tuple[Any, ...]]:
    dumps = orjson.dumps
    rows = []
    for r in records:
        value = dumps(r.value, default=str)
        rows.append(
            (
                r.key,
                r.kind,
                r.subject,
                r.rule,
                value,
                r.reason,
                r.topic,
                None if r.payload is None else dumps(r.payload),
                r.trace,
                r.ts,
                r.created,
                r.count,
                value,
                r.ts if r.last_ts is None else r.last_ts,
            )
        )
    return rows


def _trigger_time(event: PendingEvent) -> float:
    """An event's source timestamp, from its `ts` text (when the gateway took it, failing
    that)."""
    text = event.payload.get("ts")
    if isinstance(text, str):
        with contextlib.suppress(ValueError):
            return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    return event.created


def _event_schema(payload: bytes) -> str:
    schema = orjson.loads(payload).get("schema")
    return schema if isinstance(schema, str) else "edgegw.event/1"


def _write_error(exc: sqlite3.DatabaseError) -> OutboxError:
    if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower():
        return OutboxFull(f"outbox is full ({exc}): free disk space; nothing was written")
    return OutboxError(f"outbox write failed: {exc}")


class _Damaged(Exception):
    """The database file fails its integrity check or is not a database."""


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    text = str(exc).lower()
    return any(
        sign in text for sign in ("malformed", "not a database", "corrupt", "file is encrypted")
    )


def _move_aside(path: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = f"{path}.corrupt-{stamp}"
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.replace(path + suffix, aside + suffix)
    return aside


def _read_reservation(path: str) -> int:
    try:
        with open(path, encoding="ascii") as handle:
            return int(handle.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def _write_reservation(path: str, value: int) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="ascii") as handle:
        handle.write(f"{value}\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    directory = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _prepare_directory(path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise OutboxError(f"cannot create the state directory {directory}: {exc.strerror}") from exc
    if not os.access(directory, os.W_OK):
        raise OutboxError(f"the state directory {directory} is not writable by this user")


async def _fetch(db: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    return list(await db.execute_fetchall(sql, params))


def read_stats(path: str, sinks: Mapping[str, Selector] | None = None) -> OutboxStats:
    """Stats of an outbox file, read-only, safe while the daemon runs (WAL readers don't block).
    `depth` counts the messages some sink in `sinks` (name -> what it selects) has not
    acknowledged yet; `sinks` each sink's own backlog."""
    if not os.path.exists(path):
        raise OutboxError(f"no outbox at {path} (has the gateway run with this config?)")
    sinks = sinks or {DEFAULT_SINK: takes_all}
    try:
        with snapshot(path) as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "segments" in tables:
                backlogs = read_backlogs(db, sinks)
                per_sink, total, max_seq = backlogs.sinks, backlogs.total, backlogs.last_stored
            else:  # a file an older edgegw wrote, not migrated yet
                depth, first, max_seq, oldest = db.execute(
                    "SELECT count(*), min(seq), max(seq), "
                    "(SELECT created FROM outbox ORDER BY seq LIMIT 1) FROM outbox"
                ).fetchone()
                total = SinkBacklog(int(depth), first, oldest)
                per_sink = dict.fromkeys(sinks, total)
            meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
            quarantined = (
                db.execute("SELECT count(*) FROM quarantine").fetchone()[0]
                if "quarantine" in tables
                else 0
            )
    except sqlite3.DatabaseError as exc:
        raise OutboxError(f"cannot read outbox {path}: {exc}") from exc
    size = sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))
    return OutboxStats(
        path=path,
        depth=total.waiting,
        first_seq=total.first_seq,
        last_seq=max(int(meta.get("last_seq", 0)), int(max_seq or 0)),
        oldest_created=total.oldest_created,
        dropped=int(meta.get("dropped", 0)),
        file_bytes=size,
        quarantined=int(quarantined),
        sinks=dict(per_sink),
    )


def read_waiting(path: str, sink: str | None = DEFAULT_SINK) -> list[dict[str, Any]]:
    """The messages of an outbox file that `sink` has not acknowledged (None: every message
    stored), in seq order, parsed; read-only, safe while the daemon runs. For tools and tests:
    a backlog of millions is millions of dicts."""
    try:
        with snapshot(path) as db:
            rows = db.execute(
                "SELECT first_seq, count, items FROM segments ORDER BY first_seq"
            ).fetchall()
            acked = read_acks(db, [sink])[sink] if sink is not None else []
    except sqlite3.DatabaseError as exc:
        raise OutboxError(f"cannot read outbox {path}: {exc}") from exc
    out: list[dict[str, Any]] = []
    for first, count, blob in rows:
        due = missing(acked, first, first + count - 1)
        if due:
            items = decode_items(blob)
            out.extend(orjson.loads(items[seq - first]) for a, b in due for seq in range(a, b + 1))
    return out
