"""OPC UA subscriptions end to end: simulator -> `edgegw run` -> Mosquitto -> subscriber.

    .venv/bin/python -m bench.opcua                                   # 10,000 items, 30 s, 3 runs
    .venv/bin/python -m bench.opcua --items 1000 --seconds 5 --runs 1  # quick check (about 1 min)
    .venv/bin/python -m bench.opcua raw-client --url opc.tcp://127.0.0.1:4840/line/ --items 10000

For each run, everything is started fresh in a temporary directory, on free ports:

1. a private Mosquitto (same minimal config as `bench.e2e`),
2. a counting subscriber in this process (`bench.subscriber.RawSubscriber`, extended here to
   record the latency from each payload's `ts`, the OPC UA source timestamp, to its receipt),
3. the OPC UA simulator (`python -m simulators.opcua_plc --bench-items N --bench-interval I`):
   `Bench.Item00000..` Double variables, every one rewritten every bench interval,
4. `python -m edgegw --log-format json run -c CONFIG`: one `protocol: opcua` source in
   `mode: subscribe` with N tags `nsu=urn:edgegw:sim:filler;s=Bench.ItemNNNNN`.

Warm-up: until every item has reached the subscriber once and at least `--warmup` seconds after
the first message. Then a window of `--seconds` measures notifications/s delivered end to end,
gateway CPU and RSS, simulator and broker CPU, latency source timestamp -> subscriber, and the
outbox depth. The gateway is stopped (SIGTERM, must exit 0), and the baseline runs against the
same simulator: a raw asyncua client in a child process (`raw-client`, the low-level
subscription API the gateway itself uses, with the same subscription and monitored-item
parameters) that only counts DataChangeNotification items, for the same warm-up rule and window.

Results: a table on stdout, `bench/results/opcua-<timestamp>.json` and
`bench/results/opcua-latest.json`. See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import math
import os
import platform
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
import psutil
import yaml

from bench.e2e import (
    MOSQUITTO,
    REPO,
    RESULTS,
    Sampler,
    cpu_seconds,
    free_port,
    gateway_config,
    git_state,
    machine_busy,
    median,
    mosquitto_version,
    outbox_stats,
    parse_duration,
    parse_stop_line,
    start_mosquitto,
    stop_process,
    thread_cpu,
    wait_drained,
    wait_port,
)
from bench.subscriber import RawSubscriber

NAMESPACE_URI = "urn:edgegw:sim:filler"  # simulators.opcua_plc.NAMESPACE_URI (not imported:
# that would load asyncua into the bench process, which only the raw client needs)
SOURCE = "opc"
TELEMETRY_PREFIX = f"s/a/l/{SOURCE}/"  # mqtt.topic {site}/{area}/{line}/{source}/{tag}
ITEMS_PER_REQUEST = 1000  # monitored items per CreateMonitoredItems call, as the gateway does
KEEPALIVE_SECONDS = 5.0  # the gateway's subscription keep-alive


def node_id(item: int) -> str:
    return f"nsu={NAMESPACE_URI};s=Bench.Item{item:05d}"


def percentiles(samples: array[float] | list[float]) -> dict[str, Any]:
    """Nearest-rank p50/p90/p99 and max of latency samples (ms), and their count."""
    if not samples:
        return {"n": 0}
    ordered = sorted(samples)
    n = len(ordered)

    def rank(q: float) -> float:
        return round(ordered[max(0, math.ceil(q / 100 * n) - 1)], 1)

    return {"n": n, "p50": rank(50), "p90": rank(90), "p99": rank(99), "max": round(ordered[-1], 1)}


def slope(points: list[tuple[float, int]]) -> float | None:
    """Least-squares slope (per second) of (time, value) points."""
    if len(points) < 2:
        return None
    mt = sum(t for t, _ in points) / len(points)
    mv = sum(v for _, v in points) / len(points)
    var = sum((t - mt) ** 2 for t, _ in points)
    if not var:
        return None
    return round(sum((t - mt) * (v - mv) for t, v in points) / var, 1)


class OutboxDepth:
    """Rows in the gateway's outbox, read straight from its SQLite file (read-only; WAL mode,
    so the reader never blocks the gateway): cheap enough to sample every second, where
    `edgegw outbox stats` starts a Python process each time."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)

    def __call__(self) -> int | None:
        try:
            query = "SELECT coalesce(sum(count), 0) FROM segments"
            return int(self.db.execute(query).fetchall()[0][0])
        except sqlite3.Error:
            return None

    def close(self) -> None:
        self.db.close()


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(orjson.dumps({"event": event, **fields}).decode() + "\n")
    sys.stdout.flush()


# -- the subscriber: RawSubscriber plus latency and distinct items ---------------------------


