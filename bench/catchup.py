"""Catch-up benchmark: an outbox full of telemetry from an outage, the broker back, live data on.

    .venv/bin/python -m bench.catchup                                  # 1,000,000 rows, 3 runs
    .venv/bin/python -m bench.catchup --backlog 50000 --runs 1         # quick check

Issue 6, scenario 4: "1,000,000 events already in the outbox, broker back: seconds to drain
while live data keeps flowing"; issue 16's targets for 1,000,000 values: <= 5 s batched,
<= 50 s per message, <= 60 bytes per value on disk. Per mode (`message`: one MQTT message per
value; `batch`: `mqtt.batch: {max_values: 500, max_delay: 100ms}`) and per run, everything is
fresh, in a temporary directory, on free ports:

1. the outbox is filled with `--backlog` telemetry rows of source `backlog` (seq 1..N), built by
   the gateway's own pipeline and outbox (`bench.catchup_fill`); the fill is timed, not measured,
   and the file's size over the values it holds is the backlog's cost on disk;
2. a private Mosquitto, the counting subscriber (in this process), the Modbus simulator with
   `--live-tags` registers, and `edgegw run -c CONFIG` on that outbox, polling the live tags
   (sources `live0`, ...) every `--live-poll`;
3. the drain: from the gateway's start (and from the first backlog message received) until
   every backlog seq has reached the subscriber; live values and their latency, gateway CPU and
   RSS meanwhile; then how long until live values arrive within `--caught-up-ms` again (at
   most `--after` s) and `--live-window` s of live traffic alone; then SIGTERM (must exit 0);
4. the ceiling, on the same broker and subscriber, gateway stopped: raw paho QoS 1 publishing
   (`bench.baseline`, as in `bench.e2e`); ratio = drain rate / ceiling.

Results: a table on stdout, `bench/results/catchup-<timestamp>.json` and `catchup-latest.json`.
See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import copy
import datetime as dt
import itertools
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any

import orjson
import psutil
import yaml

from bench.catchup_fill import fill_outbox
from bench.common import save
from bench.e2e import (
    BASE_PREFIX,
    MOSQUITTO,
    RESULTS,
    Sampler,
    cpu_seconds,
    free_port,
    gateway_config,
    git_state,
    machine_busy,
    median,
    mosquitto_version,
    parse_duration,
    parse_stop_line,
    py_spy_dump,
    run_baseline,
    start_modbus_simulator,
    start_mosquitto,
    stop_process,
    summarise_profile,
    thread_cpu,
    wait_drained,
)
from bench.subscriber import RawSubscriber

BACKLOG_SOURCE = "backlog"
LIVE_SOURCE = "live"  # live0, live1, ... (one per --tags-per-source)
TOPIC_ROOT = "s/a/l/"  # {site}/{area}/{line}/ of bench.e2e.gateway_config
MODES = ("message", "batch")
STOP_DUMP_AFTER = 15.0  # seconds after SIGTERM before a py-spy dump of a gateway still running
STOP_KILL_AFTER = 60.0


# -- subscriber --------------------------------------------------------------------------------


class CatchupSubscriber(RawSubscriber):
    """`RawSubscriber` counting kinds `backlog`, `live` and `base`, which also records:
    the MQTT messages (packets) per kind, since a batch counts as many values; when the
    first backlog message and the last missing backlog seq arrived; and, per live value, its
    arrival and the latency from its `gw_ts` (when the gateway read it) to receipt."""

    def __init__(self, host: str, port: int, expected_backlog: int) -> None:
        super().__init__(
            host,
            port,
            {
                f"{TOPIC_ROOT}{BACKLOG_SOURCE}/": "backlog",
                f"{TOPIC_ROOT}{LIVE_SOURCE}": "live",
                BASE_PREFIX: "base",
            },
        )
        self.expected_backlog = expected_backlog
        self.packets = {"backlog": 0, "live": 0}
        self.first_backlog = 0.0  # monotonic
        self.backlog_complete = 0.0  # monotonic, when every seq 1..N had arrived
        self.live_arrival: array[float] = array("d")  # monotonic
        self.live_latency_ms: array[float] = array("d")  # gw_ts -> receipt (wall clocks)
        self._backlog = f"{TOPIC_ROOT}{BACKLOG_SOURCE}/".encode()
        self._live = f"{TOPIC_ROOT}{LIVE_SOURCE}".encode()
        self._epochs: dict[str, float] = {}

    def _count(self, topic: bytes, payload: bytes) -> None:
        super()._count(topic, payload)
        if topic.startswith(self._backlog):
            self.packets["backlog"] += 1
            if not self.first_backlog:
                self.first_backlog = time.monotonic()
            if (
                not self.backlog_complete
                and len(self.counts["backlog"].seqs) >= self.expected_backlog
            ):
                self.backlog_complete = time.monotonic()
        elif topic.startswith(self._live):
            self.packets["live"] += 1
            self._time_live(payload)

    def _time_live(self, payload: bytes) -> None:
        # Parsed a second time: live traffic is about 1,000 values/s, the backlog is not.
        now_wall, now = time.time(), time.monotonic()
        try:
            doc = orjson.loads(payload)
            items = doc["items"] if doc.get("schema") == "edgegw.batch/1" else (doc,)
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            return
        for item in items:
            gw_ts = self._epoch(item.get("gw_ts"))
            if gw_ts is not None:
                self.live_arrival.append(now)
                self.live_latency_ms.append((now_wall - gw_ts) * 1000.0)

    def _epoch(self, text: Any) -> float | None:
        # One Modbus reply (125 tags) shares a gw_ts: parse each text once.
        value = self._epochs.get(text)
        if value is None:
            try:
                value = dt.datetime.fromisoformat(text).timestamp()
            except (TypeError, ValueError):
                return None
            if len(self._epochs) > 10_000:
                self._epochs.clear()
            self._epochs[text] = value
        return value

    def live_between(self, start: float, end: float) -> tuple[int, list[float]]:
        """(values received, their latencies in ms) in [start, end) (monotonic)."""
        arrivals = self.live_arrival[: len(self.live_latency_ms)]
        lo = bisect.bisect_left(arrivals, start)
        hi = bisect.bisect_left(arrivals, end)
        return hi - lo, list(self.live_latency_ms[lo:hi])


# -- configuration and processes ---------------------------------------------------------------


def run_config(
    tmp: Path, mqtt_port: int, modbus_port: int, mode: str, args: argparse.Namespace
) -> dict[str, Any]:
    """bench.e2e's gateway config (qos 1, inflight, synchronous) with the live sources."""
    e2e_args = argparse.Namespace(
        poll=args.live_poll,
        inflight=args.inflight,
        batch=args.batch_values if mode == "batch" else 0,
        synchronous=args.synchronous,
    )
    cfg = gateway_config(
        tmp, mqtt_port, modbus_port, args.live_tags, args.tags_per_source, e2e_args
    )
    for k, source in enumerate(cfg["sources"]):
        source["name"] = f"{LIVE_SOURCE}{k}"
    return cfg


