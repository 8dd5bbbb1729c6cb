"""Crashes, outages and full or broken disks between the outbox and the consumer.

Every test counts: each committed seq 1..last reaches the subscriber (or still waits in the
outbox), every resend is byte-identical to its first copy, and the bench registers (which
change at every read) arrive as unbroken runs.

Waits on volumes (a backlog drained, the subscriber catching up) are progress-based: they go
on while the count grows and fail when it stalls (tests.support.wait).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from pathlib import Path

import pytest

from edgegw.outbox.store import read_stats
from edgegw.service.app import Gateway
from simulators.modbus_plc import ModbusPlc
from tests.conftest import StartModbusPlc
from tests.faults.conftest import FaultReport
from tests.support import http
from tests.support.broker import Mosquitto
from tests.support.gateway import (
    GatewayProcess,
    bench_tags,
    build_config,
    config_dict,
    write_config,
)
from tests.support.ledger import (
    Tally,
    assert_complete,
    assert_unbroken_runs,
    backlog_sent,
    delivered_and_stored,
    identical_duplicates,
    stored,
    telemetry,
)
from tests.support.proxy import CuttableProxy
from tests.support.subscriber import Subscriber
from tests.support.wait import stays, until, until_progress

# Timeouts: a ceiling for a hang, never a target. Each test's is at least the sum of its
# condition waits' timeouts, plus, for its progress waits, five times the time they take here
# and one stall (15 s) each; the comment at each test gives the sum. DRAIN is drain_and_count:
# 30 s start + 20 s outbox empty + 15 s exit, and two progress waits (backlog acknowledged,
# subscriber caught up). Measured here (2 cores, idle): 2 to 62 s a test.


@pytest.fixture
async def plc(start_modbus_plc: StartModbusPlc) -> ModbusPlc:
    return await start_modbus_plc(bench_registers=60)


async def drain_and_count(
    path: Path,
    subscriber: Subscriber,
    report: FaultReport,
    fault: str,
    note: str = "",
    *,
    unbroken: bool = True,
    stops: int = 1,
) -> None:
    """Run the gateway until its outbox is empty, stop it, and count in vs out."""
    outbox = str(path.parent / "outbox.sqlite3")
    process = GatewayProcess(path)
    starts = process.starts()
    await process.start()
    await until(lambda: process.starts() > starts, 30, "the gateway started")
    await backlog_sent(outbox)
    process.signal(signal.SIGTERM)
    assert await process.wait(15) == 0
    # Rows committed while stopping wait on disk for the next start: not lost, not sent yet.
    items, last = await delivered_and_stored(subscriber, outbox)
    assert_complete(items, last)
    if unbroken:
        # Without a crash not even a value read and not yet committed may go missing.
        assert_unbroken_runs(items, stops)
    _distinct, duplicates = identical_duplicates(subscriber.messages)
    waiting = len(stored(outbox))
    accounted = len({p["seq"] for p in items})  # delivered, or on disk for the next start
    report.add(
        fault,
        events_in=last,
        events_out=accounted - waiting,
        duplicates=duplicates,
        lost=last - accounted,
        note=(note + f"; {waiting} wait on disk for the next start" if waiting else note),
    )


def kept_aside(directory: Path) -> list[Path]:
    return list(directory.glob("outbox.sqlite3.corrupt-*"))


# Sources use timeout="3s": on a loaded 2-core machine a 500 ms read timeout fires now and
# then, and a timed-out read still advanced its bench register, which the run check would
# count as a lost value although nothing that was read went missing.
def gateway_yaml(tmp_path: Path, mqtt_port: int, plc: ModbusPlc, tags: int = 40) -> Path:
    data = config_dict(tmp_path, mqtt_port, plc.port, bench_tags(tags), poll="50ms", timeout="3s")
    data["mqtt"]["inflight"] = 20
    return write_config(tmp_path / "gw.yaml", data)


# 12 x (30 traffic + 0.6 + 10 kill) + DRAIN + progress (19 s here, x5) + 2 stalls ~ 700 s
@pytest.mark.timeout(720)
async def test_kill_9_at_random_moments(
    tmp_path: Path,
    plc: ModbusPlc,
    mosquitto: Mosquitto,
    subscriber: Subscriber,
    fault_report: FaultReport,
) -> None:
    path = gateway_yaml(tmp_path, mosquitto.port, plc)
    chance = random.Random(5)
    for round_ in range(12):
        process = await GatewayProcess(path).start()
        before = subscriber.count
        # A state (the new run publishes), its time mostly the process start: a condition.
        await until(lambda b=before: subscriber.count > b + 20, 30, f"traffic in round {round_}")
        await asyncio.sleep(chance.uniform(0.0, 0.6))  # the random moment of the crash
        await process.kill()
        assert process.process is not None
        assert process.process.returncode == -signal.SIGKILL, f"round {round_}"
    # A crash loses what was read and not yet committed (never accepted): count commits only.
    await drain_and_count(
        path, subscriber, fault_report, "kill -9 x12 at random moments", unbroken=False
    )


# 12 x (20 publish + 0.8) + 15 exit + DRAIN + progress (62 s here, x5) + 2 stalls ~ 680 s
@pytest.mark.timeout(720)
async def test_link_cuts_including_between_publish_and_puback(
    tmp_path: Path,
    plc: ModbusPlc,
    mosquitto: Mosquitto,
    subscriber: Subscriber,
    fault_report: FaultReport,
) -> None:
    proxy = await CuttableProxy(mosquitto.port).start()
    path = gateway_yaml(tmp_path, proxy.port, plc)
    chance = random.Random(7)
    process = await GatewayProcess(path).start()
    try:
        for _ in range(12):
            before = subscriber.count
            # Cut the moment a message reaches the subscriber: its PUBACK is then usually
            # still on its way back to the gateway, so the gateway must send it again. The
            # gateway waits up to 5 s before it reconnects after short-lived connections.
            await until(lambda b=before: subscriber.count > b, 20, "a publish after the heal")
            proxy.cut()
            await asyncio.sleep(chance.uniform(0.05, 0.8))
            proxy.heal()
        process.signal(signal.SIGTERM)
        assert await process.wait(15) == 0
    finally:
        await proxy.stop()
    # The last run goes straight to the broker.
    direct = write_config(
        path,
        config_dict(tmp_path, mosquitto.port, plc.port, bench_tags(40), poll="50ms", timeout="3s"),
    )
    await drain_and_count(direct, subscriber, fault_report, "link cut x12 (PUBLISH/PUBACK)")


async def caught_up(tally: Tally, outbox: str) -> None:
    """Every message the broker has acknowledged (no longer waiting in the outbox) reached the
    subscriber. A broker without persistence loses what it still queues for a slow subscriber
    when it stops; that would count as lost although the gateway did its part. The file shows
    an acknowledgement a moment after the gateway got it (on a loaded machine, seen: 19 seqs
    missing from a single look): look again until two looks a second apart agree."""
    previous: set[int] | None = None
    for _ in range(5):
        last = read_stats(outbox).last_seq
        acknowledged = set(range(1, last + 1)) - {p["seq"] for p in stored(outbox)}
        await tally.wait_seqs(acknowledged)
        if acknowledged == previous:
            return
        previous = acknowledged
        await asyncio.sleep(1.0)  # the interval of a stability check, not a wait for an event
    raise AssertionError("the acknowledged seqs in the outbox file kept changing for 5 looks")


# 3 x (20 traffic + catch-up (up to 5 looks 1 s apart, each a progress wait with a 15 s stall)
# + 20 backlog + 10 SUBACK) + 15 exit + DRAIN + progress + stalls ~ 560 s (4 s here)
@pytest.mark.timeout(620)
async def test_broker_stop_and_start(
    tmp_path: Path,
    plc: ModbusPlc,
    mosquitto: Mosquitto,
    subscriber: Subscriber,
    fault_report: FaultReport,
) -> None:
    # The gateway reaches the broker through a proxy held shut until the test's subscriber
    # has subscribed again: a broker without persistence forgets subscriptions, and what it
    # acknowledged before the subscriber was back would be missing from the count.
    proxy = await CuttableProxy(mosquitto.port).start()
    path = gateway_yaml(tmp_path, proxy.port, plc)
    process = await GatewayProcess(path).start()
    outbox = str(tmp_path / "outbox.sqlite3")
    tally = Tally(subscriber)
    try:
        for round_ in range(3):
            before = subscriber.count
            await until(
                lambda b=before: subscriber.count > b + 20, 20, f"traffic in round {round_}"
            )
            proxy.cut()
            await caught_up(tally, outbox)
            subscriber.stop()
            mosquitto.stop()
            committed = read_stats(outbox).last_seq
            await until(lambda c=committed: read_stats(outbox).last_seq > c + 200, 20, "backlog")
            mosquitto.start()
            # Returns once the new broker acknowledged the subscription (blocking: off the
            # event loop).
            await asyncio.to_thread(subscriber.start)
            assert subscriber.subscribed
            proxy.heal()
        process.signal(signal.SIGTERM)
        assert await process.wait(15) == 0
    finally:
        if not mosquitto.running:
            mosquitto.start()
        if not subscriber.subscribed:
            with contextlib.suppress(RuntimeError):
                subscriber.start()
        await proxy.stop()
    direct = write_config(
        path,
        config_dict(tmp_path, mosquitto.port, plc.port, bench_tags(40), poll="50ms", timeout="3s"),
    )
    await drain_and_count(direct, subscriber, fault_report, "broker stop/start x3")


# 30 traffic + progress to 20,000 rows (17 s here, x5) + stall + 20 exit + DRAIN + progress
# (the subscriber took 47 s for 27,000 on a fresh clone, x5) + 2 stalls ~ 540 s (55 s here)
@pytest.mark.timeout(600)
async def test_sigterm_with_a_large_backlog(
    tmp_path: Path,
    plc: ModbusPlc,
    mosquitto: Mosquitto,
    subscriber: Subscriber,
    fault_report: FaultReport,
) -> None:
    proxy = await CuttableProxy(mosquitto.port).start()
    path = gateway_yaml(tmp_path, proxy.port, plc, tags=60)
    outbox = str(tmp_path / "outbox.sqlite3")
    process = await GatewayProcess(path).start()
    try:
        await until(lambda: subscriber.count > 10, 30, "traffic")
        proxy.cut()  # the broker out of reach: the backlog grows on disk
        await until_progress(
            lambda: read_stats(outbox).depth, 20_000, what="rows waiting in the outbox"
        )
        backlog = read_stats(outbox).depth
        started = time.monotonic()
        process.signal(signal.SIGTERM)
        assert await process.wait(20) == 0
        stop_seconds = time.monotonic() - started
    finally:
        await proxy.stop()
    assert read_stats(outbox).depth >= backlog  # everything waits on disk
    direct = write_config(
        path,
        config_dict(tmp_path, mosquitto.port, plc.port, bench_tags(60), poll="50ms", timeout="3s"),
    )
    await drain_and_count(
        direct,
        subscriber,
        fault_report,
        "SIGTERM with a backlog",
        note=f"backlog {backlog}, exit 0 in {stop_seconds:.1f} s",
    )


# 10 start + 20 commits + 15 alarm + 0.5 + 15 resumed + 20 stop + DRAIN + progress ~ 200 s
@pytest.mark.timeout(240)
async def test_disk_full_stops_intake_and_resumes(
    tmp_path: Path,
    plc: ModbusPlc,
    mosquitto: Mosquitto,
    subscriber: Subscriber,
    fault_report: FaultReport,
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = config_dict(
        tmp_path, mosquitto.port, plc.port, bench_tags(40), poll="50ms", timeout="3s"
    )
    data["http"] = {"listen": "127.0.0.1:0"}
    gateway = Gateway(build_config(data))
    task = asyncio.create_task(gateway.run())
    await asyncio.wait_for(gateway.started.wait(), 10)
    try:
        await until(lambda: gateway.committed > 200, 20, "commits")
        # A hung broker: nothing is acknowledged, so no row is deleted and no page freed; with
        # the broker keeping up, freed pages would absorb the new rows and the file never
        # needs to grow (seen once in a fresh-check).
        mosquitto.pause()
        async with gateway.outbox._lock:
            # SQLite's own ceiling stands in for a full filesystem: writes fail with
            # SQLITE_FULL exactly as they would on a full disk.
            (pages,) = await (await gateway.outbox.db.execute("PRAGMA page_count")).fetchone()
            await gateway.outbox.db.execute(f"PRAGMA max_page_count = {pages}")
        await until(lambda: gateway.outbox_alarm is not None, 15, "the disk-full alarm")
        assert gateway.metrics_port is not None
        _, text = await asyncio.to_thread(http.get, gateway.metrics_port, "/metrics")
        assert http.metric(text, "edgegw_outbox_alarm") == 1
        assert 'reason="outbox is full' in text
        status, body = await asyncio.to_thread(http.get, gateway.metrics_port, "/healthz")
        assert status == 503
        assert "outbox is full" in body
        stuck = gateway.committed
        # intake stopped; nothing half-written
        await stays(lambda: gateway.committed == stuck, 0.5, "no commit while the disk is full")
        async with gateway.outbox._lock:
            await gateway.outbox.db.execute("PRAGMA max_page_count = 1073741823")
        mosquitto.resume()
        await until(lambda: gateway.committed > stuck + 100, 15, "intake resumed")
        assert gateway.outbox_alarm is None
        _, text = await asyncio.to_thread(http.get, gateway.metrics_port, "/metrics")
        assert http.metric(text, "edgegw_outbox_alarm") == 0
    finally:
        gateway.request_stop()
        await asyncio.wait_for(task, 20)
    messages = [r.getMessage() for r in caplog.records]
    assert any("ALARM intake stopped" in m and "full" in m for m in messages)
    assert any("intake resumed" in m for m in messages)
    path = write_config(tmp_path / "gw.yaml", data)
    await drain_and_count(path, subscriber, fault_report, "disk full, then space freed")


# 30 traffic + 15 exit + 30 gap message + 15 exit ~ 90 s (2 s here)
@pytest.mark.timeout(120)
async def test_corrupt_database_at_start(
    tmp_path: Path,
    plc: ModbusPlc,
    mosquitto: Mosquitto,
    subscriber: Subscriber,
    fault_report: FaultReport,
) -> None:
    path = gateway_yaml(tmp_path, mosquitto.port, plc)
    outbox = tmp_path / "outbox.sqlite3"
    process = await GatewayProcess(path).start()
    await until(lambda: subscriber.count > 50, 30, "traffic")
    process.signal(signal.SIGTERM)
    assert await process.wait(15) == 0
    first_run = read_stats(str(outbox)).last_seq
    outbox.write_bytes(b"\0garbage, as after a failed disk write" * 500)

    process = await GatewayProcess(path).start()
    gap = await subscriber.wait_for(
        lambda m: any(p.get("schema") == "edgegw.gap/1" for p in telemetry(m)),
        30,
        what="the gap message",
    )
    process.signal(signal.SIGTERM)
    assert await process.wait(15) == 0
    notice = next(p for p in telemetry(gap) if p.get("schema") == "edgegw.gap/1")
    assert notice["seq"] > first_run  # numbering goes on above everything sent before
    assert "corrupt outbox moved to" in notice["reason"]
    assert kept_aside(tmp_path), "the damaged file is kept"
    assert any("ALARM outbox" in line.get("msg", "") for line in process.log())
    # Counted, not assumed: every seq the fresh outbox assigned (from the notice on) was
    # delivered or still waits in it.
    last = read_stats(str(outbox)).last_seq
    assigned = set(range(notice["seq"], last + 1))
    waiting = {p["seq"] for p in stored(str(outbox))}
    await subscriber.wait_for(
        lambda m: assigned - waiting <= {p["seq"] for p in telemetry(m)},
        30,
        what=f"seqs {notice['seq']}..{last} not waiting in the outbox",
    )
    delivered = {p["seq"] for p in telemetry(subscriber.messages)} & assigned
    accounted = delivered | waiting
    fault_report.add(
        "corrupt outbox at start",
        events_in=len(assigned),
        events_out=len(accounted),
        lost=len(assigned - accounted),
        note=f"moved aside; seq {first_run} -> {notice['seq']}; gap message sent; "
        f"{len(waiting)} wait on disk for the next start",
    )
    assert accounted == assigned