class TimedSubscriber(RawSubscriber):
    """`RawSubscriber` on the gateway's telemetry that also keeps, per message, the latency
    from the payload's `ts` (source timestamp) and `gw_ts` (gateway receipt) to now, while
    `recording` is set, and the distinct topics (= items) seen, ever and while recording."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port, {TELEMETRY_PREFIX: "gw"})
        self.recording = False
        self.latency_ms: array[float] = array("d")  # ts -> receipt
        self.gw_latency_ms: array[float] = array("d")  # gw_ts -> receipt
        self.topics_seen: set[bytes] = set()
        self.window_topics: set[bytes] = set()
        self.qualities: Counter[str] = Counter()
        self.first_arrival = 0.0  # monotonic
        self._epoch_cache: dict[str, float] = {}
        self._prefix = TELEMETRY_PREFIX.encode()

    def _epoch(self, text: Any) -> float | None:
        # Many messages share a timestamp (the simulator stamps a slice of 250 writes alike).
        value = self._epoch_cache.get(text)
        if value is None:
            try:
                value = dt.datetime.fromisoformat(text).timestamp()
            except (TypeError, ValueError):
                return None
            if len(self._epoch_cache) > 20_000:
                self._epoch_cache.clear()
            self._epoch_cache[text] = value
        return value

    def _count(self, topic: bytes, payload: bytes) -> None:
        if not topic.startswith(self._prefix):
            self.other += 1
            return
        now = time.time()
        c = self.counts["gw"]
        c.payload_bytes += len(payload)
        c.last_arrival = time.monotonic()
        if not self.first_arrival:
            self.first_arrival = c.last_arrival
        try:
            doc = orjson.loads(payload)
            batched = doc.get("schema") == "edgegw.batch/1"
            items = doc["items"] if batched else (doc,)
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            c.messages += 1
            c.bad_payloads += 1
            return
        # A batch counts as the messages it carries, each under its tag's own topic, so that
        # both modes compare value for value.
        for item in items:
            c.messages += 1
            try:
                c.ids.add(item["id"])
            except (KeyError, TypeError):
                c.bad_payloads += 1
                continue
            seq = item.get("seq")
            if type(seq) is int:
                c.seqs.add(seq)
            item_topic = self._prefix + str(item.get("tag")).encode() if batched else topic
            self.topics_seen.add(item_topic)
            self.qualities[str(item.get("quality"))] += 1
            if self.recording:
                self.window_topics.add(item_topic)
                ts = self._epoch(item.get("ts"))
                if ts is not None:
                    self.latency_ms.append((now - ts) * 1000.0)
                gw_ts = self._epoch(item.get("gw_ts"))
                if gw_ts is not None:
                    self.gw_latency_ms.append((now - gw_ts) * 1000.0)


# -- the simulator ---------------------------------------------------------------------------

# "bench: 10000 items, 10011 writes/s achieved, capacity 169080 writes/s, round 0.780 s, ..."
SIM_LOG = re.compile(
    r"^(\S+ \S+) INFO simulators\.opcua_plc: bench: (\d+) items, (\d+) writes/s achieved, "
    r"capacity (\d+) writes/s, round ([\d.]+) s, (\d+) overruns"
)
# printed at exit: "bench: 11 rounds, last 10007 writes/s (capacity 174475 writes/s), 0 overruns"
SIM_FINAL = re.compile(
    r"bench: (\d+) rounds, last (\d+) writes/s \(capacity (\d+) writes/s\), (\d+) overruns"
)


def start_simulator(tmp: Path, port: int, args: argparse.Namespace) -> subprocess.Popen[Any]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simulators.opcua_plc",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--bench-items",
            str(args.items),
            "--bench-interval",
            f"{args.interval_s:g}",
            "--tick",
            f"{args.tick:g}",
            "--bench-slice",
            str(args.bench_slice),
        ],
        cwd=REPO,
        stdout=(tmp / "simulator.out").open("wb"),
        stderr=(tmp / "simulator.log").open("wb"),
    )


def wait_simulator(tmp: Path, port: int, proc: subprocess.Popen[Any], timeout: float) -> str:
    """The endpoint URL, once the simulator printed it (it has built every bench item)."""
    wait_port(port, proc, "OPC UA simulator", timeout)
    deadline = time.monotonic() + timeout
    out = tmp / "simulator.out"
    while time.monotonic() < deadline:
        for line in out.read_text(errors="replace").splitlines():
            if line.startswith("opc.tcp://"):
                return line.strip()
        if proc.poll() is not None:
            raise RuntimeError(f"OPC UA simulator exited with {proc.returncode}")
        time.sleep(0.1)
    raise RuntimeError(f"OPC UA simulator did not print its URL within {timeout} s")


def simulator_stats(tmp: Path) -> dict[str, Any]:
    """The simulator's own bench stats: the periodic log lines (every 10 rounds) and the
    summary it prints at exit. 'achieved' is the rate of writes it really made (what is
    offered to every subscriber), 'capacity' the raw speed of its write path."""
    lines = []
    for line in (tmp / "simulator.log").read_text(errors="replace").splitlines():
        m = SIM_LOG.match(line)
        if m:
            t = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            lines.append(
                {
                    "t": round(t, 3),
                    "writes_per_s": int(m.group(3)),
                    "capacity_per_s": int(m.group(4)),
                    "round_s": float(m.group(5)),
                    "overruns": int(m.group(6)),
                }
            )
    out: dict[str, Any] = {"log": lines}
    m = SIM_FINAL.search((tmp / "simulator.out").read_text(errors="replace"))
    if m:
        out["final"] = {
            "rounds": int(m.group(1)),
            "last_writes_per_s": int(m.group(2)),
            "capacity_per_s": int(m.group(3)),
            "overruns": int(m.group(4)),
        }
    return out


def simulator_during(stats: dict[str, Any], t0: float, t1: float) -> dict[str, Any]:
    """Medians of the simulator's log lines between two wall-clock times (epoch seconds);
    when none fell inside (short windows: it logs every 10 rounds), the last one before t1
    (or, failing that, the summary printed at exit)."""
    rows = [r for r in stats["log"] if t0 <= r["t"] <= t1]
    note = "log lines inside the window"
    if not rows:
        before = [r for r in stats["log"] if r["t"] <= t1]
        rows = before[-1:]
        note = "last log line before the window ended"
    if not rows and "final" in stats:
        final = stats["final"]
        return {
            "writes_per_s": final["last_writes_per_s"],
            "capacity_per_s": final["capacity_per_s"],
            "overruns_total": final["overruns"],
            "from": "summary printed at exit (last round)",
        }
    if not rows:
        return {"from": "no stats"}
    return {
        "writes_per_s": median([r["writes_per_s"] for r in rows]),
        "capacity_per_s": median([r["capacity_per_s"] for r in rows]),
        "round_s": median([r["round_s"] for r in rows]),
        "overruns_total": rows[-1]["overruns"],
        "from": f"{note} ({len(rows)})",
    }


# -- the raw asyncua client (baseline, in a child process) ----------------------------------


def subscription_parameters(interval: float, session_timeout: float = 60.0) -> Any:
    """The gateway's subscription parameters (OpcUaSource._subscription_parameters)."""
    from asyncua import ua

    keepalive = max(1, math.ceil(KEEPALIVE_SECONDS / interval))
    params = ua.CreateSubscriptionParameters()
    params.RequestedPublishingInterval = interval * 1000
    params.RequestedMaxKeepAliveCount = keepalive
    params.RequestedLifetimeCount = max(3 * keepalive, math.ceil(session_timeout / interval))
    params.MaxNotificationsPerPublish = 0
    params.PublishingEnabled = True
    params.Priority = 0
    return params