def fill_config(cfg: dict[str, Any], modbus_port: int, args: argparse.Namespace) -> dict[str, Any]:
    """The run config plus the source whose readings piled up during the outage. The run
    config leaves it out: the gateway would poll it (a dead device, bad-quality values) and
    its rows need nothing from the config to be forwarded."""
    out = copy.deepcopy(cfg)
    out["sources"].append(
        {
            "name": BACKLOG_SOURCE,
            "protocol": "modbus",
            "url": f"tcp://127.0.0.1:{modbus_port}",
            "poll": args.backlog_poll,
            "timeout": "1s",
            "tags": [
                {"name": f"r{i}", "address": f"holding:{1000 + i}", "type": "uint16"}
                for i in range(args.backlog_tags)
            ],
        }
    )
    return out


def start_profiler(pid: int, out: Path, log: Path) -> subprocess.Popen[bytes] | None:
    exe = Path(sys.executable).parent / "py-spy"
    if not exe.exists():
        return None
    # No duration: stopped with SIGINT when the drain is over, then it writes its output.
    return subprocess.Popen(
        [
            *(str(exe), "record", "-p", str(pid), "-r", "100", "-f", "raw", "-o", str(out)),
            *("--nonblocking", "--threads"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )


def stop_profiler(spy: subprocess.Popen[bytes] | None) -> None:
    if spy is None or spy.poll() is not None:
        return
    spy.send_signal(signal.SIGINT)
    try:
        spy.wait(30)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()


# -- measuring ---------------------------------------------------------------------------------


class OutboxProbe:
    """min(seq) and max(seq) of the outbox, read-only: two index lookups, cheap enough to do
    every second during the drain (count(*) of a million rows is not)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def read(self) -> tuple[int | None, int | None]:
        try:
            if self._db is None:
                self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=1.0)
            row = self._db.execute(
                "SELECT min(first_seq), max(first_seq + count - 1) FROM segments"
            ).fetchone()
        except sqlite3.Error:
            return None, None
        return row[0], row[1]

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class CpuWindow:
    """CPU of the gateway (and its threads), of the other processes and of the machine
    between `__init__` and `close()`."""

    def __init__(self, gw: psutil.Process, others: dict[str, psutil.Process]) -> None:
        self.gw, self.others = gw, others
        self.t0 = time.monotonic()
        self.busy0, self.total0 = machine_busy()
        self.gw0 = cpu_seconds(gw)
        self.threads0 = thread_cpu(gw)
        self.others0 = {n: cpu_seconds(p) for n, p in others.items()}

    def close(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self.t0
        busy1, total1 = machine_busy()
        gw_cpu = cpu_seconds(self.gw) - self.gw0
        threads1 = thread_cpu(self.gw)
        others = {
            n: round(100 * (cpu_seconds(p) - self.others0[n]) / elapsed, 1)
            for n, p in self.others.items()
        }
        cores = os.cpu_count() or 1
        busy = round(100 * cores * (busy1 - self.busy0) / (total1 - self.total0), 1)
        gw_percent = round(100 * gw_cpu / elapsed, 1)
        return {
            "seconds": round(elapsed, 2),
            "gateway_cpu_s": round(gw_cpu, 2),
            "gateway_cpu_percent": gw_percent,
            "gateway_threads_cpu_percent": {
                n: round(100 * (v - self.threads0.get(n, 0.0)) / elapsed, 1)
                for n, v in threads1.items()
                if v - self.threads0.get(n, 0.0) > 0.001 * elapsed
            },
            "other_cpu_percent": others,
            "machine_busy_percent": busy,
            # Machine busy (of cores*100 %) not explained by the processes we know: someone else.
            "unaccounted_cpu_percent": round(busy - gw_percent - sum(others.values()), 1),
        }


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def live_figures(sub: CatchupSubscriber, start: float, end: float, prefix: str) -> dict[str, Any]:
    n, lat = sub.live_between(start, end)
    seconds = max(end - start, 1e-9)
    return {
        f"{prefix}_values": n,
        f"{prefix}_values_per_s": round(n / seconds, 1),
        f"{prefix}_latency_p50_ms": percentile(lat, 0.5),
        f"{prefix}_latency_p99_ms": percentile(lat, 0.99),
        f"{prefix}_latency_max_ms": round(max(lat), 1) if lat else None,
    }


def missing_ranges(seen: set[int], n: int, limit: int = 10) -> tuple[int, list[list[int]]]:
    """How many of 1..n are not in `seen`, and the first `limit` missing ranges."""
    missing = n - sum(1 for s in seen if 1 <= s <= n)
    ranges: list[list[int]] = []
    if missing:
        start = None
        for s in range(1, n + 2):
            absent = s <= n and s not in seen
            if absent and start is None:
                start = s
            elif not absent and start is not None:
                ranges.append([start, s - 1])
                start = None
                if len(ranges) >= limit:
                    break
    return missing, ranges


def startup_marks(log_path: Path, spawn_wall: float) -> dict[str, float | None]:
    """Seconds from spawning the gateway to its log lines 'outbox open', 'gateway started'
    and 'broker connected' (JSON logs carry wall-clock ms)."""
    marks: dict[str, float | None] = {
        "outbox_open_s": None,
        "gateway_started_s": None,
        "broker_connected_s": None,
    }
    keys = (
        ("outbox open", "outbox_open_s"),
        ("gateway started", "gateway_started_s"),
        ("broker connected", "broker_connected_s"),
    )
    with contextlib.suppress(OSError):
        for line in log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(orjson.JSONDecodeError, ValueError, TypeError, KeyError):
                entry = orjson.loads(line)
                for text, key in keys:
                    if marks[key] is None and str(entry["msg"]).startswith(text):
                        at = dt.datetime.fromisoformat(entry["ts"]).timestamp()
                        marks[key] = round(at - spawn_wall, 2)
    return marks


def stop_gateway(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    """SIGTERM; the gateway must exit 0. Slow: a py-spy dump as evidence; killed at 60 s."""
    out: dict[str, Any] = {}
    t = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(STOP_DUMP_AFTER)
    except subprocess.TimeoutExpired:
        out["stop_stack_dump"] = py_spy_dump(proc.pid)
        try:
            rc = proc.wait(STOP_KILL_AFTER - STOP_DUMP_AFTER)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
            out["stop_note"] = f"did not exit within {STOP_KILL_AFTER:g} s of SIGTERM: killed"
    out["gateway_exit_status"] = rc
    out["stop_seconds"] = round(time.monotonic() - t, 2)
    return out


def rows_left(db_path: Path, n: int) -> dict[str, int | None]:
    """Rows in the outbox after the stop: backlog rows (seq <= n) and live ones."""
    with contextlib.suppress(sqlite3.Error):
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            # Messages stored, split at seq n (a segment never spans the two: the backlog was
            # committed before the live values).
            backlog, live = db.execute(
                "SELECT coalesce(sum(count) FILTER (WHERE first_seq <= ?), 0), "
                "coalesce(sum(count) FILTER (WHERE first_seq > ?), 0) FROM segments",
                (n, n),
            ).fetchone()
            return {"backlog_rows_left": backlog, "live_rows_left": live}
        finally:
            db.close()
    return {"backlog_rows_left": None, "live_rows_left": None}


# -- one run -----------------------------------------------------------------------------------


class Run:
    """One run of one mode: holds the processes so that every one is stopped in `close()`."""

    def __init__(self, mode: str, index: int, args: argparse.Namespace) -> None:
        self.mode, self.index, self.args = mode, index, args
        self.tmp = Path(tempfile.mkdtemp(prefix=f"edgegw-catchup-{mode}-"))
        self.mqtt_port, self.modbus_port = free_port(), free_port()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.sub: CatchupSubscriber | None = None
        self.sampler: Sampler | None = None
        self.spy: subprocess.Popen[bytes] | None = None
        self.probe = OutboxProbe(self.tmp / "state" / "outbox.sqlite3")
        self.t_spawn = self.t_drained = 0.0  # monotonic: gateway spawned, backlog all received
        self.result: dict[str, Any] = {"mode": mode, "run": index, "tmp": str(self.tmp)}

    def execute(self) -> dict[str, Any]:
        args, n = self.args, self.args.backlog
        cfg = run_config(self.tmp, self.mqtt_port, self.modbus_port, self.mode, args)
        self._fill(cfg)
        self.procs["mosquitto"] = start_mosquitto(self.tmp, self.mqtt_port)
        self.sub = CatchupSubscriber("127.0.0.1", self.mqtt_port, n)
        self.sub.start()
        self.procs["simulator"] = start_modbus_simulator(self.tmp, self.modbus_port, args.live_tags)
        config_path = self.tmp / "edgegw.yaml"
        config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self._drain(config_path)
        self._after_drain()
        self._stop_and_check()
        self._ceiling()
        if self.sub.error:
            self.result["subscriber_error"] = self.sub.error
        return self.result

    def _fill(self, cfg: dict[str, Any]) -> None:
        path = self.tmp / "fill.yaml"
        path.write_text(yaml.safe_dump(fill_config(cfg, self.modbus_port, self.args)))
        fill = fill_outbox(path, BACKLOG_SOURCE, self.args.backlog, self.args.fill_group)
        self.result["fill"] = fill.as_dict()
        self.result["outbox_bytes_per_value"] = fill.bytes_per_value
        print(
            f"  [{self.mode} run {self.index}] filled {fill.rows:,} rows in {fill.seconds} s "
            f"({fill.rows_per_s:,.0f} rows/s, {fill.file_mb} MB, "
            f"{fill.bytes_per_value} bytes per value)",
            flush=True,
        )

    def _drain(self, config_path: Path) -> None:
        """Start the gateway and wait until every backlog seq has arrived (or the timeout)."""
        args, sub, n = self.args, self.sub, self.args.backlog
        assert sub is not None
        gw_log = self.tmp / "gateway.log"
        spawn_wall, t_spawn = time.time(), time.monotonic()
        self.procs["gateway"] = subprocess.Popen(
            [str(Path(sys.executable).parent / "edgegw"), "run", "-c", str(config_path)],
            cwd=self.tmp,
            stdout=(self.tmp / "gateway.out").open("wb"),
            stderr=gw_log.open("wb"),
        )
        gw = psutil.Process(self.procs["gateway"].pid)
        self.sampler = Sampler(gw)
        self.sampler.start()
        others = {n_: psutil.Process(self.procs[n_].pid) for n_ in ("simulator", "mosquitto")}
        others["bench+subscriber"] = psutil.Process()
        cpu = CpuWindow(gw, others)
        if args.profile:
            self.spy = start_profiler(gw.pid, self.tmp / "py-spy.txt", self.tmp / "py-spy.log")
        series = self._watch(t_spawn, t_spawn + args.timeout)
        t_end = sub.backlog_complete or time.monotonic()
        window = cpu.close()
        stop_profiler(self.spy)
        self.t_spawn, self.t_drained = t_spawn, t_end
        first = sub.first_backlog
        from_first = (t_end - first) if first else None
        packets = sub.packets["backlog"]
        received = len(sub.counts["backlog"].seqs)
        self.result.update(
            backlog=n,
            drained=bool(sub.backlog_complete),
            backlog_received_at_end=received,
            first_message_s=round(first - t_spawn, 2) if first else None,
            drain_s_from_start=round(t_end - t_spawn, 2),
            drain_s_from_first_message=round(from_first, 2) if from_first else None,
            drain_values_per_s=round(received / from_first, 1) if from_first else None,
            drain_values_per_s_from_start=round(received / (t_end - t_spawn), 1),
            drain_msgs_per_s=round(packets / from_first, 1) if from_first else None,
            drain_values_per_s_steady=steady_rate(series),
            backlog_mqtt_messages=packets,
            peak_rss_mb_drain=round(self.sampler.peak_rss(t_spawn, t_end) / 2**20, 1),
            drain_cpu=window,
            gateway_cpu_percent_drain=window["gateway_cpu_percent"],
            gateway_cpu_ms_per_1k_values=round(window["gateway_cpu_s"] * 1e6 / received, 1)
            if received
            else None,
            unaccounted_cpu_percent=window["unaccounted_cpu_percent"],
            series=series,
            startup=startup_marks(gw_log, spawn_wall),
            **live_figures(sub, t_spawn, t_end, "live_during_drain"),
        )
        live_committed = (series[-1]["outbox_max_seq"] or n) - n if series else None
        self.result["live_committed_during_drain"] = live_committed
        self.result["live_committed_per_s_during_drain"] = (
            round(live_committed / (t_end - t_spawn), 1) if live_committed is not None else None
        )

    def _watch(self, t_spawn: float, deadline: float) -> list[dict[str, Any]]:
        """Per second: backlog values and live values received so far, outbox min/max seq."""
        sub, gateway = self.sub, self.procs["gateway"]
        assert sub is not None
        series: list[dict[str, Any]] = []
        t_next = t_spawn + 1.0
        while not sub.backlog_complete:
            now = time.monotonic()
            if now >= deadline:
                self.result["timed_out"] = True
                break
            if gateway.poll() is not None:
                raise RuntimeError(
                    f"gateway exited with {gateway.returncode} during the drain: "
                    f"{(self.tmp / 'gateway.log').read_text(errors='replace')[-2000:]}"
                )
            if now >= t_next:
                low, high = self.probe.read()
                snap = sub.snapshot()
                series.append(
                    {
                        "t": round(now - t_spawn, 2),
                        "backlog_values": len(sub.counts["backlog"].seqs),
                        "live_values": snap["live"][0],
                        "outbox_min_seq": low,
                        "outbox_max_seq": high,
                    }
                )
                t_next += 1.0
            time.sleep(0.05)
        # The last point: outbox state when the drain completed.
        low, high = self.probe.read()
        series.append(
            {
                "t": round(time.monotonic() - t_spawn, 2),
                "backlog_values": len(sub.counts["backlog"].seqs),
                "live_values": sub.snapshot()["live"][0],
                "outbox_min_seq": low,
                "outbox_max_seq": high,
            }
        )
        return series

    def _after_drain(self) -> None:
        """After the backlog: the live rows committed during the drain wait behind it (the
        forwarder sends in seq order), so live data catches up only afterwards. Wait (at
        most `--after` s) for the first live value received within `--caught-up-ms` of its
        `gw_ts`, then measure `--live-window` s of live traffic alone."""
        sub, args = self.sub, self.args
        assert sub is not None
        if not sub.backlog_complete:
            return
        caught = self._wait_live_caught_up(sub.backlog_complete + args.after)
        _, waited = sub.live_between(self.t_spawn, time.monotonic())
        self.result.update(
            live_waited_max_ms=round(max(waited), 1) if waited else None,
            live_caught_up_s_after_drain=round(caught - sub.backlog_complete, 2)
            if caught
            else None,
            live_caught_up_s_from_start=round(caught - self.t_spawn, 2) if caught else None,
        )
        if caught and args.live_window > 0:
            t = time.monotonic()
            time.sleep(args.live_window)
            self.result.update(live_figures(sub, t, t + args.live_window, "live_steady"))

    def _wait_live_caught_up(self, deadline: float) -> float | None:
        """Monotonic arrival of the first live value (after the drain) that waited at most
        `--caught-up-ms`; None if none did before the deadline."""
        sub, limit = self.sub, self.args.caught_up_ms
        assert sub is not None
        index = bisect.bisect_left(sub.live_arrival, sub.backlog_complete)
        while time.monotonic() < deadline:
            latencies = sub.live_latency_ms
            while index < len(latencies):
                if latencies[index] <= limit:
                    return sub.live_arrival[index]
                index += 1
            if self.procs["gateway"].poll() is not None:
                return None
            time.sleep(0.1)
        return None

    def _stop_and_check(self) -> None:
        sub, n = self.sub, self.args.backlog
        assert sub is not None
        assert self.sampler is not None
        self.probe.close()
        self.result.update(stop_gateway(self.procs["gateway"]))
        self.sampler.stop()
        self.result["peak_rss_mb"] = round(self.sampler.peak_rss() / 2**20, 1)
        stop_process(self.procs.pop("simulator"))
        info = parse_stop_line(self.tmp / "gateway.log")
        self.result.update(
            gateway_committed=info["committed"],
            gateway_published=info["published"],
            gateway_log_levels=info["levels"],
        )
        if info.get("warnings_and_errors"):
            self.result["gateway_warnings"] = info["warnings_and_errors"]
        wait_drained(sub)
        counts = sub.counts["backlog"]
        missing, ranges = missing_ranges(counts.seqs, n)
        self.result["backlog_check"] = {
            "received_values": counts.messages,
            "distinct_seqs": len(counts.seqs),
            "distinct_ids": len(counts.ids),
            "duplicates": counts.messages - len(counts.seqs),
            "missing": missing,
            "missing_ranges": ranges,
            "bad_payloads": counts.bad_payloads,
            **rows_left(self.tmp / "state" / "outbox.sqlite3", n),
        }
        self.result["live_total"] = sub.counts["live"].summary()

    def _ceiling(self) -> None:
        """Raw paho QoS 1 through the same broker to the same subscriber, gateway stopped."""
        sub = self.sub
        assert sub is not None
        base_args = argparse.Namespace(
            baseline_seconds=self.args.baseline_seconds,
            inflight=self.args.inflight,
            payload_size=self.args.payload_size,
        )
        base = run_baseline("paho", self.mqtt_port, sub, base_args)
        self.result["ceiling"] = base
        ceiling = base.get("subscriber_msgs_per_s")
        n = self.args.backlog
        self.result["ceiling_msgs_per_s"] = ceiling
        self.result["predicted_drain_s_at_ceiling"] = round(n / ceiling, 1) if ceiling else None
        rate, msgs = self.result.get("drain_values_per_s"), self.result.get("drain_msgs_per_s")
        self.result["ratio_values_vs_ceiling"] = (
            round(rate / ceiling, 3) if rate and ceiling else None
        )
        self.result["ratio_msgs_vs_ceiling"] = (
            round(msgs / ceiling, 3) if msgs and ceiling else None
        )

    def close(self) -> None:
        stop_profiler(self.spy)
        self.probe.close()
        if self.sampler is not None and self.sampler.is_alive():
            self.sampler.stop()
        if self.sub is not None:
            self.sub.stop()
        for name in ("gateway", "simulator", "mosquitto"):
            stop_process(self.procs.get(name))
        if self.args.profile and (self.tmp / "py-spy.txt").exists():
            self.result["profile_raw"] = str(self.tmp / "py-spy.txt")
        elif not self.args.keep_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


def steady_rate(series: list[dict[str, Any]]) -> float | None:
    """Median backlog values per second over the whole seconds of the drain, without the
    first and last (start-up and tail): the pace once the forwarder is going."""
    steps = [b["backlog_values"] - a["backlog_values"] for a, b in itertools.pairwise(series)]
    steps = [s for s in steps[1:-1] if s > 0]
    return round(statistics.median(steps), 1) if steps else None


def run_once(mode: str, index: int, args: argparse.Namespace) -> dict[str, Any]:
    """One run; a failure (gateway died, a wait timed out) is recorded, not raised, so the
    other runs and the JSON still come out. Ctrl-C and SIGTERM still stop everything."""
    run = Run(mode, index, args)
    try:
        return run.execute()
    except Exception as exc:
        run.result["error"] = f"{type(exc).__name__}: {exc}"[-3000:]
        return run.result
    finally:
        run.close()


# -- summary and output ------------------------------------------------------------------------


METRICS = (
    "drain_s_from_start",
    "drain_s_from_first_message",
    "first_message_s",
    "drain_values_per_s",
    "drain_values_per_s_steady",
    "drain_msgs_per_s",
    "ceiling_msgs_per_s",
    "ratio_values_vs_ceiling",
    "ratio_msgs_vs_ceiling",
    "predicted_drain_s_at_ceiling",
    "live_during_drain_values_per_s",
    "live_during_drain_latency_p50_ms",
    "live_during_drain_latency_max_ms",
    "live_committed_per_s_during_drain",
    "live_waited_max_ms",
    "live_caught_up_s_after_drain",
    "live_caught_up_s_from_start",
    "live_steady_values_per_s",
    "live_steady_latency_p50_ms",
    "live_steady_latency_p99_ms",
    "gateway_cpu_percent_drain",
    "gateway_cpu_ms_per_1k_values",
    "peak_rss_mb_drain",
    "unaccounted_cpu_percent",
    "stop_seconds",
    "outbox_bytes_per_value",
)


def summarise_mode(
    mode: str, runs: list[dict[str, Any]], args: argparse.Namespace
) -> dict[str, Any]:
    return {
        "mode": mode,
        "batch": {"max_values": args.batch_values, "max_delay": "100ms"}
        if mode == "batch"
        else None,
        "runs": runs,
        "median": {m: median([r.get(m) for r in runs]) for m in METRICS},
        "median_fill_seconds": median([r.get("fill", {}).get("seconds") for r in runs]),
        "all_drained": all(r.get("drained") for r in runs),
        "all_delivered": all(r.get("backlog_check", {}).get("missing") == 0 for r in runs),
        "all_exit_0": all(r.get("gateway_exit_status") == 0 for r in runs),
    }


def on_disk(modes: list[dict[str, Any]], backlog: int) -> dict[str, Any]:
    """The backlog on disk, over every run of every mode (each run fills its own outbox):
    outbox file + WAL right after the fill, divided by the values it holds."""
    runs = [r for m in modes for r in m["runs"]]
    return {
        "values_held": backlog,
        "bytes_per_value": median([r.get("outbox_bytes_per_value") for r in runs]),
        "file_mb": median([r.get("fill", {}).get("file_mb") for r in runs]),
        "runs": len(runs),
        "how": "bench.catchup_fill: the gateway's pipeline and Outbox.append with no broker "
        "(the outage), segments of one source and commit group (SEGMENT_MAX values at most)",
    }


def fmt(value: Any, spec: str = ",.0f") -> str:
    return "n/a" if value is None else format(value, spec)


def print_table(modes: list[dict[str, Any]], backlog: int) -> None:
    head = (
        f"{'mode':>8} {'drain s':>8} {'(1st msg)':>9} {'values/s':>9} {'msgs/s':>8} "
        f"{'ceiling':>8} {'ratio':>6} {'@ceil s':>7} {'live/s':>7} {'live wait':>9} {'live ok':>7} "
        f"{'gw CPU%':>7} {'RSS MB':>6} {'fill s':>6}  all/exit0"
    )
    print(head)
    print("-" * len(head))
    for m in modes:
        d = m["median"]
        # Per message the ratio is messages (= values) per second; a batch carries many
        # values, so its ratio compares values/s with the same ceiling of messages/s.
        print(
            f"{m['mode']:>8} {fmt(d['drain_s_from_start'], '.1f'):>8} "
            f"{fmt(d['first_message_s'], '.1f'):>9} {fmt(d['drain_values_per_s']):>9} "
            f"{fmt(d['drain_msgs_per_s']):>8} {fmt(d['ceiling_msgs_per_s']):>8} "
            f"{fmt(d['ratio_values_vs_ceiling'], '.2f'):>6} "
            f"{fmt(d['predicted_drain_s_at_ceiling'], '.1f'):>7} "
            f"{fmt(d['live_during_drain_values_per_s']):>7} "
            f"{fmt(d['live_waited_max_ms'], ',.0f'):>9} "
            f"{fmt(d['live_caught_up_s_after_drain'], '.1f'):>7} "
            f"{fmt(d['gateway_cpu_percent_drain'], '.0f'):>7} {fmt(d['peak_rss_mb_drain']):>6} "
            f"{fmt(m['median_fill_seconds'], '.0f'):>6}  "
            f"{'yes' if m['all_delivered'] else 'NO'}/{'yes' if m['all_exit_0'] else 'NO'}"
        )
    print(
        f"(medians; backlog {backlog:,} rows; drain s = gateway start -> last backlog seq "
        "received, 1st msg = start -> first backlog message; values/s and msgs/s from the first "
        "message; ceiling = raw paho QoS 1 msgs/s; ratio = values/s / ceiling; @ceil s = backlog "
        "/ ceiling; live/s = live values received during the drain; live wait = longest gw_ts -> "
        "receipt of a live value, ms; live ok = s after the drain until live values arrive "
        "within --caught-up-ms again)"
    )


def print_run(r: dict[str, Any]) -> None:
    if "error" in r:
        print(f"  [{r['mode']} run {r['run']}] FAILED: {r['error']}", flush=True)
        return
    check = r["backlog_check"]
    print(
        f"  [{r['mode']} run {r['run']}] drained {r['backlog_received_at_end']:,}/{r['backlog']:,} "
        f"in {r['drain_s_from_start']} s from start ({r['drain_s_from_first_message']} s from "
        f"the first message at {r['first_message_s']} s): {fmt(r['drain_values_per_s'])} "
        f"values/s, {fmt(r['drain_msgs_per_s'])} msgs/s (steady "
        f"{fmt(r['drain_values_per_s_steady'])}/s); ceiling {fmt(r['ceiling_msgs_per_s'])} "
        f"msgs/s, ratio {r['ratio_values_vs_ceiling']}; live {r['live_during_drain_values_per_s']}"
        f"/s during the drain (committed {r['live_committed_per_s_during_drain']}/s), "
        f"longest wait {r.get('live_waited_max_ms')} ms, caught up "
        f"{r.get('live_caught_up_s_after_drain')} s after the drain, then "
        f"{r.get('live_steady_values_per_s')}/s p50 {r.get('live_steady_latency_p50_ms')} ms; "
        f"gw CPU "
        f"{r['gateway_cpu_percent_drain']}% ({r['drain_cpu']['gateway_threads_cpu_percent']}), "
        f"{r['gateway_cpu_ms_per_1k_values']} ms/1k values, "
        f"RSS {r['peak_rss_mb_drain']} MB; unaccounted CPU {r['unaccounted_cpu_percent']}%; "
        f"missing {check['missing']}, duplicates {check['duplicates']}, backlog rows left "
        f"{check['backlog_rows_left']}; exit {r['gateway_exit_status']} in {r['stop_seconds']} s; "
        f"startup {r['startup']}",
        flush=True,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.catchup",
        description="Catch-up after an outage (issue 6, scenario 4): an outbox pre-filled with "
        "BACKLOG telemetry rows (built by edgegw's own pipeline and outbox), the broker up, "
        "live Modbus data flowing; seconds until every backlog seq reached the subscriber, "
        "the drain rate against a raw paho QoS 1 ceiling measured in the same run, live rate "
        "and latency, gateway CPU and RSS; the outbox's bytes per value after the fill. Targets "
        "(issue 16) for 1,000,000 values: <= 5 s batched, <= 50 s per message, <= 60 bytes per "
        "value. "
        "See bench/README.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="examples: python -m bench.catchup --backlog 50000 --runs 1 (quick check); "
        "python -m bench.catchup --runs 1 --profile --output-prefix catchup-profile",
    )
    p.add_argument("--backlog", type=int, default=1_000_000, help="rows in the outbox at start")
    p.add_argument(
        "--modes",
        nargs="+",
        choices=MODES,
        default=list(MODES),
        help="message: one MQTT message per value; batch: mqtt.batch max_values "
        "--batch-values, max_delay 100ms",
    )
    p.add_argument("--runs", type=int, default=3, help="runs per mode (medians reported)")
    p.add_argument("--live-tags", type=int, default=1000, help="live Modbus tags (>= 1)")
    p.add_argument("--live-poll", default="1s", help="poll interval of the live tags")
    p.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds from the gateway's start to give up waiting for the backlog",
    )
    p.add_argument(
        "--after",
        type=float,
        default=120.0,
        help="at most this many seconds after the drain for live data to catch up",
    )
    p.add_argument(
        "--caught-up-ms",
        type=float,
        default=1000.0,
        help="live data has caught up when a value arrives within this of its gw_ts",
    )
    p.add_argument(
        "--live-window",
        type=float,
        default=3.0,
        help="seconds of live traffic alone measured once caught up (rate, latency)",
    )
    p.add_argument("--batch-values", type=int, default=500, help="mqtt.batch.max_values")
    p.add_argument(
        "--backlog-tags",
        type=int,
        default=1000,
        help="tags of the backlog source (one poll round = this many rows)",
    )
    p.add_argument("--backlog-poll", default="1s", help="poll interval the backlog was read at")
    p.add_argument("--fill-group", type=int, default=20_000, help="rows per Outbox.append")
    p.add_argument("--tags-per-source", type=int, default=2500, help="live tags per source")
    p.add_argument("--inflight", type=int, default=100, help="mqtt.inflight and ceiling window")
    p.add_argument(
        "--synchronous", choices=["full", "normal", "extra"], default="full", help="outbox"
    )
    p.add_argument("--baseline-seconds", type=float, default=8.0, help="ceiling window")
    p.add_argument("--payload-size", type=int, default=300, help="ceiling payload bytes")
    p.add_argument(
        "--profile",
        action="store_true",
        help="py-spy record (100 Hz) of the gateway during each drain; collapsed stacks to "
        "bench/results/PREFIX-pyspy-MODE.txt, a summary in the JSON",
    )
    p.add_argument("--keep-tmp", action="store_true", help="keep temp dirs (outbox, logs)")
    p.add_argument(
        "--output-prefix",
        default="catchup",
        help="write bench/results/PREFIX-<timestamp>.json and PREFIX-latest.json",
    )
    p.add_argument("--no-save", action="store_true", help="do not write bench/results")
    return p


def profile_summary(
    runs: list[dict[str, Any]], mode: str, args: argparse.Namespace
) -> dict[str, Any] | None:
    """Summary of the last run's py-spy stacks (e2e's components), copied to bench/results."""
    raw_paths = [Path(r["profile_raw"]) for r in runs if r.get("profile_raw")]
    if not raw_paths:
        return None
    raw = raw_paths[-1]
    summary = summarise_profile(raw, runs[-1]["drain_s_from_start"])
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(raw, RESULTS / f"{args.output_prefix}-pyspy-{mode}.txt")
    for path in raw_paths:
        if not args.keep_tmp:
            shutil.rmtree(path.parent, ignore_errors=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM -> SystemExit, so that every `finally` stops the processes this run started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.live_poll_s = parse_duration(args.live_poll)
    if args.live_tags < 1 or args.backlog < 1:
        print("--live-tags and --backlog must be >= 1", file=sys.stderr)
        return 2
    if not os.path.exists(MOSQUITTO):
        print(f"{MOSQUITTO} not found (apt-get install mosquitto)", file=sys.stderr)
        return 2
    started = dt.datetime.now(dt.UTC)
    code_at_start = git_state()
    modes: list[dict[str, Any]] = []
    profiles: dict[str, Any] = {}
    for mode in args.modes:
        runs = []
        for i in range(args.runs):
            t = time.monotonic()
            runs.append(run_once(mode, i + 1, args))
            print_run(runs[-1])
            print(f"  [{mode} run {i + 1}] took {time.monotonic() - t:.0f} s", flush=True)
        summary = profile_summary(runs, mode, args)
        if summary is not None:
            profiles[mode] = summary
        modes.append(summarise_mode(mode, runs, args))
    print()
    print_table(modes, args.backlog)
    disk = on_disk(modes, args.backlog)
    print(
        f"outbox on disk after the fill: {fmt(disk['bytes_per_value'], '.1f')} bytes per value "
        f"({fmt(disk['file_mb'], '.1f')} MB for {args.backlog:,} values; median of "
        f"{disk['runs']} fills)"
    )
    doc = {
        "benchmark": "edgegw catch-up (pre-filled outbox -> edgegw -> mosquitto -> subscriber, "
        "live modbus load)",
        "started_utc": started.isoformat(timespec="seconds"),
        "finished_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", "bench.catchup", *sys.argv[1:]]),
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "mosquitto": mosquitto_version(),
        },
        "code": {"at_start": code_at_start, "at_end": git_state()},
        "settings": {k: v for k, v in vars(args).items() if k not in ("no_save", "keep_tmp")},
        "target": "issue 16: 1,000,000 values drained in <= 5 s batched, <= 50 s per message; "
        "<= 60 bytes per value on disk",
        "modes": modes,
        "outbox_on_disk": disk,
    }
    if profiles:
        doc["profiles"] = profiles
    if not args.no_save:
        save(doc, started, args.output_prefix)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
