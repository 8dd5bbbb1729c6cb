"""PLC-side faults against the whole spine: simulator -> `edgegw run` -> outbox -> Mosquitto.

Every fault is switched on at runtime, held (until the simulator proves it was hit, or for a
set outage), and then switched off; each test then shows that the affected tags went `bad` with
a reason and came back `good` by themselves (no gateway restart), that the gateway process never
crashed, and that every committed seq reached the subscriber or still waits in the outbox.

The bench registers of the Modbus simulator increment at every read that touches them, and each
one used here starts at its own base (register 1000+i at i*1000), so a value published for a
tag can be checked against what that register really held: per tag, values in seq order must
rise strictly and stay in that register's range. A late reply matched to the next request would
show up as a value out of sequence or as a value from another register's range.

Waits for values (N good values per tag, recovery, every committed seq on the broker) are
progress-based: they go on while values keep arriving and fail when none came for a stall
(tests.support.wait); waits for a state (bad with a reason, the simulator hit) are conditions
with generous timeouts. Each test's timeout is at least the sum of its waits: the condition
timeouts, plus for each progress wait one stall and five times what it takes here.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import signal
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from edgegw.outbox.store import read_stats, read_waiting
from simulators.modbus_plc import BENCH_BASE, ModbusPlc
from simulators.opcua_plc import FILLER_STATES, FROZEN_VALUE, NAMESPACE_URI, OpcUaPlc
from tests.conftest import StartModbusPlc, StartOpcUaPlc
from tests.faults.conftest import FaultReport
from tests.support.broker import Mosquitto
from tests.support.gateway import GatewayProcess, config_dict, write_config
from tests.support.ledger import ranges
from tests.support.subscriber import Subscriber
from tests.support.wait import STALL, until, until_progress

TELEMETRY = "edgegw.telemetry/1"
BENCH_REGISTERS = 50
SPAN = 1000  # values a bench register may take in one test (about 10 reads/s for < 100 s)
BLOCK_A = range(5)  # holding 1000..1004: one read request
BLOCK_B = range(40, 45)  # holding 1040..1044: a second request (gap 35 > max_gap 16)
POLL = 0.1
TIMEOUT = 0.3
OUTAGE = 2.0  # seconds the Modbus server stays stopped
DELAY = 1.0  # seconds before each reply during the slow-reply fault: beyond TIMEOUT
# The first wait of a test includes the gateway's start (a Python process, an OPC UA session):
# no value arrives for a while, longer on a slow machine.
START_STALL = 30.0
WINDOW = 50  # values of the healthy source per rate window: about 5 s at 10 values/s
NSU = f"nsu={NAMESPACE_URI};s="

Key = tuple[str, str]  # (source, tag)


# --- the simulators and the subscriber ---------------------------------------------------------


def _spread(plc: ModbusPlc) -> None:
    """Bench register 1000+i starts at i*SPAN."""
    for i in range(BENCH_REGISTERS):
        plc.set_holding(BENCH_BASE + i, [i * SPAN])


@pytest.fixture
async def plc(start_modbus_plc: StartModbusPlc) -> ModbusPlc:
    return await start_modbus_plc(_spread, bench_registers=BENCH_REGISTERS)


@pytest.fixture
async def plc2(start_modbus_plc: StartModbusPlc) -> ModbusPlc:
    return await start_modbus_plc(_spread, bench_registers=BENCH_REGISTERS)


@pytest.fixture
async def ua_plc(start_opcua_plc: StartOpcUaPlc) -> OpcUaPlc:
    return await start_opcua_plc(seed=7)


class Feed:
    """The subscriber's telemetry, parsed once per message, grouped by (source, tag)."""

    def __init__(self, subscriber: Subscriber) -> None:
        self.subscriber = subscriber
        self._seen = 0
        self.payloads: list[dict[str, Any]] = []
        self._by_key: dict[Key, list[dict[str, Any]]] = defaultdict(list)

    def refresh(self) -> Feed:
        messages = self.subscriber.messages
        for message in messages[self._seen :]:
            if message.topic.endswith("/status"):
                continue
            payload = orjson.loads(message.payload)
            if payload.get("schema") != TELEMETRY:
                continue
            self.payloads.append(payload)
            self._by_key[(payload["source"], payload["tag"])].append(payload)
        self._seen = len(messages)
        return self

    def of(self, key: Key) -> list[dict[str, Any]]:
        """The distinct messages of one tag in seq order (redeliveries dropped)."""
        self.refresh()
        unique = {p["seq"]: p for p in self._by_key.get(key, [])}
        return [unique[seq] for seq in sorted(unique)]


