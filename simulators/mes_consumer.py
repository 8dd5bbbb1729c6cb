"""Reference MES consumer: store every gateway message once, detect seq gaps, summarise.

This is the consumer an MES integrator copies, and the tests' witness that every business
event arrives exactly once in effect and that no ``seq`` is lost. It depends only on paho-mqtt
and the standard library (nothing from ``edgegw``), so it can be lifted out as one file.

What it does with every message it receives (paho's network thread, one at a time):

1. A message is *data* when its payload is a JSON object with a non-empty string ``id``, an
   integer ``seq`` and a string ``gateway``. Anything else (retained status ``online``/
   ``offline`` or JSON, retained JSON Schemas under ``.../schemas/{type}``, foreign traffic) is
   counted as *other* and acknowledged.
2. Data is written with ``INSERT OR IGNORE`` into the ``messages`` table and committed. The
   database decides what is a duplicate (the primary key is ``id``), so dedupe survives a
   restart of the consumer. The payload is authoritative; MQTT 5 user properties are ignored.
3. Only then is the PUBLISH acknowledged (manual PUBACK): a crash between receipt and commit
   leaves the message unacknowledged, and the broker delivers it again to the persistent
   session. If the write fails, the message is *not* acknowledged (counted in ``errors``);
   the broker redelivers it on the next session resume.

Gaps are judged on the set of ``seq`` values stored per gateway, never on arrival order: after
a gateway restart, a resend of old messages may arrive after newer ones. A gap is a ``seq``
missing between the lowest and the highest stored for that gateway.

Run it: ``python -m simulators.mes_consumer --port 1883`` (see ``--help``), or in-process::

    with MesConsumer("mes.sqlite3", port=1883) as consumer:  # start() on enter
        summary = consumer.wait_until(lambda s: s.stored >= 10, timeout=5)
        consumer.events("batch.completed")
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import hashlib
import json
import logging
import re
import signal
import socket
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

__all__ = [
    "EVENT_SCHEMA_PREFIX",
    "TELEMETRY_SCHEMA_PREFIX",
    "UNTYPED",
    "GatewaySeqs",
    "MesConsumer",
    "Summary",
    "default_client_id",
    "main",
]

log = logging.getLogger("simulators.mes_consumer")

#: Schemas starting with these prefixes count as business events / telemetry (any version).
EVENT_SCHEMA_PREFIX = "edgegw.event/"
TELEMETRY_SCHEMA_PREFIX = "edgegw.telemetry/"
#: Key of ``Summary.events_by_type`` for an event without a string ``type``.
UNTYPED = "(untyped)"

_DDL = """
CREATE TABLE IF NOT EXISTS messages (
    id       TEXT PRIMARY KEY,  -- the message's idempotency key
    gateway  TEXT,
    seq      INTEGER,           -- per gateway, gap-free at the source
    schema   TEXT,
    type     TEXT,              -- business event type (NULL for telemetry)
    topic    TEXT,
    payload  BLOB,              -- the payload exactly as received
    received REAL               -- Unix time of the first arrival
)
"""
_INSERT = (
    "INSERT OR IGNORE INTO messages(id, gateway, seq, schema, type, topic, payload, received) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_SUMMARY_RANGES = 5  # missing ranges shown per gateway in the one-line summary


# -- the summary ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class GatewaySeqs:
    """What is stored for one gateway (all time, from the database)."""

    min_seq: int
    max_seq: int
    count: int  # stored messages (distinct ids)
    missing: tuple[tuple[int, int], ...]  # inclusive ranges absent between min_seq and max_seq
    reused_seqs: int = 0  # stored messages whose seq another id already had (must stay 0)

    @property
    def missing_count(self) -> int:
        return sum(last - first + 1 for first, last in self.missing)

    def describe(self) -> str:
        ranges = [f"{a}" if a == b else f"{a}-{b}" for a, b in self.missing[:_SUMMARY_RANGES]]
        if len(self.missing) > _SUMMARY_RANGES:
            ranges.append(f"+{len(self.missing) - _SUMMARY_RANGES} more")
        text = f"seq {self.min_seq}..{self.max_seq} n={self.count}"
        text += f" missing {self.missing_count} [{', '.join(ranges)}]" if self.missing else " ok"
        if self.reused_seqs:
            text += f" reused_seqs={self.reused_seqs}"
        return text


@dataclass(frozen=True, slots=True)
class Summary:
    """A consistent snapshot. ``stored`` and everything per gateway/type/schema come from the
    database (all time); ``received``, ``inserted``, ``duplicates``, ``conflicts``, ``other``
    and ``errors`` count arrivals since this consumer's ``start()``."""

    received: int = 0  # every message delivered: data and other
    stored: int = 0  # rows in the table (distinct ids, all time)
    inserted: int = 0  # new rows written since start()
    duplicates: int = 0  # arrivals of an id already stored
    conflicts: int = 0  # duplicates whose gateway or seq differ from the stored row's
    other: int = 0  # not data: no id/seq/gateway, not a JSON object (status, schemas, ...)
    errors: int = 0  # data that could not be stored (left unacknowledged)
    gateways: dict[str, GatewaySeqs] = field(default_factory=dict)
    events_by_type: dict[str, int] = field(default_factory=dict)  # distinct ids per type
    telemetry: int = 0  # stored telemetry messages
    by_schema: dict[str, int] = field(default_factory=dict)  # stored rows per schema

    @property
    def events(self) -> int:
        return sum(self.events_by_type.values())

    @property
    def gaps(self) -> dict[str, tuple[tuple[int, int], ...]]:
        """Missing seq ranges of the gateways that have any."""
        return {gw: s.missing for gw, s in self.gateways.items() if s.missing}

    @property
    def missing_total(self) -> int:
        return sum(s.missing_count for s in self.gateways.values())

    def line(self) -> str:
        """One line: counters, every gateway's seq range and gaps, events by type."""
        parts = [
            f"received={self.received} stored={self.stored} (+{self.inserted} new)"
            f" duplicates={self.duplicates} other={self.other}"
        ]
        if self.conflicts:
            parts[0] += f" conflicts={self.conflicts}"
        if self.errors:
            parts[0] += f" errors={self.errors}"
        gateways = "; ".join(f"{gw} {s.describe()}" for gw, s in sorted(self.gateways.items()))
        parts.append(f"gateways: {gateways or '-'}")
        types = " ".join(f"{t}={n}" for t, n in sorted(self.events_by_type.items()))
        parts.append(f"events: {types or '-'}")
        parts.append(f"telemetry={self.telemetry}")
        return " | ".join(parts)

    def __str__(self) -> str:
        return self.line()


