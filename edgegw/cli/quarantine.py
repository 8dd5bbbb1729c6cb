"""`edgegw quarantine`: list held records, release an event, drop a record; every action audited.

The command works on the outbox file while the gateway runs (SQLite WAL): it only reads,
marks a record released, or deletes one. Moving a released event into the outbox is left to
the gateway, which alone assigns `seq` numbers.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import logging
import os
import sqlite3
import sys
import time
from typing import Any

import orjson

from edgegw.config.types import parse_duration
from edgegw.errors import EdgeGwError
from edgegw.timefmt import iso_utc

log = logging.getLogger("edgegw.audit")

_COLUMNS = "qid, id, kind, subject, rule, value, reason, ts, created, released"
# Version 4 of the outbox: a lasting violation is one record with a count and its last value.
_LASTING = "count, last_value, last_ts"
_LASTING_BEFORE_V4 = "1, NULL, NULL"


def _lasting(db: sqlite3.Connection) -> str:
    """The lasting-violation columns, or stand-ins on a file no version 4 gateway opened."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(quarantine)")}
    return _LASTING if "count" in columns else _LASTING_BEFORE_V4


def _connect(path: str, *, read_only: bool = False) -> sqlite3.Connection:
    if not os.path.exists(path):
        raise EdgeGwError(f"no outbox at {path} (has the gateway run with this config?)")
    # Read-only where possible: run as root, a writer would leave root-owned -wal/-shm files.
    uri = f"file:{path}?mode=ro" if read_only else f"file:{path}"
    db = sqlite3.connect(uri, uri=True, timeout=5.0)
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "quarantine" not in tables:
        db.close()
        raise EdgeGwError(f"{path} has no quarantine yet: start this edgegw version on it once")
    return db


def parse_since(text: str, now: float | None = None) -> float:
    """'2h' (that long ago) or an ISO time such as 2026-11-29T08:00:00Z, as epoch seconds."""
    now = time.time() if now is None else now
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        stamp = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise EdgeGwError(
            f"--since '{text}' is neither a duration (e.g. 2h, 30m) nor an ISO time "
            "(e.g. 2026-11-29T08:00:00Z)"
        ) from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()


def list_records(path: str, *, since: str | None, as_json: bool) -> int:
    cutoff = parse_since(since) if since else 0.0
    with contextlib.closing(_connect(path, read_only=True)) as db:
        rows = db.execute(
            f"SELECT {_COLUMNS}, {_lasting(db)}, payload FROM quarantine WHERE created >= ? "
            "ORDER BY qid",
            (cutoff,),
        ).fetchall()
    records = [_record(row) for row in rows]
    if as_json:
        for record in records:
            sys.stdout.write(orjson.dumps(record).decode() + "\n")
        return 0
    if not records:
        print("quarantine is empty" + (f" since {since}" if since else ""))
        return 0
    for r in records:
        state = f"  released {r['released']}" if r["released"] else ""
        print(
            f"#{r['qid']:<5} {r['quarantined']}  {r['kind']:<9} {r['subject']:<28} "
            f"{r['rule']:<8} {r['reason']}{_lasting_text(r)}{state}"
        )
    print(f"{len(records)} record(s); `edgegw quarantine release|drop -c FILE ID` acts on one")
    return 0


def _lasting_text(record: dict[str, Any]) -> str:
    """`  (19 values until 2026-11-29T05:37:26.100Z, the last 7)` for a lasting violation,
    `  (seen 3 times, the last at …)` for an event held again."""
    if record["count"] <= 1:
        return ""
    if record["kind"] == "event":
        return f"  (seen {record['count']} times, the last at {record['last_ts']})"
    last = orjson.dumps(record["last_value"]).decode()
    return f"  ({record['count']} values until {record['last_ts']}, the last {last})"


def _record(row: tuple[Any, ...]) -> dict[str, Any]:
    """A record as printed (the row: _COLUMNS, the lasting columns, payload)."""
    qid, key, kind, subject, rule, value, reason, ts, created, released = row[:10]
    count, last_value, last_ts, payload = row[10:14]
    first = orjson.loads(value)
    record = {
        "qid": qid,
        "id": key,
        "kind": kind,
        "subject": subject,
        "rule": rule,
        "value": first,
        "reason": reason,
        "ts": iso_utc(ts),
        "quarantined": iso_utc(created),
        "released": iso_utc(released) if released else None,
        "count": int(count),
        "last_value": first if last_value is None else orjson.loads(last_value),
        "last_ts": iso_utc(ts if last_ts is None else last_ts),
    }
    supersedes = orjson.loads(payload).get("supersedes") if payload is not None else None
    if supersedes is not None:
        record["supersedes"] = supersedes
    return record


def _find(db: sqlite3.Connection, ident: str) -> tuple[Any, ...]:
    column = "qid" if ident.isdigit() else "id"
    row = db.execute(
        f"SELECT {_COLUMNS}, {_lasting(db)}, payload FROM quarantine WHERE {column} = ? "
        "ORDER BY qid DESC",
        (ident,),
    )
    found = row.fetchone()
    if found is None:
        raise EdgeGwError(f"no quarantined record {ident} (see `edgegw quarantine -c FILE`)")
    return tuple(found)


def release(path: str, ident: str) -> int:
    with contextlib.closing(_connect(path)) as db:
        row = _find(db, ident)
        record = _record(row)
        if row[-1] is None:
            raise EdgeGwError(
                f"record #{record['qid']} is a {record['kind']} value, already published as "
                "bad; only events can be released (use drop to clear it)"
            )
        if record["released"]:
            print(f"record #{record['qid']} was already released at {record['released']}")
            return 0
        with db:
            db.execute("UPDATE quarantine SET released = ? WHERE qid = ?", (time.time(), row[0]))
    _audit("release", record)
    superseding = (
        f", a new event superseding {record['supersedes']}" if "supersedes" in record else ""
    )
    print(
        f"released #{record['qid']} ({record['subject']} id {record['id']}{superseding}); the "
        "running gateway publishes it within seconds (or at its next start)"
    )
    return 0


def drop(path: str, ident: str) -> int:
    with contextlib.closing(_connect(path)) as db:
        row = _find(db, ident)
        record = _record(row)
        with db:
            db.execute("DELETE FROM quarantine WHERE qid = ?", (row[0],))
    _audit("drop", record)
    print(f"dropped #{record['qid']} ({record['subject']}: {record['reason']})")
    return 0


def _audit(action: str, record: dict[str, Any]) -> None:
    log.warning(
        "audit: quarantine %s qid=%s id=%s kind=%s subject=%s rule=%s reason=%s user=%s",
        action,
        record["qid"],
        record["id"],
        record["kind"],
        record["subject"],
        record["rule"],
        record["reason"],
        _user(),
        extra={"audit": f"quarantine-{action}", "trace": record.get("trace")},
    )


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