# --- per-tag phases: good before the fault, bad, good after ------------------------------------


def _ts(payload: dict[str, Any]) -> float:
    return dt.datetime.fromisoformat(payload["gw_ts"].replace("Z", "+00:00")).timestamp()


@dataclass
class Phases:
    before: int  # good values before the first bad message
    after: int  # good values after the last bad message
    bad_seconds: float  # first bad message to the first good one after the last bad
    reasons: list[str]  # distinct bad reasons, in order
    bad_values: list[Any]


def phases(messages: list[dict[str, Any]]) -> Phases | None:
    bad = [i for i, p in enumerate(messages) if p["quality"] == "bad"]
    if not bad:
        return None
    first, last = bad[0], bad[-1]
    after = [p for p in messages[last + 1 :] if p["quality"] == "good"]
    reasons: list[str] = []
    for i in bad:
        reason = messages[i].get("reason") or ""
        if reason not in reasons:
            reasons.append(reason)
    return Phases(
        before=sum(p["quality"] == "good" for p in messages[:first]),
        after=len(after),
        bad_seconds=(_ts(after[0]) - _ts(messages[first])) if after else float("nan"),
        reasons=reasons,
        bad_values=[messages[i]["value"] for i in bad],
    )


def good_count(feed: Feed, keys: Iterable[Key]) -> dict[Key, int]:
    return {key: sum(p["quality"] == "good" for p in feed.of(key)) for key in keys}


def _short(counts: dict[Key, int], n: int) -> str:
    short = [f"{source}.{tag} ({count})" for (source, tag), count in counts.items() if count < n]
    return f"tags short of {n}: {', '.join(short)}"


async def good_values(
    feed: Feed, keys: list[Key], n: int, what: str, *, stall: float = STALL
) -> None:
    """Until every tag has `n` good values, for as long as good values keep arriving."""
    await until_progress(
        lambda: sum(min(count, n) for count in good_count(feed, keys).values()),
        n * len(keys),
        stall=stall,
        what=what,
        missing=lambda: _short(good_count(feed, keys), n),
    )


async def recovered(
    feed: Feed, keys: list[Key], n: int, what: str, *, stall: float = STALL
) -> None:
    """Until every tag has `n` good values after its last bad one, for as long as they keep
    coming (a new bad value starts that tag's count again)."""

    def after() -> dict[Key, int]:
        return {key: (f.after if (f := phases(feed.of(key))) else 0) for key in keys}

    await until_progress(
        lambda: sum(min(count, n) for count in after().values()),
        n * len(keys),
        stall=stall,
        what=what,
        missing=lambda: _short(after(), n),
    )


async def more_good_values(feed: Feed, key: Key, n: int, what: str) -> int:
    """Until `key` has `n` good values more than now, while they keep coming; the count then."""
    start = good_count(feed, [key])[key]
    await until_progress(lambda: good_count(feed, [key])[key] - start, n, what=what)
    return good_count(feed, [key])[key]


def all_bad_with(feed: Feed, keys: list[Key], accept: Callable[[str], bool]) -> Callable[[], bool]:
    def check() -> bool:
        return all(
            any(p["quality"] == "bad" and accept(p.get("reason") or "") for p in feed.of(key))
            for key in keys
        )

    return check