class _SeqSet:
    """The seqs seen for one gateway, as sorted disjoint inclusive intervals."""

    __slots__ = ("count", "ends", "reused", "starts")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.count = 0  # stored rows
        self.reused = 0  # rows whose seq was already in the set

    def add(self, seq: int) -> None:
        self.count += 1
        starts, ends = self.starts, self.ends
        i = bisect.bisect_right(starts, seq)  # starts[i-1] <= seq < starts[i]
        if i > 0 and seq <= ends[i - 1]:
            self.reused += 1
            return
        join_left = i > 0 and ends[i - 1] == seq - 1
        join_right = i < len(starts) and starts[i] == seq + 1
        if join_left and join_right:
            ends[i - 1] = ends[i]
            del starts[i], ends[i]
        elif join_left:
            ends[i - 1] = seq
        elif join_right:
            starts[i] = seq
        else:
            starts.insert(i, seq)
            ends.insert(i, seq)

    def snapshot(self) -> GatewaySeqs:
        missing = tuple(
            (self.ends[k] + 1, self.starts[k + 1] - 1) for k in range(len(self.starts) - 1)
        )
        return GatewaySeqs(
            min_seq=self.starts[0],
            max_seq=self.ends[-1],
            count=self.count,
            missing=missing,
            reused_seqs=self.reused,
        )