def item_request(node: Any, handle: int, interval: float, queue_size: int) -> Any:
    from asyncua import ua

    read = ua.ReadValueId()
    read.NodeId = node
    read.AttributeId = ua.AttributeIds.Value
    params = ua.MonitoringParameters()
    params.ClientHandle = handle
    params.SamplingInterval = interval * 1000
    params.QueueSize = queue_size
    params.DiscardOldest = True
    request = ua.MonitoredItemCreateRequest()
    request.ItemToMonitor = read
    request.MonitoringMode = ua.MonitoringMode.Reporting
    request.RequestedParameters = params
    return request


async def raw_client(args: argparse.Namespace) -> int:
    """Subscribe to Bench.Item00000.. and count the items of every DataChangeNotification.

    JSON lines on stdout: `subscribed`, `window_start` (all items seen once and `--warmup`
    seconds after the first notification, or `--ready-timeout`), `result`.
    """
    from asyncua import Client, ua

    n = args.items
    seen = bytearray(n + 2)  # by client handle (1..n)
    window_seen = bytearray(n + 2)
    state = {"total": 0, "seen": 0, "window_seen": 0, "recording": False, "first": 0.0}
    latency: array[float] = array("d")
    all_seen = asyncio.Event()
    utc = dt.UTC

    async def on_publish(result: ua.PublishResult) -> None:
        now = time.time()
        for data in result.NotificationMessage.NotificationData or ():
            if not isinstance(data, ua.DataChangeNotification):
                continue
            items = data.MonitoredItems
            state["total"] += len(items)
            if not state["first"]:
                state["first"] = time.monotonic()
            if state["seen"] < n:
                for item in items:
                    handle = item.ClientHandle
                    if handle <= n and not seen[handle]:
                        seen[handle] = 1
                        state["seen"] += 1
                if state["seen"] >= n:
                    all_seen.set()
            if state["recording"]:
                for item in items:
                    handle = item.ClientHandle
                    if handle <= n and not window_seen[handle]:
                        window_seen[handle] = 1
                        state["window_seen"] += 1
                    stamp = item.Value.SourceTimestamp
                    if stamp is not None:
                        if stamp.tzinfo is None:
                            stamp = stamp.replace(tzinfo=utc)
                        latency.append((now - stamp.timestamp()) * 1000.0)

    client = Client(args.url, timeout=args.timeout)
    client.session_timeout = 60_000
    started = time.monotonic()
    await client.connect()
    try:
        namespaces = await client.get_namespace_array()
        ns = namespaces.index(NAMESPACE_URI)
        created = await client.uaclient.create_subscription(
            subscription_parameters(args.interval_s), on_publish
        )
        failed = 0
        for first in range(0, n, ITEMS_PER_REQUEST):
            params = ua.CreateMonitoredItemsParameters()
            params.SubscriptionId = created.SubscriptionId
            params.TimestampsToReturn = ua.TimestampsToReturn.Both
            params.ItemsToCreate = [
                item_request(
                    ua.NodeId(f"Bench.Item{i:05d}", ns), i + 1, args.interval_s, args.queue_size
                )
                for i in range(first, min(first + ITEMS_PER_REQUEST, n))
            ]
            results = await client.uaclient.create_monitored_items(params)
            failed += sum(1 for r in results if not r.StatusCode.is_good())
        emit(
            "subscribed",
            items=n,
            failed=failed,
            seconds=round(time.monotonic() - started, 2),
            revised_publishing_interval_ms=created.RevisedPublishingInterval,
        )
        # Ready: every item seen once, and --warmup seconds after the first notification.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_seen.wait(), args.ready_timeout)
        if state["first"]:
            await asyncio.sleep(max(0.0, state["first"] + args.warmup - time.monotonic()))
        emit(
            "window_start",
            all_seen=state["seen"] >= n,
            seen=state["seen"],
            ready_s=round(time.monotonic() - started, 2),
        )
        cpu0 = time.process_time()
        c0, t0 = state["total"], time.monotonic()
        state["recording"] = True
        series: list[int] = []
        last = c0
        for k in range(1, int(args.seconds) + 1):
            await asyncio.sleep(max(0.0, t0 + k - time.monotonic()))
            series.append(state["total"] - last)
            last = state["total"]
        await asyncio.sleep(max(0.0, t0 + args.seconds - time.monotonic()))
        state["recording"] = False
        c1, t1 = state["total"], time.monotonic()
        cpu = time.process_time() - cpu0
        emit(
            "result",
            seconds=round(t1 - t0, 3),
            notifications=c1 - c0,
            notifications_per_s=round((c1 - c0) / (t1 - t0), 1),
            distinct_items_window=state["window_seen"],
            items_seen_ever=state["seen"],
            own_cpu_percent=round(100 * cpu / (t1 - t0), 1),
            latency_ms=percentiles(latency),
            per_s_series=series,
        )
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnect(), 5.0)
    return 0