def summarise(feed: Feed, keys: list[Key]) -> tuple[int, int, float, list[str]]:
    """Good values before/after (summed over the tags), the longest bad spell, the reasons."""
    found = [phases(feed.of(key)) for key in keys]
    assert all(f is not None for f in found), "a tag never went bad"
    spells = [f for f in found if f is not None]
    reasons: list[str] = []
    for spell in spells:
        reasons.extend(r for r in spell.reasons if r not in reasons)
    return (
        sum(s.before for s in spells),
        sum(s.after for s in spells),
        max(s.bad_seconds for s in spells),
        reasons,
    )


# --- bench registers: every value one the register really had, in order ------------------------


def check_bench(feed: Feed, source: str, plc: ModbusPlc, offsets: Iterable[int]) -> int:
    """Per bench tag: good values rise strictly in seq order, each within what that register
    held from its base to now. Returns how many values the register had that were never
    published (gaps; expected only where a reply was lost)."""
    gaps = 0
    for i in offsets:
        key = (source, f"r{i}")
        base = i * SPAN
        final = plc.holding(BENCH_BASE + i)[0]
        values = [p["value"] for p in feed.of(key) if p["quality"] == "good"]
        assert values, f"{key}: no good value at all"
        outside = [v for v in values if not base < v <= final]
        assert not outside, (
            f"{key}: values {outside[:5]} were never held by holding {BENCH_BASE + i} "
            f"(it went from {base} to {final}): a reply was matched to the wrong request"
        )
        backwards = [(a, b) for a, b in itertools.pairwise(values) if b <= a]
        assert not backwards, f"{key}: values out of sequence (prev, next): {backwards[:5]}"
        gaps += (values[-1] - values[0] + 1) - len(values)
    return gaps


def bench_tags(offsets: Iterable[int]) -> list[dict[str, Any]]:
    return [
        {"name": f"r{i}", "address": f"holding:{BENCH_BASE + i}", "type": "uint16"} for i in offsets
    ]


TEN_TAGS = [*BLOCK_A, *BLOCK_B]


def modbus_doc(
    state: Path, mqtt_port: int, plc: ModbusPlc, timeout: float = TIMEOUT
) -> dict[str, Any]:
    return config_dict(
        state,
        mqtt_port,
        plc.port,
        bench_tags(TEN_TAGS),
        poll=f"{int(POLL * 1000)}ms",
        timeout=f"{int(timeout * 1000)}ms",
    )


# --- the gateway process and the ledger --------------------------------------------------------


@contextlib.asynccontextmanager
async def gateway_running(path: Path) -> AsyncIterator[GatewayProcess]:
    process = await GatewayProcess(path).start()
    try:
        yield process
    except AssertionError as exc:
        log = process.stderr_path.read_bytes() if process.stderr_path.exists() else b""
        tail = log.decode(errors="replace")[-3000:]
        raise AssertionError(f"{exc}\n--- gateway stderr, last lines ---\n{tail}") from exc
    finally:
        if process.process is not None and process.process.returncode is None:
            process.signal(signal.SIGTERM)
            try:
                await process.wait(20)
            except TimeoutError:
                await process.kill()


async def stop_gateway(process: GatewayProcess) -> None:
    """SIGTERM: the gateway must still be running (no crash) and exit 0."""
    assert process.process is not None
    assert process.process.returncode is None, "the gateway exited during the fault"
    process.signal(signal.SIGTERM)
    assert await process.wait(20) == 0
    crashes = [e["msg"] for e in process.log() if e.get("msg", "").startswith("source crashed")]
    assert not crashes, crashes


def stored_payloads(outbox_path: str) -> list[dict[str, Any]]:
    return read_waiting(outbox_path)


@dataclass
class Ledger:
    events_in: int  # committed seqs (outbox last_seq; every seq seen is counted)
    events_out: int  # distinct ids the subscriber received
    duplicates: int  # messages received minus distinct ids
    lost: int  # committed seqs neither delivered nor still in the outbox
    left: int  # committed, not yet acknowledged at the stop: kept in the outbox for later
    redelivered: int  # the same seq received again (MQTT QoS 1 redelivery)
    restated: int  # ids committed again under a new seq: the same sample (see keys.py)
    corrupt: list[str]  # a seq under two ids, or one id for two different samples