@dataclass(frozen=True, slots=True)
class _Data:
    """The fields of a data message that the table keeps in columns."""

    id: str
    gateway: str
    seq: int
    schema: str | None
    type: str | None


def _parse(payload: bytes) -> _Data | None:
    """The data fields of a payload, or None when it is not a data message."""
    try:
        doc = json.loads(payload)
    except ValueError:  # not JSON, or not UTF-8 (plain-text status "online", ...)
        return None
    if not isinstance(doc, dict):
        return None
    msg_id, seq, gateway = doc.get("id"), doc.get("seq"), doc.get("gateway")
    if not (isinstance(msg_id, str) and msg_id and isinstance(gateway, str)):
        return None
    if not isinstance(seq, int) or isinstance(seq, bool):
        return None
    schema = doc.get("schema")
    kind = doc.get("type")
    return _Data(
        id=msg_id,
        gateway=gateway,
        seq=seq,
        schema=schema if isinstance(schema, str) else None,
        type=kind if isinstance(kind, str) else None,
    )


def _is_event(schema: str | None) -> bool:
    return schema is not None and schema.startswith(EVENT_SCHEMA_PREFIX)


def _is_telemetry(schema: str | None) -> bool:
    return schema is not None and schema.startswith(TELEMETRY_SCHEMA_PREFIX)


def default_client_id(db_path: str | Path) -> str:
    """A client id stable for one database on one host, so that a restarted consumer resumes
    its persistent session (≤ 23 characters: valid for every MQTT 3.1.1 broker)."""
    key = f"{socket.gethostname()}\x1f{Path(db_path).resolve()}"
    return "mesc-" + hashlib.sha256(key.encode()).hexdigest()[:16]