def run_baseline(
    url: str, simulator: psutil.Process, args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    """`raw-client` in a child process; its CPU and the simulator's over its window."""
    cmd = [
        sys.executable,
        "-m",
        "bench.opcua",
        "raw-client",
        "--url",
        url,
        "--items",
        str(args.items),
        "--interval",
        args.source_interval,
        "--seconds",
        f"{args.seconds:g}",
        "--warmup",
        f"{args.warmup:g}",
        "--ready-timeout",
        f"{args.ready_timeout:g}",
        "--queue-size",
        str(args.queue_size),
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=(tmp / "raw-client.log").open("wb"), text=True
    )
    child = psutil.Process(proc.pid)
    result: dict[str, Any] = {}
    cpu0 = sim0 = t0 = 0.0
    busy0 = total0 = 0.0
    wall0 = 0.0
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # not one of ours
            now = time.monotonic()
            if event["event"] == "subscribed":
                result["subscribe_s"] = event["seconds"]
                result["items_failed"] = event["failed"]
                result["revised_publishing_interval_ms"] = event["revised_publishing_interval_ms"]
            elif event["event"] == "window_start":
                result["all_items_seen_before_window"] = event["all_seen"]
                result["items_seen_before_window"] = event["seen"]
                result["ready_s"] = event["ready_s"]
                with contextlib.suppress(psutil.Error):
                    cpu0, sim0 = cpu_seconds(child), cpu_seconds(simulator)
                busy0, total0 = machine_busy()
                t0, wall0 = now, time.time()
            elif event["event"] == "result":
                elapsed = now - t0
                with contextlib.suppress(psutil.Error):
                    result["client_cpu_percent"] = round(
                        100 * (cpu_seconds(child) - cpu0) / elapsed, 1
                    )
                    result["simulator_cpu_percent"] = round(
                        100 * (cpu_seconds(simulator) - sim0) / elapsed, 1
                    )
                busy1, total1 = machine_busy()
                result["machine_busy_percent"] = round(
                    100 * (os.cpu_count() or 1) * (busy1 - busy0) / (total1 - total0), 1
                )
                result["window_wall"] = [round(wall0, 3), round(time.time(), 3)]
                result.update({k: v for k, v in event.items() if k != "event"})
                per_1k = event["notifications"] / 1000
                if per_1k and "client_cpu_percent" in result:
                    result["client_cpu_ms_per_1k"] = round(
                        result["client_cpu_percent"] * 10 * elapsed / per_1k, 2
                    )
        rc = proc.wait(30)
    except BaseException:
        stop_process(proc)
        raise
    result["exit_status"] = rc
    if rc != 0 or "notifications_per_s" not in result:
        result["stderr_tail"] = (tmp / "raw-client.log").read_text(errors="replace")[-2000:]
    return result


# -- one run ---------------------------------------------------------------------------------


def opcua_config(tmp: Path, mqtt_port: int, url: str, args: argparse.Namespace) -> dict[str, Any]:
    # gateway/mqtt/outbox sections exactly as bench.e2e writes them (no Modbus source).
    cfg = gateway_config(tmp, mqtt_port, 0, 0, 1, args)
    cfg["sources"] = [
        {
            "name": SOURCE,
            "protocol": "opcua",
            "url": url,
            "mode": "subscribe",
            "interval": args.source_interval,
            "queue_size": args.queue_size,
            "tags": [{"name": f"i{i:05d}", "node": node_id(i)} for i in range(args.items)],
        }
    ]
    return cfg


def run_once(run_index: int, args: argparse.Namespace) -> dict[str, Any]:
    items = args.items
    tmp = Path(tempfile.mkdtemp(prefix=f"edgegw-bench-opcua-{items}-"))
    mqtt_port, opcua_port = free_port(), free_port()
    procs: dict[str, subprocess.Popen[Any]] = {}
    sub: TimedSubscriber | None = None
    sampler: Sampler | None = None
    result: dict[str, Any] = {"run": run_index, "items": items, "tmp": str(tmp)}
    try:
        # 1. broker, subscriber, simulator
        procs["mosquitto"] = start_mosquitto(tmp, mqtt_port)
        sub = TimedSubscriber("127.0.0.1", mqtt_port)
        sub.start()
        t_sim = time.monotonic()
        procs["simulator"] = start_simulator(tmp, opcua_port, args)
        url = wait_simulator(tmp, opcua_port, procs["simulator"], args.ready_timeout)
        result["simulator_start_s"] = round(time.monotonic() - t_sim, 2)
        sim = psutil.Process(procs["simulator"].pid)

        # 2. the gateway
        config_path = tmp / "edgegw.yaml"
        config_path.write_text(
            yaml.safe_dump(opcua_config(tmp, mqtt_port, url, args), sort_keys=False)
        )
        gw_log = tmp / "gateway.log"
        started = time.monotonic()
        procs["gateway"] = subprocess.Popen(
            [sys.executable, "-m", "edgegw", "--log-format", "json", "run", "-c", str(config_path)],
            cwd=tmp,
            stdout=(tmp / "gateway.out").open("wb"),
            stderr=gw_log.open("wb"),
        )
        gw = psutil.Process(procs["gateway"].pid)
        sampler = Sampler(gw)
        sampler.start()

        # 3. warm-up: every item seen once, and --warmup seconds after the first message
        deadline = started + args.ready_timeout
        while time.monotonic() < deadline:
            if procs["gateway"].poll() is not None:
                raise RuntimeError(
                    f"gateway exited with {procs['gateway'].returncode}: "
                    f"{gw_log.read_text(errors='replace')[-2000:]}"
                )
            first = sub.first_arrival
            if len(sub.topics_seen) >= items and first and time.monotonic() - first >= args.warmup:
                break
            time.sleep(0.05)
        if not sub.first_arrival:
            raise RuntimeError(f"no telemetry from the gateway within {args.ready_timeout} s")
        result["first_message_s"] = round(sub.first_arrival - started, 2)
        result["items_seen_before_window"] = len(sub.topics_seen)
        result["all_items_seen_before_window"] = len(sub.topics_seen) >= items
        result["ready_s"] = round(time.monotonic() - started, 2)

        # 4. the measured window
        others = {"simulator": sim, "mosquitto": psutil.Process(procs["mosquitto"].pid)}
        others["bench+subscriber"] = psutil.Process()
        stats0, ts0 = outbox_stats(config_path)
        outbox_depth = OutboxDepth(tmp / "state" / "outbox.sqlite3")
        busy0, total0 = machine_busy()
        other0 = {name: cpu_seconds(p) for name, p in others.items()}
        g0 = cpu_seconds(gw)
        th0 = thread_cpu(gw)
        wall0 = time.time()
        sub.recording = True
        c0, t0 = sub.snapshot()["gw"], time.monotonic()
        series: list[int] = []
        depths: list[tuple[float, int]] = []
        last = c0[0]
        t_next = t0 + 1.0
        while (now := time.monotonic()) < t0 + args.seconds:
            time.sleep(min(t_next, t0 + args.seconds) - now)
            if time.monotonic() >= t_next:
                n = sub.snapshot()["gw"][0]
                series.append(n - last)
                last = n
                t_next += 1.0
                depth = outbox_depth()
                if depth is not None:
                    depths.append((time.monotonic() - t0, depth))
            if procs["gateway"].poll() is not None:
                raise RuntimeError(f"gateway died during the window: {procs['gateway'].returncode}")
        c1, t1 = sub.snapshot()["gw"], time.monotonic()
        sub.recording = False
        wall1 = time.time()
        g1 = cpu_seconds(gw)
        th1 = thread_cpu(gw)
        other1 = {name: cpu_seconds(p) for name, p in others.items()}
        busy1, total1 = machine_busy()
        stats1, ts1 = outbox_stats(config_path)
        outbox_depth.close()

        elapsed = t1 - t0
        delivered = c1[0] - c0[0]
        gw_cpu = g1 - g0
        offered = items / args.interval_s
        result.update(
            window_s=round(elapsed, 3),
            window_wall=[round(wall0, 3), round(wall1, 3)],
            offered_per_s=round(offered, 1),
            delivered_per_s=round(delivered / elapsed, 1),
            distinct_ids_per_s=round((c1[1] - c0[1]) / elapsed, 1),
            delivered_vs_offered=round(delivered / elapsed / offered, 3),
            distinct_items_window=len(sub.window_topics),
            items_missing_window=items - len(sub.window_topics),
            latency_ms=percentiles(sub.latency_ms),
            gateway_internal_latency_ms=percentiles(sub.gw_latency_ms),
            gateway_cpu_percent=round(100 * gw_cpu / elapsed, 1),
            gateway_cpu_ms_per_1k=round(gw_cpu * 1e6 / delivered, 2) if delivered else None,
            gateway_threads_cpu_percent={
                name: round(100 * (th1[name] - th0.get(name, 0.0)) / elapsed, 1)
                for name in th1
                if th1[name] - th0.get(name, 0.0) > 0.001 * elapsed
            },
            peak_rss_mb_window=round(sampler.peak_rss(t0, t1) / 2**20, 1),
            other_cpu_percent={
                name: round(100 * (other1[name] - other0[name]) / elapsed, 1) for name in others
            },
            outbox_commits_per_s=round((stats1["last_seq"] - stats0["last_seq"]) / (ts1 - ts0), 1),
            outbox_depth_start=stats0["depth"],
            outbox_depth_end=stats1["depth"],
            outbox_depth_growth_per_s=round((stats1["depth"] - stats0["depth"]) / (ts1 - ts0), 1),
            outbox_dropped=stats1["dropped"],
            # sampled every second: the depth swings with each publish of the server (up to
            # all items at once), so the trend is the slope, not end minus start
            outbox_depth_series=[d for _, d in depths],
            outbox_depth_max_window=max((d for _, d in depths), default=None),
            outbox_depth_slope_per_s=slope(depths),
            delivered_per_s_series=series,
            machine_busy_percent=round(
                100 * (os.cpu_count() or 1) * (busy1 - busy0) / (total1 - total0), 1
            ),
        )
        result["simulator_cpu_percent"] = result["other_cpu_percent"]["simulator"]
        result["mosquitto_cpu_percent"] = result["other_cpu_percent"]["mosquitto"]
        known = result["gateway_cpu_percent"] + sum(result["other_cpu_percent"].values())
        result["unaccounted_cpu_percent"] = round(result["machine_busy_percent"] - known, 1)
        result["latency_p50_ms"] = result["latency_ms"].get("p50")
        result["latency_p99_ms"] = result["latency_ms"].get("p99")
        result["gateway_internal_p50_ms"] = result["gateway_internal_latency_ms"].get("p50")
        result["gateway_internal_p99_ms"] = result["gateway_internal_latency_ms"].get("p99")

        # 5. stop the gateway (must exit 0 within 60 s)
        t_stop = time.monotonic()
        procs["gateway"].send_signal(signal.SIGTERM)
        try:
            rc = procs["gateway"].wait(60)
        except subprocess.TimeoutExpired:
            procs["gateway"].kill()
            rc = procs["gateway"].wait()
            result["stop_note"] = "did not exit within 60 s of SIGTERM: killed"
        result["gateway_exit_status"] = rc
        result["stop_seconds"] = round(time.monotonic() - t_stop, 2)
        sampler.stop()
        result["peak_rss_mb"] = round(sampler.peak_rss() / 2**20, 1)
        log_info = parse_stop_line(gw_log)
        result["gateway_committed"] = log_info["committed"]
        result["gateway_published"] = log_info["published"]
        result["gateway_log_levels"] = log_info["levels"]
        if log_info.get("warnings_and_errors"):
            result["gateway_warnings"] = log_info["warnings_and_errors"]
        wait_drained(sub)
        totals = sub.counts["gw"].summary()
        result["subscriber_total"] = totals
        result["qualities"] = dict(sub.qualities)
        if log_info["published"] is not None:
            result["delivery_check"] = {
                "published_by_gateway": log_info["published"],
                "received_distinct": totals["distinct_ids"],
                "received_minus_published": totals["distinct_ids"] - log_info["published"],
                "seq_missing_in_range": totals.get("seq_missing_in_range"),
                "seq_starts_at_1": totals.get("seq_min") == 1,
                "committed_minus_published": (log_info["committed"] or 0) - log_info["published"],
            }
            with contextlib.suppress(sqlite3.Error):
                db = sqlite3.connect(f"file:{tmp / 'state' / 'outbox.sqlite3'}?mode=ro", uri=True)
                try:
                    query = "SELECT coalesce(sum(count), 0) FROM segments"
                    left = db.execute(query).fetchall()[0][0]
                finally:
                    db.close()
                # Kept for the next start (at least once), not lost.
                result["delivery_check"]["rows_left_in_outbox"] = left

        # 6. baseline: a raw asyncua client on the same simulator, gateway stopped
        if not args.skip_baseline:
            result["baseline"] = run_baseline(url, sim, args, tmp)

        # 7. the simulator's own figures
        stop_process(procs.pop("simulator"))
        sim_stats = simulator_stats(tmp)
        result["simulator_stats"] = sim_stats
        result["simulator_gateway_window"] = simulator_during(sim_stats, wall0, wall1 + 1.0)
        result["server_writes_per_s"] = result["simulator_gateway_window"].get("writes_per_s")
        result["server_capacity_per_s"] = result["simulator_gateway_window"].get("capacity_per_s")
        if "baseline" in result and "window_wall" in result["baseline"]:
            b0, b1 = result["baseline"]["window_wall"]
            result["simulator_baseline_window"] = simulator_during(sim_stats, b0, b1 + 1.0)
        if sub.error:
            result["subscriber_error"] = sub.error
        return result
    finally:
        if sampler is not None and sampler.is_alive():
            sampler.stop()
        if sub is not None:
            sub.stop()
        for name in ("gateway", "simulator", "mosquitto"):
            stop_process(procs.get(name))
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)