async def ledger(feed: Feed, outbox_path: str) -> Ledger:
    """After the gateway stopped: committed seqs vs what the subscriber got (or still waits)."""
    stats = read_stats(outbox_path)
    left = {p["seq"] for p in stored_payloads(outbox_path)}
    committed = set(range(1, stats.last_seq + 1))
    expected = committed - left

    def delivered() -> set[int]:
        return {p["seq"] for p in feed.refresh().payloads}

    # The broker may still be handing the subscriber what the gateway sent before its stop:
    # wait while seqs keep arriving. A lost seq is reported in the ledger row (and then fails
    # the test), not as a timeout.
    with contextlib.suppress(AssertionError):
        await until_progress(
            lambda: len(expected & delivered()),
            len(expected),
            what="committed seqs on the broker",
            missing=lambda: f"seqs {ranges(expected - delivered())} never arrived",
        )
    payloads = feed.refresh().payloads
    ids = {p["id"] for p in payloads}
    id_of_seq: dict[int, set[str]] = defaultdict(set)
    samples_of_id: dict[str, set[tuple[Any, ...]]] = defaultdict(set)
    seqs_of_id: dict[str, set[int]] = defaultdict(set)
    for p in payloads:
        id_of_seq[p["seq"]].add(p["id"])
        seqs_of_id[p["id"]].add(p["seq"])
        value = orjson.dumps(p["value"])
        samples_of_id[p["id"]].add((p["source"], p["tag"], p["ts"], p["quality"], value))
    corrupt = [f"seq {seq} under ids {sorted(i)}" for seq, i in id_of_seq.items() if len(i) > 1]
    corrupt += [f"id {i} for {sorted(s)}" for i, s in samples_of_id.items() if len(s) > 1]
    return Ledger(
        events_in=len(committed | set(id_of_seq)),
        events_out=len(ids),
        duplicates=len(payloads) - len(ids),
        lost=len(committed - set(id_of_seq) - left),
        left=len(left),
        redelivered=len(payloads) - len(id_of_seq),
        restated=sum(len(s) - 1 for s in seqs_of_id.values()),
        corrupt=corrupt,
    )


def record(report: FaultReport, fault: str, figures: Ledger, note: str) -> None:
    if figures.left:
        note += f"; {figures.left} committed seqs still in the outbox at the stop (not lost)"
    if figures.duplicates:
        note += (
            f"; dups = {figures.redelivered} redelivered + {figures.restated} heartbeat "
            "restatements of an unchanged sample (same source ts and value, so same id)"
        )
    report.add(
        fault,
        events_in=figures.events_in,
        events_out=figures.events_out,
        duplicates=figures.duplicates,
        lost=figures.lost,
        note=note,
    )


def assert_accounted(figures: Ledger) -> None:
    assert figures.lost == 0, f"{figures.lost} committed seqs never reached the subscriber"
    assert not figures.corrupt, figures.corrupt[:5]


def rate(feed: Feed, key: Key, start: float, end: float) -> float:
    """Good values per second of one tag whose gateway timestamp lies in [start, end]."""
    values = [p for p in feed.of(key) if p["quality"] == "good" and start <= _ts(p) <= end]
    return len(values) / (end - start)


# --- 1. Modbus PLC drops its connections -------------------------------------------------------


