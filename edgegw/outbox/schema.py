"""The outbox file's tables, their migrations from older edgegw versions, and salvage of a
damaged file. Plain sqlite3, run in a worker thread: a migration is one transaction over what
may be a million rows, which a thread hop per statement would make slow."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from edgegw.outbox.segments import TELEMETRY, encode_items, kind_of

SCHEMA_VERSION = 5
# Version 3: the key's uniqueness is checked on (key_ts, id) instead of id alone.
# Version 4: `event_keys` remembers what was sent under each id (digest and data), so an
# event detected again with other data is a conflict, not a duplicate; a quarantine record
# has a count, last value and last time (a lasting violation is one record).
# Version 5: segments. The messages of one source from one commit group are one row with a
# contiguous seq range, their JSON compressed together (segments.py), and each sink's
# acknowledged ranges are kept beside them (`sink_acks`). Telemetry ids are no longer unique
# in the file: a telemetry message read twice (a source repeating a sample) is dropped within
# its commit group, and across restarts consumers dedupe by id, as they always had to for
# at-least-once delivery. Business-event ids stay remembered in `event_keys`.

SEGMENT_MAX = 1000
"""Messages in one segment at most. A claim for `seq > n` reads segments from first_seq
`n - SEGMENT_MAX + 1` on, so it walks the primary key instead of scanning the table."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (
    first_seq INTEGER PRIMARY KEY,  -- seq of its first message; the others follow, gap-free
    count     INTEGER NOT NULL,     -- messages in it (at most SEGMENT_MAX)
    kind      TEXT NOT NULL,        -- telemetry | event | gap (what a sink's select matches)
    source    TEXT NOT NULL,        -- the source of its telemetry; '' for gateway messages
    created   REAL NOT NULL,        -- wall clock when the gateway received its first value
    source_ts REAL NOT NULL,        -- the oldest source timestamp among its messages
    items     BLOB NOT NULL         -- zstandard (zlib before 2026-12) of the messages' JSON lines
);
CREATE TABLE IF NOT EXISTS sink_acks (  -- seq ranges a sink acknowledged that are still stored
    sink  TEXT NOT NULL,                -- (a segment leaves once every sink that selects it
    first INTEGER NOT NULL,             -- acknowledged all of it)
    last  INTEGER NOT NULL,
    PRIMARY KEY (sink, first)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta(name, value) VALUES ('last_seq', 0), ('dropped', 0);
CREATE TABLE IF NOT EXISTS event_keys (  -- every event id ever committed, kept for max_age:
    id      TEXT PRIMARY KEY,            -- an event detected again (e.g. after a restart)
    created REAL NOT NULL,               -- is refused even after its row was delivered
    digest  TEXT,                        -- quarantine.data_digest of the data sent (NULL:
    data    BLOB                         -- sent by an edgegw before version 4); the data, JSON
);
CREATE TABLE IF NOT EXISTS quarantine (
    qid      INTEGER PRIMARY KEY AUTOINCREMENT,
    id       TEXT NOT NULL,              -- the id the message would have had (a conflict:
    kind     TEXT NOT NULL,              -- telemetry | event       the id of its release)
    subject  TEXT NOT NULL,              -- source.tag or event type
    rule     TEXT NOT NULL,              -- range | values | sequence | contract | conflict
    value    BLOB NOT NULL,              -- the offending value, JSON (the first, if lasting)
    reason   TEXT NOT NULL,
    topic    TEXT NOT NULL,
    payload  BLOB,                       -- the event message, for release (events only)
    trace    TEXT NOT NULL,
    ts       REAL NOT NULL,              -- source timestamp (the first, if lasting)
    created  REAL NOT NULL,
    released REAL,                       -- set by `edgegw quarantine release`; the gateway
                                         -- then moves the event into the outbox
    count      INTEGER NOT NULL DEFAULT 1,  -- violating readings in this record
    last_value BLOB,                     -- the latest of them, JSON
    last_ts    REAL,                     -- its source timestamp
    UNIQUE (id, ts)
);
"""

# -- migrations ------------------------------------------------------------------------------

_V3_OUTBOX = """
CREATE TABLE outbox (
    seq     INTEGER PRIMARY KEY,
    id      TEXT NOT NULL,
    schema  TEXT NOT NULL,
    topic   TEXT NOT NULL,
    payload BLOB NOT NULL,
    trace   TEXT NOT NULL,
    created REAL NOT NULL,
    key_ts  INTEGER NOT NULL DEFAULT 0,
    UNIQUE (key_ts, id)
)
"""
# Columns version 4 added to tables of version 2 and 3 (a table that is missing is created
# whole by SCHEMA). Keys remembered by an older edgegw have no digest: what was sent under
# them is unknown, and an event detected again under such a key is taken for the same one.
_V4_COLUMNS = {
    "event_keys": [("digest", "TEXT"), ("data", "BLOB")],
    "quarantine": [
        ("count", "INTEGER NOT NULL DEFAULT 1"),
        ("last_value", "BLOB"),
        ("last_ts", "REAL"),
    ],
}


def migrate(path: str) -> tuple[int, int] | None:
    """Bring an outbox of version 2 to 4 up to version 5 in ONE transaction (a crash leaves
    the old file as it was); returns (old version, messages carried over), or None when
    nothing was to do. A file newer than this edgegw is left alone (the caller refuses it)."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version == 0 or version >= SCHEMA_VERSION:
            return None
        db.execute("BEGIN IMMEDIATE")
        try:
            if version < 3:
                db.execute("ALTER TABLE outbox RENAME TO outbox_v2")
                db.execute(_V3_OUTBOX)
                db.execute(
                    "INSERT INTO outbox(seq, id, schema, topic, payload, trace, created) "
                    "SELECT seq, id, schema, topic, payload, trace, created FROM outbox_v2"
                )
                db.execute("DROP TABLE outbox_v2")
            for table, columns in _V4_COLUMNS.items():
                have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                for name, kind in columns:
                    if have and name not in have:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
            for statement in _statements(SCHEMA):
                if not statement.lstrip().startswith("INSERT"):
                    db.execute(statement)
            rows = db.execute(
                "SELECT seq, schema, payload, created, key_ts FROM outbox ORDER BY seq"
            )
            carried = 0
            for segment in segments_of_rows(rows):
                db.execute(INSERT_SEGMENT, segment)
                carried += segment[1]
            db.execute("DROP TABLE outbox")
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return version, carried
    finally:
        db.close()


def _statements(script: str) -> Iterator[str]:
    """The statements of a script, one by one: executescript() would COMMIT the transaction
    the migration runs in."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer
            buffer = ""


INSERT_SEGMENT = (
    "INSERT OR IGNORE INTO segments(first_seq, count, kind, source, created, source_ts, items) "
    "VALUES (?,?,?,?,?,?,?)"
)


def segments_of_rows(rows: Iterable[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
    """Rows of the version 2-4 `outbox` table (seq, schema, payload, created, key_ts), in seq
    order, as segment rows: runs of consecutive seqs of one kind and source."""
    run: list[tuple[Any, ...]] = []
    key: tuple[str, str] | None = None
    for seq, schema, payload, created, key_ts in rows:
        kind = kind_of(schema)
        source = ""
        if kind == TELEMETRY:
            source = str(orjson.loads(payload).get("source", ""))
        here = (kind, source)
        if run and (here != key or seq != run[-1][0] + 1 or len(run) >= SEGMENT_MAX):
            yield _segment_row(run, key)
            run = []
        key = here
        run.append((seq, bytes(payload), float(created), (key_ts or 0) / 1e6 or float(created)))
    if run:
        yield _segment_row(run, key)


def _segment_row(run: list[tuple[Any, ...]], key: tuple[str, str] | None) -> tuple[Any, ...]:
    assert key is not None
    kind, source = key
    return (
        run[0][0],
        len(run),
        kind,
        source,
        min(r[2] for r in run),
        min(r[3] for r in run),
        encode_items([r[1] for r in run]),
    )


# -- salvage ---------------------------------------------------------------------------------


def salvage(path: str) -> list[tuple[Any, ...]]:
    """Segment rows still readable in a damaged file (of any version); none when nothing
    reads."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.DatabaseError:
        return []
    try:
        try:
            cursor = db.execute(
                "SELECT first_seq, count, kind, source, created, source_ts, items "
                "FROM segments ORDER BY first_seq"
            )
            return _readable(cursor)
        except sqlite3.DatabaseError:
            pass
        try:
            cursor = db.execute(
                "SELECT seq, schema, payload, created, key_ts FROM outbox ORDER BY seq"
            )
        except sqlite3.DatabaseError:
            try:  # a version 2 file: no key_ts column
                cursor = db.execute(
                    "SELECT seq, schema, payload, created, 0 FROM outbox ORDER BY seq"
                )
            except sqlite3.DatabaseError:
                return []
        return list(segments_of_rows(_readable(cursor)))
    finally:
        db.close()


def _readable(cursor: sqlite3.Cursor) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    while True:
        try:
            row = cursor.fetchone()
        except sqlite3.DatabaseError:
            break
        if row is None:
            break
        rows.append(tuple(row))
    return rows