# -- summary ---------------------------------------------------------------------------------

METRICS = (
    "offered_per_s",
    "server_writes_per_s",
    "server_capacity_per_s",
    "delivered_per_s",
    "delivered_vs_offered",
    "distinct_items_window",
    "latency_p50_ms",
    "latency_p99_ms",
    "gateway_internal_p50_ms",
    "gateway_internal_p99_ms",
    "gateway_cpu_percent",
    "gateway_cpu_ms_per_1k",
    "peak_rss_mb",
    "simulator_cpu_percent",
    "mosquitto_cpu_percent",
    "outbox_commits_per_s",
    "outbox_depth_end",
    "outbox_depth_growth_per_s",
    "outbox_depth_max_window",
    "outbox_depth_slope_per_s",
    "machine_busy_percent",
    "unaccounted_cpu_percent",
    "stop_seconds",
)
BASELINE_METRICS = (
    "notifications_per_s",
    "distinct_items_window",
    "client_cpu_percent",
    "client_cpu_ms_per_1k",
    "simulator_cpu_percent",
)


def summarise(runs: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    med: dict[str, Any] = {m: median([r.get(m) for r in runs]) for m in METRICS}
    base_runs = [r["baseline"] for r in runs if "baseline" in r]
    base: dict[str, Any] = {m: median([b.get(m) for b in base_runs]) for m in BASELINE_METRICS}
    base["latency_p50_ms"] = median([b.get("latency_ms", {}).get("p50") for b in base_runs])
    base["latency_p99_ms"] = median([b.get("latency_ms", {}).get("p99") for b in base_runs])

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    return {
        "items": args.items,
        "interval_s": args.interval_s,
        "source_interval": args.source_interval,
        "median": med,
        "baseline_median": base if base_runs else None,
        "ratios": {
            "delivered_vs_offered": ratio(med["delivered_per_s"], med["offered_per_s"]),
            "delivered_vs_server_writes": ratio(med["delivered_per_s"], med["server_writes_per_s"]),
            "gateway_vs_raw_client": ratio(med["delivered_per_s"], base["notifications_per_s"]),
            "raw_client_vs_offered": ratio(base["notifications_per_s"], med["offered_per_s"]),
            "gateway_vs_raw_client_cpu_per_1k": ratio(
                med["gateway_cpu_ms_per_1k"], base["client_cpu_ms_per_1k"]
            ),
        },
        "all_exit_0": all(r.get("gateway_exit_status") == 0 for r in runs),
        "all_items_seen": all(r.get("items_missing_window") == 0 for r in runs),
    }


def fmt(value: Any, spec: str = ",.0f") -> str:
    return "n/a" if value is None else format(value, spec)


def print_table(runs: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    head = (
        f"{'run':>6} {'offered/s':>9} {'server/s':>8} {'e2e/s':>8} {'e2e/off':>7} "
        f"{'items':>6} {'gw CPU%':>7} {'ms/1k':>6} {'RSS MB':>6} {'sim%':>5} {'mosq%':>5} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'depth':>7} {'trend/s':>7} "
        f"{'raw/s':>8} {'raw CPU%':>8} {'raw p50':>7} {'raw p99':>7} {'gw/raw':>6}"
    )
    print(head)
    print("-" * len(head))

    def row(label: str, m: dict[str, Any], b: dict[str, Any] | None) -> str:
        b = b or {}
        raw = b.get("notifications_per_s")
        gw_vs_raw = m["delivered_per_s"] / raw if raw and m.get("delivered_per_s") else None
        return (
            f"{label:>6} {fmt(m.get('offered_per_s')):>9} {fmt(m.get('server_writes_per_s')):>8} "
            f"{fmt(m.get('delivered_per_s')):>8} {fmt(m.get('delivered_vs_offered'), '.3f'):>7} "
            f"{fmt(m.get('distinct_items_window')):>6} "
            f"{fmt(m.get('gateway_cpu_percent'), '.0f'):>7} "
            f"{fmt(m.get('gateway_cpu_ms_per_1k'), '.1f'):>6} {fmt(m.get('peak_rss_mb')):>6} "
            f"{fmt(m.get('simulator_cpu_percent')):>5} {fmt(m.get('mosquitto_cpu_percent')):>5} "
            f"{fmt(m.get('latency_p50_ms')):>7} {fmt(m.get('latency_p99_ms')):>7} "
            f"{fmt(m.get('outbox_depth_end')):>7} {fmt(m.get('outbox_depth_slope_per_s')):>7} "
            f"{fmt(raw):>8} "
            f"{fmt(b.get('client_cpu_percent'), '.0f'):>8} {fmt(b.get('latency_p50_ms')):>7} "
            f"{fmt(b.get('latency_p99_ms')):>7} "
            f"{fmt(gw_vs_raw, '.3f'):>6}"
        )

    for r in runs:
        b = r.get("baseline")
        if b is not None:
            b = {
                **b,
                "latency_p50_ms": b.get("latency_ms", {}).get("p50"),
                "latency_p99_ms": b.get("latency_ms", {}).get("p99"),
            }
        print(row(f"#{r['run']}", r, b))
    print(row("median", summary["median"], summary["baseline_median"]))
    print(
        "(e2e/s = telemetry messages/s received by the subscriber; server/s = writes/s the "
        "simulator achieved;\n latency = payload ts (OPC UA source timestamp) -> subscriber "
        "receipt, same machine clock; depth = outbox rows at the end of the window, trend/s = "
        "slope of its depth sampled every second;\n raw = asyncua client alone)"
    )
    ratios = summary["ratios"]
    print(
        f"ratios: delivered/offered {fmt(ratios['delivered_vs_offered'], '.3f')}, "
        f"gateway/raw client {fmt(ratios['gateway_vs_raw_client'], '.3f')}, "
        f"raw client/offered {fmt(ratios['raw_client_vs_offered'], '.3f')}, "
        f"CPU per 1k gateway/raw client {fmt(ratios['gateway_vs_raw_client_cpu_per_1k'], '.1f')}; "
        f"all stops exit 0: {'yes' if summary['all_exit_0'] else 'NO'}, "
        f"every item delivered in every window: {'yes' if summary['all_items_seen'] else 'NO'}"
    )


def print_run(r: dict[str, Any], runs: int, took: float) -> None:
    lat = r["latency_ms"]
    print(
        f"run {r['run']}/{runs}: {r['delivered_per_s']:,.0f} notifications/s delivered of "
        f"{r['offered_per_s']:,.0f} offered (server wrote {fmt(r.get('server_writes_per_s'))}/s), "
        f"{r['distinct_items_window']:,}/{r['items']:,} items in the window, "
        f"latency p50 {fmt(lat.get('p50'))} ms p99 {fmt(lat.get('p99'))} ms, "
        f"gw CPU {r['gateway_cpu_percent']}% ({r['gateway_cpu_ms_per_1k']} ms/1k), "
        f"RSS {r['peak_rss_mb']} MB, sim CPU {r['simulator_cpu_percent']}%, "
        f"mosquitto CPU {r['mosquitto_cpu_percent']}%, outbox depth "
        f"{r['outbox_depth_start']:,} -> {r['outbox_depth_end']:,} "
        f"(max {fmt(r['outbox_depth_max_window'])}, trend {fmt(r['outbox_depth_slope_per_s'])}/s), "
        f"gateway-internal latency (gw_ts -> subscriber) p50 "
        f"{fmt(r['gateway_internal_p50_ms'])} ms p99 {fmt(r['gateway_internal_p99_ms'])} ms, "
        f"stop {r['stop_seconds']} s exit {r['gateway_exit_status']}, "
        f"unaccounted CPU {r['unaccounted_cpu_percent']}% [{took:.0f} s]",
        flush=True,
    )
    b = r.get("baseline")
    if b is not None:
        if "notifications_per_s" in b:
            print(
                f"  raw asyncua client: {b['notifications_per_s']:,.0f} notifications/s, "
                f"{b['distinct_items_window']:,} items, CPU {b.get('client_cpu_percent')}% "
                f"({b.get('client_cpu_ms_per_1k')} ms/1k), latency p50 "
                f"{fmt(b['latency_ms'].get('p50'))} ms p99 {fmt(b['latency_ms'].get('p99'))} ms, "
                f"sim CPU {b.get('simulator_cpu_percent')}%",
                flush=True,
            )
        else:
            print(f"  raw asyncua client failed: exit {b.get('exit_status')}", flush=True)
    check = r.get("delivery_check")
    if check:
        print(
            f"  delivery: published {check['published_by_gateway']:,}, received "
            f"{check['received_distinct']:,} distinct, seq holes {check['seq_missing_in_range']}, "
            f"committed but not published at the stop {check['committed_minus_published']:,} "
            f"(rows left in the outbox: {fmt(check.get('rows_left_in_outbox'))})",
            flush=True,
        )
    not_good = {q: n for q, n in r.get("qualities", {}).items() if q != "good"}
    if not_good:
        print(f"  messages not of good quality: {not_good}", flush=True)
    if r.get("gateway_warnings"):
        print(f"  gateway warnings/errors: {r['gateway_warnings']}", flush=True)
    if r.get("stop_note"):
        print(f"  {r['stop_note']}", flush=True)


# -- command line ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.opcua",
        description="End-to-end throughput of edgegw subscribing to N OPC UA items (simulator "
        "-> gateway -> Mosquitto -> subscriber), with a raw asyncua client as baseline on the "
        "same simulator. Quick check: --items 1000 --seconds 5 --runs 1. The baseline alone "
        "against a running simulator: python -m bench.opcua raw-client --help. "
        "See bench/README.md.",
    )
    p.add_argument("--items", type=int, default=10_000, help="subscribed items (default 10000)")
    p.add_argument("--seconds", type=float, default=30.0, help="measured window per run")
    p.add_argument("--runs", type=int, default=3, help="runs (medians reported)")
    p.add_argument(
        "--interval",
        default="1s",
        help="source interval (publishing and sampling) and the simulator's bench interval",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=10.0,
        help="the window starts once every item was seen and this long after the first message",
    )
    p.add_argument(
        "--ready-timeout",
        type=float,
        default=120.0,
        help="give up waiting for every item after this long (the run goes on, items missing "
        "are reported)",
    )
    p.add_argument(
        "--source-interval",
        default=None,
        help="the gateway source's (and the raw client's) publishing and sampling interval, "
        "when it differs from --interval: e.g. 20ms to measure latency at 1,000 values/s",
    )
    p.add_argument(
        "--bench-slice",
        type=int,
        default=250,
        help="simulator --bench-slice: items changed at one instant (250: bursts; 20 at 1 s for "
        "1,000 items: a steady flow of 50 changes of 20 values a second)",
    )
    p.add_argument("--queue-size", type=int, default=10, help="queue_size of the source")
    p.add_argument("--inflight", type=int, default=100, help="mqtt.inflight of the gateway")
    p.add_argument(
        "--synchronous",
        choices=["full", "normal", "extra"],
        default="full",
        help="outbox.synchronous of the gateway",
    )
    p.add_argument(
        "--tick",
        type=float,
        default=0.0,
        help="simulator --tick: 0 freezes the filling line, so only bench items change",
    )
    p.add_argument("--skip-baseline", action="store_true", help="no raw asyncua client run")
    p.add_argument(
        "--batch",
        type=int,
        default=0,
        metavar="N",
        help="mqtt.batch with max_values N (0: one message per value, the default)",
    )
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dirs (logs, outbox)")
    p.add_argument(
        "--output-prefix",
        default="opcua",
        help="write bench/results/PREFIX-<timestamp>.json and PREFIX-latest.json",
    )
    p.add_argument("--no-save", action="store_true", help="do not write bench/results")
    return p


def build_raw_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.opcua raw-client",
        description="Baseline: a raw asyncua client subscribing to Bench.Item00000.. of a "
        "running `simulators.opcua_plc --bench-items N`, counting the items of every "
        "DataChangeNotification. Prints JSON lines (subscribed, window_start, result).",
    )
    p.add_argument("--url", required=True, help="opc.tcp://HOST:PORT/line/")
    p.add_argument("--items", type=int, default=10_000)
    p.add_argument("--interval", default="1s", help="publishing and sampling interval")
    p.add_argument("--seconds", type=float, default=30.0, help="measured window")
    p.add_argument("--warmup", type=float, default=10.0)
    p.add_argument("--ready-timeout", type=float, default=120.0)
    p.add_argument("--queue-size", type=int, default=10)
    p.add_argument("--timeout", type=float, default=30.0, help="asyncua request timeout")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["raw-client"]:
        raw_args = build_raw_parser().parse_args(argv[1:])
        raw_args.interval_s = parse_duration(raw_args.interval)
        return asyncio.run(raw_client(raw_args))
    args = build_parser().parse_args(argv)
    # SIGTERM -> SystemExit, so that every `finally` stops the processes this run started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.interval_s = parse_duration(args.interval)
    args.source_interval = args.source_interval or args.interval
    if not os.path.exists(MOSQUITTO):
        print(f"{MOSQUITTO} not found (apt-get install mosquitto)", file=sys.stderr)
        return 2
    if not 1 <= args.items <= 100_000:
        print("--items must be within 1..100000 (the simulator's limit)", file=sys.stderr)
        return 2
    started = dt.datetime.now(dt.UTC)
    code_at_start = git_state()
    runs = []
    for i in range(args.runs):
        t = time.monotonic()
        r = run_once(i + 1, args)
        runs.append(r)
        print_run(r, args.runs, time.monotonic() - t)
    summary = summarise(runs, args)
    print()
    print_table(runs, summary)
    doc = {
        "benchmark": "edgegw opcua (OPC UA simulator -> edgegw subscribe -> mosquitto -> "
        "subscriber; raw asyncua client baseline)",
        "started_utc": started.isoformat(timespec="seconds"),
        "finished_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", "bench.opcua", *argv]),
        "cpu_count": os.cpu_count(),
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "mosquitto": mosquitto_version(),
            "asyncua": metadata.version("asyncua"),
        },
        "code": {"at_start": code_at_start, "at_end": git_state()},
        "settings": {k: v for k, v in vars(args).items() if k not in ("no_save", "keep_tmp")},
        "summary": summary,
        "runs": runs,
    }
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        stamp = started.strftime("%Y%m%dT%H%M%SZ")
        data = orjson.dumps(doc, option=orjson.OPT_INDENT_2)
        prefix = args.output_prefix
        (RESULTS / f"{prefix}-{stamp}.json").write_bytes(data)
        (RESULTS / f"{prefix}-latest.json").write_bytes(data)
        print(f"\nwrote {RESULTS / f'{prefix}-{stamp}.json'} and {prefix}-latest.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