# progress: start (30 + 5), recovery (15 + 5) + 10 bad + 15 drops + 20 stop + ledger (15 + 5)
# ~ 120 s (about 10 s here)
@pytest.mark.timeout(150)
async def test_modbus_dropped_connections(
    tmp_path: Path,
    plc: ModbusPlc,
    mosquitto: Mosquitto,
    subscriber: Subscriber,
    fault_report: FaultReport,
) -> None:
    # A reply later than the timeout is a lost value (the register moved on), which this test
    # counts as a gap: a 0.3 s timeout lost some to a loaded machine (two fresh-checks), so
    # the replies that are sent get 1 s here. A dropped request costs the timeout each.
    doc = modbus_doc(tmp_path, mosquitto.port, plc, timeout=1.0)
    path = write_config(tmp_path / "gw.yaml", doc)
    feed = Feed(subscriber)
    keys = [("plc", f"r{i}") for i in TEN_TAGS]
    async with gateway_running(path) as gateway:
        await good_values(feed, keys, 10, "good values (10 per tag)", stall=START_STALL)
        dropped = plc.stats.connections_dropped
        fault_on = time.monotonic()
        plc.faults.drop_connections = True
        await until(all_bad_with(feed, keys, bool), 10, "every tag bad with a reason")
        await until(
            lambda: plc.stats.connections_dropped >= dropped + 5, 15, "5 dropped connections"
        )
        plc.faults.drop_connections = False
        held = time.monotonic() - fault_on
        await recovered(feed, keys, 10, "good values after the fault (10 per tag)")
        await stop_gateway(gateway)

    figures = await ledger(feed, str(tmp_path / "outbox.sqlite3"))
    before, after, bad_s, reasons = summarise(feed, keys)
    gaps = check_bench(feed, "plc", plc, TEN_TAGS)
    record(
        fault_report,
        "modbus: PLC drops connections",
        figures,
        f"fault {held:.1f} s, bad {bad_s:.1f} s, recovered; good values before/after "
        f"{before}/{after} over {len(keys)} tags; {plc.stats.connections_dropped} drops; "
        f"gaps {gaps}; reasons {reasons}",
    )
    assert_accounted(figures)
    # A dropped request is never executed, so no register value may be missing.
    assert gaps == 0, f"{gaps} register values were read but never published"


# --- 2. Replies slower than the timeout --------------------------------------------------------


# progress: start (30 + 10), 50 baseline, 50 during, recovery, ledger (4 x 15 + 4 x 25)
# + 15 bad + 20 stop ~ 235 s (about 17 s here)
@pytest.mark.timeout(270)
async def test_modbus_slow_replies_beyond_the_timeout(
    tmp_path: Path,
    plc: ModbusPlc,
    plc2: ModbusPlc,
    mosquitto: Mosquitto,
    subscriber: Subscriber,
    fault_report: FaultReport,
) -> None:
    doc = modbus_doc(tmp_path, mosquitto.port, plc)
    other_offsets = list(BLOCK_A)
    doc["sources"].append(
        {
            "name": "other",
            "protocol": "modbus",
            "url": f"tcp://127.0.0.1:{plc2.port}",
            "poll": f"{int(POLL * 1000)}ms",
            # The healthy source's own timeout is generous: on a loaded 2-core machine a
            # 0.3 s deadline can expire for a healthy PLC too, which is not this fault.
            "timeout": "3s",
            "tags": bench_tags(other_offsets),
        }
    )
    path = write_config(tmp_path / "gw.yaml", doc)
    feed = Feed(subscriber)
    keys = [("plc", f"r{i}") for i in TEN_TAGS]
    other_keys = [("other", f"r{i}") for i in other_offsets]
    probe = other_keys[0]
    expected_reason = f"no reply within {TIMEOUT:g}s"
    async with gateway_running(path) as gateway:
        await good_values(
            feed, keys + other_keys, 10, "good values (10 per tag)", stall=START_STALL
        )
        # Rate windows of about 5 s each (50 values at 10/s): a rate over a second or two
        # swings with the load of a shared machine.
        base_start = time.time()
        await more_good_values(feed, probe, WINDOW, "baseline values of the other source")
        base_end = time.time()

        fault_on = time.time()
        held_from = time.monotonic()
        plc.faults.delay = DELAY
        await until(all_bad_with(feed, keys, lambda r: r == expected_reason), 15, "slow tags bad")
        # Hold the fault while the other source publishes another WINDOW values.
        await more_good_values(feed, probe, WINDOW, "values of the other source during the fault")
        fault_off = time.time()
        plc.faults.delay = 0.0
        held = time.monotonic() - held_from
        await recovered(feed, keys, 10, "good values per slow tag after it (10 per tag)")
        await stop_gateway(gateway)

    figures = await ledger(feed, str(tmp_path / "outbox.sqlite3"))
    before, after, bad_s, reasons = summarise(feed, keys)
    gaps = check_bench(feed, "plc", plc, TEN_TAGS)
    check_bench(feed, "other", plc2, other_offsets)
    baseline = rate(feed, probe, base_start, base_end)
    other_rate = rate(feed, probe, fault_on + 0.5, fault_off)
    other_bad = [p for k in other_keys for p in feed.of(k) if p["quality"] != "good"]
    record(
        fault_report,
        f"modbus: replies after {DELAY:g} s > timeout {TIMEOUT:g} s",
        figures,
        f"fault {held:.1f} s, bad {bad_s:.1f} s, recovered; before/after {before}/{after}; "
        f"gaps {gaps} (late "
        f"replies), none out of sequence; other source {other_rate:.1f} values/s per tag "
        f"during the fault (baseline {baseline:.1f}); reasons {reasons}",
    )
    assert_accounted(figures)
    assert not other_bad, f"the healthy source went bad: {other_bad[:3]}"
    assert other_rate >= 0.5 * baseline, (
        f"the slow PLC stalled the other source: {other_rate:.1f} values/s during the fault, "
        f"{baseline:.1f} before"
    )