# -- the consumer --------------------------------------------------------------------------------
class MesConsumer:
    """Subscribes to a gateway's MQTT topics and stores each data message once in SQLite.

    ``start()`` connects, subscribes with QoS 1 and returns once the broker has acknowledged
    the subscription; paho's network thread then receives, stores and acknowledges. The
    readers (``summary``, ``events``, ``wait_until``) are safe to call from any thread.

    With ``persistent_session`` (the default) the session survives a disconnect for
    ``session_expiry`` seconds (MQTT 5: clean start off plus a session expiry; 3.1.1: clean
    session off), so messages published while the consumer is down are queued by the broker.
    Resuming needs the same client id: by default it is derived from the host name and the
    database path, so one database means one session. Do not run two consumers on one
    database at once: with the same client id the broker disconnects one of them.
    """

    def __init__(
        self,
        db_path: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 1883,
        topic: str = "#",
        client_id: str | None = None,
        mqtt_version: Literal["5", "3.1.1"] = "5",
        persistent_session: bool = True,
        session_expiry: int = 86400,
        synchronous: Literal["full", "normal"] = "full",
        keepalive: int = 30,
    ) -> None:
        if mqtt_version not in ("5", "3.1.1"):
            raise ValueError(f"mqtt_version must be '5' or '3.1.1', not {mqtt_version!r}")
        if synchronous not in ("full", "normal"):
            raise ValueError(f"synchronous must be 'full' or 'normal', not {synchronous!r}")
        self.db_path = Path(db_path)
        self.host = host
        self.port = port
        self.topic = topic
        self.mqtt_version = mqtt_version
        self.persistent_session = persistent_session
        self.session_expiry = session_expiry
        self.synchronous = synchronous
        self.keepalive = keepalive
        if client_id is None:
            client_id = (
                default_client_id(self.db_path)
                if persistent_session
                else f"mesc-{uuid.uuid4().hex[:16]}"
            )
        self.client_id = client_id

        # Guarded by _cond: counters and the per-gateway / per-type state mirroring the table.
        self._cond = threading.Condition()
        self._version = 0  # bumped at every change, wakes wait_until()
        self._received = self._inserted = self._duplicates = self._conflicts = 0
        self._other = self._errors = 0
        self._stored = 0
        self._seqs: dict[str, _SeqSet] = {}
        self._event_types: dict[str, int] = {}
        self._telemetry = 0
        self._schemas: dict[str, int] = {}

        self._db: sqlite3.Connection | None = None  # written by paho's thread only
        self._client: paho.Client | None = None
        self._subscribed = threading.Event()
        self._start_error: str | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> MesConsumer:
        """Open the database, connect, subscribe; return once the SUBACK has arrived."""
        if self._client is not None:
            raise RuntimeError("consumer already started")
        self._open_db()
        self._subscribed.clear()
        self._start_error = None
        v5 = self.mqtt_version == "5"
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=None if v5 else not self.persistent_session,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            manual_ack=True,  # PUBACK only after the row is committed
        )
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        client.connect_timeout = timeout
        self._client = client
        try:
            if v5:
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                props.SessionExpiryInterval = self.session_expiry if self.persistent_session else 0
                client.connect(
                    self.host,
                    self.port,
                    self.keepalive,
                    clean_start=not self.persistent_session,
                    properties=props,
                )
            else:
                client.connect(self.host, self.port, self.keepalive)
        except (OSError, ValueError) as exc:
            self._client = None
            self._close_db()
            raise ConnectionError(
                f"MES consumer cannot connect to {self.host}:{self.port}: {exc}"
            ) from exc
        client.loop_start()
        if not self._subscribed.wait(timeout) or self._start_error is not None:
            error = self._start_error or f"no SUBACK for {self.topic!r} within {timeout} s"
            self.stop()
            raise ConnectionError(f"MES consumer at {self.host}:{self.port}: {error}")
        log.info(
            "subscribed to %r on %s:%d as %s (MQTT %s, persistent session %s)",
            self.topic,
            self.host,
            self.port,
            self.client_id,
            self.mqtt_version,
            self.persistent_session,
        )
        return self

    def stop(self) -> None:
        """Disconnect and close the database. Messages received but not yet stored stay
        unacknowledged: the broker delivers them again to the next session."""
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()  # joins paho's thread: no callback runs after this
        self._close_db()

    def __enter__(self) -> MesConsumer:
        """Start unless started already (``with MesConsumer(...).start(timeout=3):`` works)."""
        return self if self._client is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- database -------------------------------------------------------------------------------
    def _open_db(self) -> None:
        if self._db is not None:
            return
        # Opened here, used by paho's thread afterwards (never concurrently: stop() joins it).
        db = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA busy_timeout=5000")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
            db.execute(_DDL)
            rows = db.execute("SELECT gateway, seq, schema, type FROM messages").fetchall()
        except BaseException:
            db.close()
            raise
        with self._cond:
            self._received = self._inserted = self._duplicates = self._conflicts = 0
            self._other = self._errors = 0
            self._stored = 0
            self._seqs, self._event_types, self._schemas = {}, {}, {}
            self._telemetry = 0
            for gateway, seq, schema, kind in rows:
                self._count_stored_locked(gateway, seq, schema, kind)
            self._version += 1
            self._cond.notify_all()
        self._db = db

    def _close_db(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def _count_stored_locked(
        self, gateway: str | None, seq: int | None, schema: str | None, kind: str | None
    ) -> None:
        self._stored += 1
        if gateway is not None and seq is not None:
            self._seqs.setdefault(gateway, _SeqSet()).add(seq)
        if schema is not None:
            self._schemas[schema] = self._schemas.get(schema, 0) + 1
        if _is_event(schema):
            key = kind if kind is not None else UNTYPED
            self._event_types[key] = self._event_types.get(key, 0) + 1
        elif _is_telemetry(schema):
            self._telemetry += 1

    def _store(self, data: _Data, topic: str, payload: bytes) -> tuple[bool, bool]:
        """Insert and commit; (inserted, conflicting duplicate)."""
        db = self._db
        if db is None:
            raise RuntimeError("database closed")
        cur = db.execute(
            _INSERT,
            (data.id, data.gateway, data.seq, data.schema, data.type, topic, payload, time.time()),
        )
        if cur.rowcount == 1:
            return True, False
        row = db.execute("SELECT gateway, seq FROM messages WHERE id = ?", (data.id,)).fetchone()
        return False, row is not None and (row[0], row[1]) != (data.gateway, data.seq)

    # -- paho callbacks (paho's network thread) -------------------------------------------------
    def _on_connect(
        self, client: paho.Client, _userdata: Any, flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            log.error("broker refused the connection: %s", reason)
            if not self._subscribed.is_set():
                self._start_error = f"connection refused: {reason}"
                self._subscribed.set()  # wake start(), which reports the error
            return
        log.info("connected (session present: %s)", getattr(flags, "session_present", None))
        client.subscribe(self.topic, qos=1)

    def _on_subscribe(
        self, _client: paho.Client, _userdata: Any, _mid: int, reasons: Any, _props: Any
    ) -> None:
        failed = [r for r in reasons if r.is_failure]
        if failed:
            log.error("subscription to %r refused: %s", self.topic, failed[0])
            if not self._subscribed.is_set():
                self._start_error = f"subscription to {self.topic!r} refused: {failed[0]}"
        self._subscribed.set()

    def _on_disconnect(
        self, _client: paho.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            log.warning("disconnected (%s); paho reconnects", reason)

    def _on_message(self, client: paho.Client, _userdata: Any, msg: paho.MQTTMessage) -> None:
        # Never raise here: paho would stop its network thread.
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = "<invalid utf-8 topic>"
        payload = bytes(msg.payload)
        data = _parse(payload)
        inserted = conflict = False
        if data is not None:
            try:
                inserted, conflict = self._store(data, topic, payload)
            except Exception:
                log.exception("cannot store %s from %s: left unacknowledged", data.id, topic)
                with self._cond:
                    self._received += 1
                    self._errors += 1
                    self._version += 1
                    self._cond.notify_all()
                return
        with self._cond:
            self._received += 1
            if data is None:
                self._other += 1
            elif inserted:
                self._inserted += 1
                self._count_stored_locked(data.gateway, data.seq, data.schema, data.type)
            else:
                self._duplicates += 1
                self._conflicts += conflict
            self._version += 1
            self._cond.notify_all()
        if conflict:
            log.warning("id %s arrived again with another gateway/seq on %s", data, topic)
        client.ack(msg.mid, msg.qos)  # outside our lock: paho takes its own locks

    # -- readers (any thread) -------------------------------------------------------------------
    def _snapshot_locked(self) -> Summary:
        return Summary(
            received=self._received,
            stored=self._stored,
            inserted=self._inserted,
            duplicates=self._duplicates,
            conflicts=self._conflicts,
            other=self._other,
            errors=self._errors,
            gateways={gw: s.snapshot() for gw, s in sorted(self._seqs.items())},
            events_by_type=dict(sorted(self._event_types.items())),
            telemetry=self._telemetry,
            by_schema=dict(sorted(self._schemas.items())),
        )

    def summary(self) -> Summary:
        """A consistent snapshot of the counters and of what is stored."""
        with self._cond:
            return self._snapshot_locked()

    def events(self, type: str | None = None) -> list[dict[str, Any]]:
        """The stored business events (parsed payloads), optionally of one ``type``, ordered by
        gateway then seq."""
        query = "SELECT payload FROM messages WHERE substr(schema, 1, ?) = ?"
        params: list[Any] = [len(EVENT_SCHEMA_PREFIX), EVENT_SCHEMA_PREFIX]
        if type is not None:
            query += " AND type = ?"
            params.append(type)
        query += " ORDER BY gateway, seq"
        # A connection per call: readers never share the writer's connection (WAL: no blocking).
        with contextlib.closing(sqlite3.connect(self.db_path, timeout=5.0)) as db:
            rows = db.execute(query, params).fetchall()
        return [json.loads(payload) for (payload,) in rows]

    def wait_until(self, predicate: Callable[[Summary], bool], timeout: float) -> Summary:
        """Block until ``predicate(summary)`` holds and return that summary; TimeoutError
        (with the last summary in its message) after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                version = self._version
                summary = self._snapshot_locked()
            if predicate(summary):  # outside the lock: the predicate is the caller's code
                return summary
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"condition not met within {timeout} s; last summary: {summary}")
            with self._cond:
                if self._version == version:  # else: changed meanwhile, look again at once
                    self._cond.wait(remaining)


# -- command line --------------------------------------------------------------------------------
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """'5s', '500ms', '2m', '1h' or plain seconds ('2.5') to seconds (> 0)."""
    match = _DURATION.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 5s, 500ms, 2m)")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"duration must be positive: {text!r}")
    return seconds


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.mes_consumer",
        description=(
            "Reference MES consumer for edgegw: subscribes to the gateway's MQTT topics "
            "(QoS 1, persistent session), stores each data message once in SQLite (dedupe on "
            "its 'id'), detects 'seq' gaps per gateway and prints a one-line summary every "
            "--every seconds and a final one on Ctrl-C / SIGTERM. Messages without id/seq "
            "(status, schemas) are counted as 'other'."
        ),
        epilog=(
            "Summary line: received/stored/new/duplicates/other counters, then per gateway "
            "'seq MIN..MAX n=COUNT ok' or 'missing N [A-B, ...]' (the seqs never stored), then "
            "events by type and the telemetry count. Restarting on the same --db keeps the "
            "dedupe and resumes the broker session (same derived client id)."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="broker host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=1883, help="broker port (default 1883)")
    parser.add_argument("--topic", default="#", help="topic filter (default '#')")
    parser.add_argument(
        "--db",
        default="mes_consumer.sqlite3",
        help="SQLite database file (default ./mes_consumer.sqlite3)",
    )
    parser.add_argument(
        "--every",
        type=parse_duration,
        default=5.0,
        metavar="DURATION",
        help="summary interval, e.g. 5s, 500ms, 1m (default 5s)",
    )
    parser.add_argument(
        "--client-id", default=None, help="MQTT client id (default: derived from host and --db)"
    )
    parser.add_argument(
        "--mqtt-version", choices=["5", "3.1.1"], default="5", help="protocol (default 5)"
    )
    parser.add_argument(
        "--no-persistent-session",
        dest="persistent_session",
        action="store_false",
        help="start a clean session each time (messages sent while stopped are lost to it)",
    )
    parser.add_argument(
        "--session-expiry",
        type=int,
        default=86400,
        metavar="SECONDS",
        help="MQTT 5 session expiry of the persistent session (default 86400)",
    )
    parser.add_argument(
        "--synchronous",
        choices=["full", "normal"],
        default="full",
        help="SQLite synchronous mode: full (default) survives power loss after the PUBACK",
    )
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    consumer = MesConsumer(
        args.db,
        host=args.host,
        port=args.port,
        topic=args.topic,
        client_id=args.client_id,
        mqtt_version=args.mqtt_version,
        persistent_session=args.persistent_session,
        session_expiry=args.session_expiry,
        synchronous=args.synchronous,
    )
    stopping = threading.Event()

    def _on_signal(_signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            consumer.start()
        except ConnectionError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(
            f"MES consumer: {args.host}:{args.port} topic {args.topic!r} db {args.db} "
            f"client id {consumer.client_id}",
            flush=True,
        )
        for line in _summary_lines(consumer, stopping, args.every):
            print(line, flush=True)
    finally:
        consumer.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"final {time.strftime('%H:%M:%S')} {consumer.summary()}", flush=True)
    return 0


def _summary_lines(consumer: MesConsumer, stopping: threading.Event, every: float) -> Iterator[str]:
    """A summary line every `every` seconds until `stopping` is set."""
    while not stopping.wait(every):
        yield f"{time.strftime('%H:%M:%S')} {consumer.summary()}"


if __name__ == "__main__":
    sys.exit(main())