# --- 3. Exception replies ----------------------------------------------------------------------


# progress: start (30 + 5), recovery (15 + 5) + 2 x (10 + 10) + 20 stop + ledger (15 + 5)
# ~ 135 s (7 s here)
@pytest.mark.timeout(150)
async def test_modbus_exception_replies(
    tmp_path: Path,
    plc: ModbusPlc,
    mosquitto: Mosquitto,
    subscriber: Subscriber,
    fault_report: FaultReport,
) -> None:
    path = write_config(tmp_path / "gw.yaml", modbus_doc(tmp_path, mosquitto.port, plc))
    feed = Feed(subscriber)
    keys = [("plc", f"r{i}") for i in TEN_TAGS]
    expected = {
        2: "modbus exception 2: illegal data address",
        4: "modbus exception 4: server device failure",
    }
    async with gateway_running(path) as gateway:
        await good_values(feed, keys, 10, "good values (10 per tag)", stall=START_STALL)
        fault_on = time.monotonic()
        for code, reason in expected.items():
            seen = plc.stats.exceptions
            plc.faults.exception_code = code
            await until(
                all_bad_with(feed, keys, lambda r, want=reason: r == want),
                10,
                f"every tag bad with {reason!r}",
            )
            await until(
                lambda s=seen: plc.stats.exceptions >= s + 10, 10, f"10 exception {code} replies"
            )
        plc.faults.exception_code = None
        held = time.monotonic() - fault_on
        await recovered(feed, keys, 10, "good values after the fault (10 per tag)")
        await stop_gateway(gateway)

    figures = await ledger(feed, str(tmp_path / "outbox.sqlite3"))
    before, after, bad_s, reasons = summarise(feed, keys)
    gaps = check_bench(feed, "plc", plc, TEN_TAGS)
    bad_values = [p["value"] for k in keys for p in feed.of(k) if p["quality"] == "bad"]
    record(
        fault_report,
        "modbus: exception replies 2 then 4",
        figures,
        f"fault {held:.1f} s, bad {bad_s:.1f} s, recovered; before/after {before}/{after}; "
        f"{plc.stats.exceptions} exception replies; gaps {gaps}; reasons {reasons}",
    )
    assert_accounted(figures)
    assert reasons == list(expected.values())
    assert set(bad_values) == {None}
    # An exception reply reads nothing: no register value may be missing.
    assert gaps == 0, f"{gaps} register values were read but never published"


# --- 4. Modbus server restart ------------------------------------------------------------------


# progress: start (30 + 5) + 15 bad + 2 outage + recovery (30 + 10) + 20 stop + ledger
# (15 + 5) ~ 135 s (8 s here)
@pytest.mark.timeout(150)
async def test_modbus_server_restart(
    tmp_path: Path,
    plc: ModbusPlc,
    mosquitto: Mosquitto,
    subscriber: Subscriber,
    fault_report: FaultReport,
) -> None:
    path = write_config(tmp_path / "gw.yaml", modbus_doc(tmp_path, mosquitto.port, plc))
    feed = Feed(subscriber)
    keys = [("plc", f"r{i}") for i in TEN_TAGS]
    port = plc.port
    async with gateway_running(path) as gateway:
        await good_values(feed, keys, 10, "good values (10 per tag)", stall=START_STALL)
        fault_on = time.monotonic()
        await plc.stop()
        await until(
            all_bad_with(feed, keys, lambda r: r.startswith("cannot connect to")),
            15,
            "every tag bad with 'cannot connect'",
        )
        # The PLC stays down for OUTAGE s: the outage is the scenario, not a wait for a
        # condition (the gateway's reconnect backoff grows meanwhile).
        await asyncio.sleep(max(0.0, OUTAGE - (time.monotonic() - fault_on)))
        await plc.start()
        held = time.monotonic() - fault_on
        assert plc.port == port
        # The reconnect backoff grew during the outage: nothing may arrive for a few seconds.
        await recovered(feed, keys, 10, "good values after the restart (10 per tag)", stall=30)
        await stop_gateway(gateway)

    figures = await ledger(feed, str(tmp_path / "outbox.sqlite3"))
    before, after, bad_s, reasons = summarise(feed, keys)
    gaps = check_bench(feed, "plc", plc, TEN_TAGS)
    record(
        fault_report,
        "modbus: server stop + start on the same port",
        figures,
        f"down {held:.1f} s, bad {bad_s:.1f} s, recovered without a gateway restart; "
        f"before/after {before}/{after}; gaps {gaps}; reasons {reasons}",
    )
    assert_accounted(figures)


# --- 5. OPC UA: a Bad sensor, and a server restart with shifted namespaces ---------------------


def opcua_doc(state: Path, mqtt_port: int, url: str) -> dict[str, Any]:
    def source(name: str, mode: str) -> dict[str, Any]:
        return {
            "name": name,
            "protocol": "opcua",
            "url": url,
            "mode": mode,
            "interval": "100ms",
            "keepalive": "500ms",
            "tags": [
                {"name": "sensor", "node": f"{NSU}Filler.Sensor"},
                {"name": "count", "node": f"{NSU}Filler.GoodCount"},
                {"name": "state", "node": f"{NSU}Filler.State"},
                {"name": "frozen", "node": f"{NSU}Filler.Frozen", "heartbeat": "500ms"},
            ],
        }

    return {
        "gateway": {"id": "ua-gw", "site": "s", "area": "a", "line": "l", "state_dir": str(state)},
        "mqtt": {"url": f"mqtt://127.0.0.1:{mqtt_port}", "keepalive": "2s"},
        "sources": [source("sub", "subscribe"), source("pol", "poll")],
    }


UA_SOURCES = ("sub", "pol")


def check_opcua_values(feed: Feed) -> None:
    """Good values are what the nodes hold: Frozen 42.5, a known state, GoodCount never
    going back (the line's model carries on across a server restart)."""
    for source in UA_SOURCES:
        for p in feed.of((source, "frozen")):
            assert p["quality"] != "good" or p["value"] == FROZEN_VALUE, p
        for p in feed.of((source, "state")):
            assert p["quality"] != "good" or p["value"] in FILLER_STATES, p
        counts = [p["value"] for p in feed.of((source, "count")) if p["quality"] == "good"]
        backwards = [(a, b) for a, b in itertools.pairwise(counts) if b < a]
        assert not backwards, f"{source}.count went back: {backwards[:5]}"


# progress: start (30 + 15) + 10 bad + 10 ticks + recovery (15 + 5) + 20 stop + ledger
# (15 + 5) ~ 125 s (7 s here)
@pytest.mark.timeout(150)
async def test_opcua_sensor_bad_status(
    tmp_path: Path,
    ua_plc: OpcUaPlc,
    mosquitto: Mosquitto,
    subscriber: Subscriber,
    fault_report: FaultReport,
) -> None:
    path = write_config(tmp_path / "gw.yaml", opcua_doc(tmp_path, mosquitto.port, ua_plc.url))
    feed = Feed(subscriber)
    sensors = [(s, "sensor") for s in UA_SOURCES]
    others = [(s, t) for s in UA_SOURCES for t in ("count", "state", "frozen")]
    async with gateway_running(path) as gateway:
        await good_values(feed, sensors, 5, "good sensor values (5 per source)", stall=START_STALL)
        fault_on = time.monotonic()
        ua_plc.faults.sensor_bad = True
        await until(
            all_bad_with(feed, sensors, lambda r: r == "BadSensorFailure"),
            10,
            "the sensor bad with BadSensorFailure on both sources",
        )
        ticks = ua_plc.stats.ticks
        await until(lambda: ua_plc.stats.ticks >= ticks + 20, 10, "20 more simulation ticks")
        ua_plc.faults.sensor_bad = False
        held = time.monotonic() - fault_on
        await recovered(feed, sensors, 5, "good sensor values after the fault (5 per source)")
        await stop_gateway(gateway)

    figures = await ledger(feed, str(tmp_path / "outbox.sqlite3"))
    before, after, bad_s, reasons = summarise(feed, sensors)
    bad_values = [v for k in sensors if (f := phases(feed.of(k))) for v in f.bad_values]
    other_bad = [p for k in others for p in feed.of(k) if p["quality"] != "good"]
    record(
        fault_report,
        "opcua: Filler.Sensor BadSensorFailure",
        figures,
        f"fault {held:.1f} s, bad {bad_s:.1f} s with value null, recovered; good "
        f"before/after {before}/{after} (subscribe + poll); reasons {reasons}",
    )
    assert_accounted(figures)
    assert set(bad_values) == {None}, f"a bad reading carried a value: {bad_values}"
    assert not other_bad, f"tags other than the sensor went bad: {other_bad[:3]}"
    check_opcua_values(feed)


# progress: start (30 + 15), 5 sensor values (15 + 5) + restart + 15 bad + recovery (30 + 10)
# + 20 stop + ledger (15 + 5) ~ 175 s (10 s here)
@pytest.mark.timeout(210)
async def test_opcua_server_restart_with_shifted_namespaces(
    tmp_path: Path,
    ua_plc: OpcUaPlc,
    mosquitto: Mosquitto,
    subscriber: Subscriber,
    fault_report: FaultReport,
) -> None:
    path = write_config(tmp_path / "gw.yaml", opcua_doc(tmp_path, mosquitto.port, ua_plc.url))
    feed = Feed(subscriber)
    keys = [(s, t) for s in UA_SOURCES for t in ("sensor", "count", "state", "frozen")]
    old_index = ua_plc.namespace_index
    async with gateway_running(path) as gateway:
        # Subscribe mode sends Frozen (never changing) once per subscription: one value each.
        await good_values(feed, keys, 1, "a good value on every tag", stall=START_STALL)
        sensors = [(s, "sensor") for s in UA_SOURCES]
        await good_values(feed, sensors, 5, "good sensor values (5 per source)")
        await ua_plc.restart(namespace_shift=3)
        assert ua_plc.namespace_index == old_index + 3
        await until(
            all_bad_with(feed, keys, bool), 15, "every tag bad with a reason after the restart"
        )
        # A new subscription sends every item's current value: every tag recovers visibly.
        await recovered(feed, keys, 1, "a good value on every tag after it", stall=30)
        await stop_gateway(gateway)

    figures = await ledger(feed, str(tmp_path / "outbox.sqlite3"))
    before, after, bad_s, reasons = summarise(feed, keys)
    last = {key: feed.of(key)[-1]["quality"] for key in keys}
    record(
        fault_report,
        f"opcua: server restart, namespace {old_index} -> {ua_plc.namespace_index}",
        figures,
        f"bad {bad_s:.1f} s, recovered without a gateway restart; good before/after "
        f"{before}/{after} over {len(keys)} tags (subscribe + poll); reasons {reasons}",
    )
    assert_accounted(figures)
    assert set(last.values()) == {"good"}, last
    check_opcua_values(feed)
