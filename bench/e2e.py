"""End-to-end benchmark: Modbus simulator -> `edgegw run` -> Mosquitto -> counting subscriber.

    .venv/bin/python -m bench.e2e --tags 1000 10000 --seconds 15 --runs 3

For each tag count and each run, everything is started fresh in a temporary directory:

1. a private Mosquitto (unlimited queue for the subscriber, 100 in flight),
2. a counting subscriber in this process (`bench.subscriber.RawSubscriber` by default),
3. the Modbus simulator with `--bench-registers N` (registers 1000.. change at every read, so
   report-by-exception publishes every value read),
4. `edgegw run -c CONFIG` (N uint16 tags split into sources of `--tags-per-source`, one Modbus
   connection each, all on the same simulator). With `--sinks N`, N-1 more private Mosquittos
   and one more MQTT sink (`sinks:` entry) on each; the subscriber counts the first broker.

After the first telemetry message and `--warmup` seconds, a window of `--seconds` measures:
values/s received by the subscriber, gateway CPU (user+system) per 1,000 values received,
peak RSS (sampled every 0.5 s), outbox commits/s (growth of `last_seq` from
`edgegw outbox stats --json`) and the outbox depth at the end. The gateway is then stopped with
SIGTERM (it must exit 0) and, in the same run, the baselines publish through the same broker to
the same subscriber (`bench.baseline`: raw paho, and edgegw's own MqttClient alone).

Results: a table on stdout, `bench/results/e2e-<timestamp>.json` and
`bench/results/e2e-latest.json`.
See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import psutil
import yaml

from bench.common import save
from bench.subscriber import PahoSubscriber, RawSubscriber

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
MOSQUITTO = "/usr/sbin/mosquitto"
TELEMETRY_PREFIX = "s/a/l/src"  # topic {site}/{area}/{line}/{source}/{tag} with sources srcK
BASE_PREFIX = "bench/base/"


# -- small helpers -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[Any], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} not listening on {port} after {timeout} s")


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float = 10.0) -> int | None:
    """SIGTERM, wait, SIGKILL if needed; returns the exit status (None if never started)."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def start_mosquitto(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    conf = tmp / "mosquitto.conf"
    # Nothing persisted, no queue limit for the subscriber, 100 in flight.
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 0\nmax_inflight_messages 100\n"
    )
    proc = subprocess.Popen(
        [MOSQUITTO, "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=(tmp / "mosquitto.log").open("wb"),
    )
    wait_port(port, proc, "mosquitto")
    return proc


def start_modbus_simulator(tmp: Path, port: int, registers: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simulators.modbus_plc",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--bench-registers",
            str(registers),
            "--log-level",
            "WARNING",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=(tmp / "simulator.log").open("wb"),
    )
    wait_port(port, proc, "simulator")
    return proc


def median(values: list[float | int | None]) -> float | None:
    clean = [v for v in values if v is not None]
    return round(statistics.median(clean), 3) if clean else None


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def thread_cpu(proc: psutil.Process) -> dict[str, float]:
    """CPU seconds per thread: 'main' (the event loop) and 'tid:comm' for the others."""
    out: dict[str, float] = {}
    for t in proc.threads():
        if t.id == proc.pid:
            name = "main"
        else:
            try:
                comm = Path(f"/proc/{proc.pid}/task/{t.id}/comm").read_text().strip()
            except OSError:
                comm = "?"
            name = f"{t.id}:{comm}"
        out[name] = t.user_time + t.system_time
    return out


def py_spy_dump(pid: int) -> str:
    """`py-spy dump` of a process (a few lines per thread), or why not."""
    exe = Path(sys.executable).parent / "py-spy"
    if not exe.exists():
        return "py-spy not installed (.venv/bin/pip install py-spy)"
    try:
        out = subprocess.run(
            [str(exe), "dump", "--pid", str(pid), "--nonblocking"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"py-spy dump failed: {exc}"
    return (out.stdout + out.stderr)[-6000:]


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores."""
    t = psutil.cpu_times()
    total = sum(t)
    idle = t.idle + getattr(t, "iowait", 0.0)
    return total - idle, total


def git_state() -> dict[str, Any]:
    """The code measured: HEAD and the files that differ from it (read-only git calls)."""

    def git(*cmd: str) -> str:
        try:
            return subprocess.run(
                ["git", *cmd], cwd=REPO, capture_output=True, text=True, timeout=10, check=False
            ).stdout
        except OSError:
            return ""

    dirty = [line[3:] for line in git("status", "--porcelain").splitlines() if line[3:]]
    return {"head": git("rev-parse", "--short", "HEAD").strip(), "dirty": dirty}


def mosquitto_version() -> str:
    try:
        out = subprocess.run(
            [MOSQUITTO, "-h"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except OSError:
        return "unknown"
    first = out.splitlines()[0] if out else ""
    return first.replace("mosquitto version", "").strip() or "unknown"


def outbox_stats(config_path: Path) -> tuple[dict[str, Any], float]:
    """`edgegw outbox stats --json`, and the moment it looked (midpoint of the call)."""
    before = time.monotonic()
    out = subprocess.run(
        [
            str(Path(sys.executable).parent / "edgegw"),
            "outbox",
            "stats",
            "-c",
            str(config_path),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    after = time.monotonic()
    return json.loads(out.stdout), (before + after) / 2


class Sampler(threading.Thread):
    """Samples the gateway's RSS (and CPU) every `interval` seconds until stopped."""

    def __init__(self, proc: psutil.Process, interval: float = 0.5) -> None:
        super().__init__(name="bench-sampler", daemon=True)
        self.proc, self.interval = proc, interval
        self.samples: list[tuple[float, int, float]] = []  # (monotonic, rss, cpu seconds)
        self._stop_evt = threading.Event()

    def run(self) -> None:
        while not self._stop_evt.is_set():
            try:
                rss = self.proc.memory_info().rss
                cpu = cpu_seconds(self.proc)
            except psutil.Error:
                return
            self.samples.append((time.monotonic(), rss, cpu))
            self._stop_evt.wait(self.interval)

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(2.0)

    def peak_rss(self, start: float = 0.0, end: float = float("inf")) -> int:
        return max((rss for t, rss, _ in self.samples if start <= t <= end), default=0)


# -- one run -----------------------------------------------------------------------------------


def mqtt_section(port: int, args: argparse.Namespace) -> dict[str, Any]:
    """The keys of one MQTT sink (the `mqtt:` section, or an entry of `sinks:` with a name
    and `type: mqtt` added): qos 1, the bench's in-flight window, batching if asked."""
    return {
        "url": f"mqtt://127.0.0.1:{port}",
        "qos": 1,
        "inflight": args.inflight,
        **({"batch": {"max_values": args.batch, "max_delay": "100ms"}} if args.batch else {}),
    }


def gateway_config(
    tmp: Path,
    mqtt_port: int,
    modbus_port: int,
    tags: int,
    per_source: int,
    args: argparse.Namespace,
    extra_brokers: Sequence[int] = (),
) -> dict[str, Any]:
    """The gateway's config; one more MQTT sink (`sinks:` entry mqtt2, mqtt3, ...) per port
    of `extra_brokers`, besides the `mqtt:` section (the sink named mqtt)."""
    sources = []
    for k, first in enumerate(range(0, tags, per_source)):
        count = min(per_source, tags - first)
        sources.append(
            {
                "name": f"src{k}",
                "protocol": "modbus",
                "url": f"tcp://127.0.0.1:{modbus_port}",
                "poll": args.poll,
                "timeout": "1s",
                "tags": [
                    {"name": f"r{i}", "address": f"holding:{1000 + i}", "type": "uint16"}
                    for i in range(first, first + count)
                ],
            }
        )
    return {
        "gateway": {
            "id": "bench-gw",
            "site": "s",
            "area": "a",
            "line": "l",
            "state_dir": str(tmp / "state"),
        },
        "mqtt": mqtt_section(mqtt_port, args),
        **(
            {
                "sinks": [
                    {"name": f"mqtt{k}", "type": "mqtt", **mqtt_section(port, args)}
                    for k, port in enumerate(extra_brokers, start=2)
                ]
            }
            if extra_brokers
            else {}
        ),
        "outbox": {"synchronous": args.synchronous},
        "sources": sources,
    }


def parse_stop_line(log_path: Path) -> dict[str, Any]:
    """The gateway's last words: 'gateway stopped committed=N published=M', plus log levels."""
    out: dict[str, Any] = {"committed": None, "published": None, "levels": {}}
    levels: Counter[str] = Counter()
    errors: list[str] = []
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            levels["non-json"] += 1
            continue
        level = entry.get("level", "?")
        levels[level] += 1
        msg = str(entry.get("msg", ""))
        if level in ("warning", "error", "critical") and len(errors) < 10:
            errors.append(msg[:300])
        m = re.search(r"gateway stopped committed=(\d+) published=(\d+)", msg)
        if m:
            out["committed"], out["published"] = int(m.group(1)), int(m.group(2))
    out["levels"] = dict(levels)
    out["warnings_and_errors"] = errors
    return out


def run_baseline(
    client: str, mqtt_port: int, sub: RawSubscriber | PahoSubscriber, args: argparse.Namespace
) -> dict[str, Any]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.baseline",
            "--port",
            str(mqtt_port),
            "--client",
            client,
            "--seconds",
            str(args.baseline_seconds),
            "--window",
            str(args.inflight),
            "--size",
            str(args.payload_size),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    ps = psutil.Process(proc.pid)
    start_msgs = start_t = 0.0
    cpu0 = 0.0
    result: dict[str, Any] = {"client": client}
    assert proc.stdout is not None
    for line in proc.stdout:
        event = json.loads(line)
        now = time.monotonic()
        if event["event"] == "window_start":
            start_msgs, start_t = sub.snapshot()["base"][0], now
            with contextlib.suppress(psutil.Error):
                cpu0 = cpu_seconds(ps)
        elif event["event"] == "result":
            end_msgs = sub.snapshot()["base"][0]
            with contextlib.suppress(psutil.Error):
                cpu = cpu_seconds(ps) - cpu0
                result["publisher_cpu_ms_per_1k"] = round(cpu * 1e6 / max(event["acked"], 1), 1)
            result.update(
                publisher_acks_per_s=event["msgs_per_s"],
                subscriber_msgs_per_s=round((end_msgs - start_msgs) / (now - start_t), 1),
                payload_bytes=event["payload_bytes"],
                refused=event["refused"],
                seconds=event["seconds"],
            )
    rc = proc.wait(30)
    result["exit_status"] = rc
    return result


def wait_drained(
    sub: RawSubscriber | PahoSubscriber, quiet: float = 1.0, limit: float = 15.0
) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if time.monotonic() - sub.last_arrival() >= quiet:
            return
        time.sleep(0.2)


def run_once(
    tags: int, run_index: int, args: argparse.Namespace, profile: bool = False
) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix=f"edgegw-bench-{tags}-"))
    mqtt_port, modbus_port = free_port(), free_port()
    # --sinks N: N-1 more brokers, one more sink each; the subscriber counts the first only.
    extra_ports = [free_port() for _ in range(args.sinks - 1)]
    procs: dict[str, subprocess.Popen[Any]] = {}
    sub: RawSubscriber | PahoSubscriber | None = None
    sampler: Sampler | None = None
    result: dict[str, Any] = {"run": run_index, "tags": tags, "tmp": str(tmp)}
    try:
        # 1. broker, subscriber, simulator
        procs["mosquitto"] = start_mosquitto(tmp, mqtt_port)
        for k, port in enumerate(extra_ports, start=2):
            (tmp / f"broker{k}").mkdir()
            procs[f"mosquitto{k}"] = start_mosquitto(tmp / f"broker{k}", port)
        kinds = {TELEMETRY_PREFIX: "gw", BASE_PREFIX: "base"}
        sub_cls = RawSubscriber if args.subscriber == "raw" else PahoSubscriber
        sub = sub_cls("127.0.0.1", mqtt_port, kinds)
        sub.start()
        procs["simulator"] = start_modbus_simulator(tmp, modbus_port, tags)

        # 2. the gateway
        cfg = gateway_config(
            tmp, mqtt_port, modbus_port, tags, args.tags_per_source, args, extra_ports
        )
        config_path = tmp / "edgegw.yaml"
        config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        result["sources"] = len(cfg["sources"])
        result["sinks"] = 1 + len(cfg.get("sinks", []))
        gw_log = tmp / "gateway.log"
        started = time.monotonic()
        gateway_cmd = (
            shlex.split(args.gateway_cmd)
            if args.gateway_cmd
            else [str(Path(sys.executable).parent / "edgegw")]
        )
        procs["gateway"] = subprocess.Popen(
            [*gateway_cmd, "run", "-c", str(config_path)],
            cwd=tmp,
            stdout=(tmp / "gateway.out").open("wb"),
            stderr=gw_log.open("wb"),
        )
        gw = psutil.Process(procs["gateway"].pid)
        sampler = Sampler(gw)
        sampler.start()
        deadline = started + 60
        while sub.snapshot()["gw"][0] == 0:
            if procs["gateway"].poll() is not None:
                raise RuntimeError(
                    f"gateway exited with {procs['gateway'].returncode}: "
                    f"{gw_log.read_text(errors='replace')[-2000:]}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError("no telemetry from the gateway within 60 s")
            time.sleep(0.05)
        result["first_message_s"] = round(time.monotonic() - started, 2)
        time.sleep(args.warmup)

        # 3. the measured window
        # simulator, mosquitto (and mosquitto2.. with --sinks): everything but the gateway.
        others = {name: psutil.Process(p.pid) for name, p in procs.items() if name != "gateway"}
        others["bench+subscriber"] = psutil.Process()
        stats0, ts0 = outbox_stats(config_path)
        busy0, total0 = machine_busy()
        other0 = {n: cpu_seconds(p) for n, p in others.items()}
        g0 = cpu_seconds(gw)
        th0 = thread_cpu(gw)
        c0, t0 = sub.snapshot()["gw"], time.monotonic()
        spy: subprocess.Popen[Any] | None = None
        if profile:
            spy_out = tmp / "py-spy.txt"
            spy = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "py-spy"),
                    "record",
                    "-p",
                    str(gw.pid),
                    "-d",
                    str(int(args.seconds)),
                    "-r",
                    "100",
                    "-f",
                    "raw",
                    "-o",
                    str(spy_out),
                    "--nonblocking",
                    "--threads",
                ],
                stdout=subprocess.DEVNULL,
                stderr=(tmp / "py-spy.log").open("wb"),
            )
        series: list[int] = []
        t_next = t0 + 1.0
        last = c0[0]
        while (now := time.monotonic()) < t0 + args.seconds:
            time.sleep(min(t_next, t0 + args.seconds) - now)
            if time.monotonic() >= t_next:
                n = sub.snapshot()["gw"][0]
                series.append(n - last)
                last = n
                t_next += 1.0
            if procs["gateway"].poll() is not None:
                raise RuntimeError(f"gateway died during the window: {procs['gateway'].returncode}")
        c1, t1 = sub.snapshot()["gw"], time.monotonic()
        g1 = cpu_seconds(gw)
        th1 = thread_cpu(gw)
        other1 = {n: cpu_seconds(p) for n, p in others.items()}
        busy1, total1 = machine_busy()
        stats1, ts1 = outbox_stats(config_path)
        elapsed = t1 - t0
        values = c1[0] - c0[0]
        gw_cpu = g1 - g0
        cores = os.cpu_count() or 1
        result.update(
            window_s=round(elapsed, 3),
            values_per_s=round(values / elapsed, 1),
            distinct_ids_per_s=round((c1[1] - c0[1]) / elapsed, 1),
            offered_values_per_s=round(tags / args.poll_s, 1),
            gateway_cpu_s=round(gw_cpu, 3),
            gateway_cpu_percent=round(100 * gw_cpu / elapsed, 1),
            gateway_cpu_ms_per_1k_values=round(gw_cpu * 1e6 / values, 2) if values else None,
            peak_rss_mb_window=round(sampler.peak_rss(t0, t1) / 2**20, 1),
            outbox_commits_per_s=round((stats1["last_seq"] - stats0["last_seq"]) / (ts1 - ts0), 1),
            outbox_depth_start=stats0["depth"],
            outbox_depth_end=stats1["depth"],
            outbox_depth_growth_per_s=round((stats1["depth"] - stats0["depth"]) / (ts1 - ts0), 1),
            outbox_dropped=stats1["dropped"],
            outbox_file_mb_end=round(stats1["file_bytes"] / 2**20, 1),
            # Per sink, what it had not acknowledged at the end of the window: with --sinks,
            # whether the sinks the subscriber does not count kept up too.
            sink_waiting_end={
                name: sink.get("waiting") for name, sink in stats1.get("sinks", {}).items()
            },
            values_per_s_series=series,
            gateway_threads_cpu_percent={
                n: round(100 * (th1[n] - th0.get(n, 0.0)) / elapsed, 1)
                for n in th1
                if th1[n] - th0.get(n, 0.0) > 0.001 * elapsed
            },
            other_cpu_percent={
                n: round(100 * (other1[n] - other0[n]) / elapsed, 1) for n in others
            },
            machine_busy_percent=round(100 * cores * (busy1 - busy0) / (total1 - total0), 1),
        )
        # Machine busy (of cores*100 %) not explained by the processes we know: someone else.
        result["gateway_main_thread_cpu_percent"] = result["gateway_threads_cpu_percent"].get(
            "main", 0.0
        )
        known = result["gateway_cpu_percent"] + sum(result["other_cpu_percent"].values())
        result["unaccounted_cpu_percent"] = round(result["machine_busy_percent"] - known, 1)
        if spy is not None:
            spy.wait(args.seconds + 30)
            result["profile_raw"] = str(tmp / "py-spy.txt")

        # 4. stop: gateway first (must exit 0), then the simulator
        t_stop = time.monotonic()
        procs["gateway"].send_signal(signal.SIGTERM)
        try:
            rc = procs["gateway"].wait(args.stop_dump_after)
        except subprocess.TimeoutExpired:
            # Slow to stop: keep where it is stuck as evidence, then give it the rest.
            result["stop_stack_dump"] = py_spy_dump(gw.pid)
            with contextlib.suppress(subprocess.SubprocessError, ValueError):
                # Still committing after SIGTERM means a source is still polling.
                a, ta = outbox_stats(config_path)
                time.sleep(1.0)
                b, tb = outbox_stats(config_path)
                result["commits_per_s_after_sigterm"] = round(
                    (b["last_seq"] - a["last_seq"]) / (tb - ta), 1
                )
            try:
                rc = procs["gateway"].wait(max(0.0, 60 - args.stop_dump_after))
            except subprocess.TimeoutExpired:
                result["stop_stack_dump_at_kill"] = py_spy_dump(gw.pid)
                procs["gateway"].kill()
                rc = procs["gateway"].wait()
                result["stop_note"] = "did not exit within 60 s of SIGTERM: killed"
        result["gateway_exit_status"] = rc
        result["stop_seconds"] = round(time.monotonic() - t_stop, 2)
        sampler.stop()
        result["peak_rss_mb"] = round(sampler.peak_rss() / 2**20, 1)
        stop_process(procs.pop("simulator"))
        log_info = parse_stop_line(gw_log)
        result["gateway_committed"] = log_info["committed"]
        result["gateway_published"] = log_info["published"]
        result["gateway_log_levels"] = log_info["levels"]
        if log_info["warnings_and_errors"]:
            result["gateway_warnings"] = log_info["warnings_and_errors"]
        wait_drained(sub)
        gw_counts = sub.counts["gw"].summary()
        result["subscriber_total"] = gw_counts
        # Everything the gateway says it published must have reached the subscriber, from
        # seq 1 without holes (the forwarder sends in seq order).
        delivered_kept = None
        if gw_counts.get("seq_max") is not None:
            # Received by the subscriber but still in the outbox after the stop: sent again at
            # the next start (a duplicate the consumer drops by id), not counted as published.
            with contextlib.suppress(sqlite3.Error):
                db = sqlite3.connect(f"file:{tmp / 'state' / 'outbox.sqlite3'}?mode=ro", uri=True)
                try:
                    delivered_kept = db.execute(
                        "SELECT coalesce(sum(min(first_seq + count - 1, ?) - first_seq + 1), 0) "
                        "FROM segments WHERE first_seq <= ?",
                        (gw_counts["seq_max"], gw_counts["seq_max"]),
                    ).fetchone()[0]
                finally:
                    db.close()
        if log_info["published"] is not None:
            result["delivery_check"] = {
                "received_but_still_in_outbox": delivered_kept,
                "published_by_gateway": log_info["published"],
                "received_distinct": gw_counts["distinct_ids"],
                "received_minus_published": gw_counts["distinct_ids"] - log_info["published"],
                "seq_missing_in_range": gw_counts.get("seq_missing_in_range"),
                "seq_starts_at_1": gw_counts.get("seq_min") == 1,
            }

        # 5. baselines: same broker, same subscriber, gateway and simulator stopped
        result["baselines"] = {}
        for client in args.baselines:
            result["baselines"][client] = run_baseline(client, mqtt_port, sub, args)
            wait_drained(sub, quiet=0.5)
        if sub.error:
            result["subscriber_error"] = sub.error
        return result
    finally:
        if sampler is not None and sampler.is_alive():
            sampler.stop()
        if sub is not None:
            sub.stop()
        for name in ("gateway", "simulator", *(n for n in procs if n.startswith("mosquitto"))):
            stop_process(procs.get(name))
        if not args.keep_tmp and not profile:
            shutil.rmtree(tmp, ignore_errors=True)


# -- profile summary ---------------------------------------------------------------------------


# Where a sample belongs, by the first marker found in its stack (most specific first).
PROFILE_COMPONENTS = (
    ("sqlite worker thread (aiosqlite: SQL, fsync)", "_connection_worker_thread"),
    ("event loop idle (epoll wait)", "EpollSelector.select"),
    ("pipeline: TelemetryBuilder.build (RBE, key, envelope)", "TelemetryBuilder.build"),
    ("outbox: append (orjson, numbering, await)", "Outbox.append"),
    ("outbox: claim (event loop side)", "Outbox.claim"),
    ("outbox: delete_acknowledged (event loop side)", "Outbox.delete_acknowledged"),
    ("modbus source: decode", "ModbusSource._decode"),
    ("modbus source: pymodbus request/response", "pymodbus"),
    ("modbus source: other", "ModbusSource"),
    ("mqtt: paho read + PUBACK handling", "_Link._on_readable"),
    ("mqtt: paho write", "_Link._on_writable"),
    ("forwarder: publish (paho publish)", "MqttClient.publish"),
    ("forwarder: other", "Forwarder."),
    ("committer: other", "Gateway._commit_forever"),
)


def summarise_profile(
    raw_path: Path, seconds: float, rate: int = 100, top: int = 25
) -> dict[str, Any]:
    """py-spy raw (collapsed) stacks -> share of samples per component/function and thread."""
    self_c: Counter[str] = Counter()
    incl_c: Counter[str] = Counter()
    by_thread: Counter[str] = Counter()
    by_comp: Counter[str] = Counter()
    total = 0
    for line in raw_path.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        n = int(count_s)
        frames = stack.split(";")
        total += n
        by_thread[re.sub(r"^thread \(\d+\): ", "", frames[0])] += n
        for label, marker in PROFILE_COMPONENTS:
            if marker in stack:
                by_comp[label] += n
                break
        else:
            by_comp["other (asyncio machinery, callbacks)"] += n
        frames = [re.sub(r"\s*\((.*?/)?([^/]*?):\d+\)$", r" (\2)", f) for f in frames[1:]]
        if not frames:
            continue
        self_c[frames[-1]] += n
        for f in set(frames):
            incl_c[f] += n

    def share(c: Counter[str], k: int = top) -> list[list[Any]]:
        return [[f, round(100 * n / total, 1)] for f, n in c.most_common(k)]

    return {
        "samples": total,
        "note": "percent of non-idle samples (py-spy --threads, idle threads not sampled); "
        f"{rate} Hz for {seconds:g} s = {int(rate * seconds)} samples per fully busy thread",
        "threads_percent": share(by_thread),
        "components_percent": share(by_comp, 50),
        "self_percent": share(self_c),
        "inclusive_percent": share(incl_c),
    }


# -- driver ------------------------------------------------------------------------------------


METRICS = (
    "values_per_s",
    "distinct_ids_per_s",
    "gateway_cpu_percent",
    "gateway_main_thread_cpu_percent",
    "gateway_cpu_ms_per_1k_values",
    "peak_rss_mb",
    "peak_rss_mb_window",
    "outbox_commits_per_s",
    "outbox_depth_end",
    "outbox_depth_growth_per_s",
    "machine_busy_percent",
    "unaccounted_cpu_percent",
)


def summarise_config(
    tags: int, runs: list[dict[str, Any]], args: argparse.Namespace
) -> dict[str, Any]:
    med = {m: median([r.get(m) for r in runs]) for m in METRICS}
    for name in runs[0]["other_cpu_percent"]:  # simulator, mosquitto(2..), bench+subscriber
        med[f"{name}_cpu_percent"] = median([r["other_cpu_percent"].get(name) for r in runs])
    baselines: dict[str, Any] = {}
    for client in args.baselines:
        rows = [r["baselines"][client] for r in runs if client in r.get("baselines", {})]
        baselines[client] = {
            "runs": rows,
            "median_subscriber_msgs_per_s": median([b.get("subscriber_msgs_per_s") for b in rows]),
            "median_publisher_acks_per_s": median([b.get("publisher_acks_per_s") for b in rows]),
            "median_publisher_cpu_ms_per_1k": median(
                [b.get("publisher_cpu_ms_per_1k") for b in rows]
            ),
        }
    ratios = {
        f"edgegw_vs_{client}": (
            round(med["values_per_s"] / b["median_subscriber_msgs_per_s"], 3)
            if med["values_per_s"] and b["median_subscriber_msgs_per_s"]
            else None
        )
        for client, b in baselines.items()
    }
    return {
        "tags": tags,
        "sources": runs[0].get("sources"),
        "tags_per_source": args.tags_per_source,
        "sinks": args.sinks,
        "poll": args.poll,
        "offered_values_per_s": round(tags / args.poll_s, 1),
        "runs": runs,
        "median": med,
        "all_exit_0": all(r.get("gateway_exit_status") == 0 for r in runs),
        "baselines": baselines,
        "ratio": ratios,
    }


def print_table(configs: list[dict[str, Any]], baselines: list[str]) -> None:
    head = (
        f"{'tags':>6} {'src':>3} {'offered/s':>9} {'values/s':>9} {'commits/s':>9} "
        f"{'depth end':>9} {'gw CPU%':>7} {'ms CPU/1k':>9} {'RSS MB':>6} "
        + " ".join(f"{'base ' + b:>12}" for b in baselines)
        + " "
        + " ".join(f"{'ratio ' + b:>12}" for b in baselines)
        + "  exit0"
    )
    print(head)
    print("-" * len(head))
    for c in configs:
        m = c["median"]

        def fmt(v: Any, spec: str = ",.0f") -> str:
            return "n/a" if v is None else format(v, spec)

        line = (
            f"{c['tags']:>6} {c['sources']:>3} {fmt(c['offered_values_per_s']):>9} "
            f"{fmt(m['values_per_s']):>9} {fmt(m['outbox_commits_per_s']):>9} "
            f"{fmt(m['outbox_depth_end']):>9} {fmt(m['gateway_cpu_percent'], '.0f'):>7} "
            f"{fmt(m['gateway_cpu_ms_per_1k_values'], '.1f'):>9} {fmt(m['peak_rss_mb'], '.0f'):>6} "
            + " ".join(
                f"{fmt(c['baselines'][b]['median_subscriber_msgs_per_s']):>12}" for b in baselines
            )
            + " "
            + " ".join(f"{fmt(c['ratio'][f'edgegw_vs_{b}'], '.2f'):>12}" for b in baselines)
            + f"  {'yes' if c['all_exit_0'] else 'NO'}"
        )
        print(line)
    print("(medians over runs; values/s = telemetry messages received by the subscriber)")


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"duration like 100ms or 0.5s expected, not {text!r}")
    return float(m.group(1)) / (1000.0 if m.group(2) == "ms" else 1.0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.e2e",
        description="End-to-end throughput of edgegw (Modbus simulator -> gateway -> Mosquitto "
        "-> subscriber) with raw-client baselines on the same broker. See bench/README.md.",
    )
    p.add_argument("--tags", type=int, nargs="+", default=[1000, 10000], help="tag counts")
    p.add_argument("--seconds", type=float, default=15.0, help="measured window per run")
    p.add_argument("--runs", type=int, default=3, help="runs per tag count (medians reported)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds after the first message")
    p.add_argument("--poll", default="100ms", help="poll interval of every source")
    p.add_argument(
        "--tags-per-source",
        type=int,
        default=2500,
        help="tags per source (= per Modbus connection)",
    )
    p.add_argument("--inflight", type=int, default=100, help="mqtt.inflight and baseline window")
    p.add_argument(
        "--batch",
        type=int,
        default=0,
        metavar="N",
        help="mqtt.batch with max_values N (0: one message per value, the default)",
    )
    p.add_argument(
        "--sinks",
        type=int,
        default=1,
        metavar="N",
        help="MQTT sinks, each on its own Mosquitto: the mqtt: section and N-1 entries of "
        "sinks: (mqtt2, ...) with the same keys; the subscriber counts the first broker only",
    )
    p.add_argument(
        "--synchronous",
        choices=["full", "normal", "extra"],
        default="full",
        help="outbox.synchronous of the gateway",
    )
    p.add_argument(
        "--subscriber",
        choices=["raw", "paho"],
        default="raw",
        help="counting subscriber (paho tops out near 9-10k msg/s here)",
    )
    p.add_argument(
        "--baselines",
        nargs="*",
        choices=["paho", "edgegw"],
        default=["paho", "edgegw"],
        help="baseline publishers to run after the gateway in each run",
    )
    p.add_argument("--baseline-seconds", type=float, default=8.0)
    p.add_argument("--payload-size", type=int, default=300, help="baseline payload bytes")
    p.add_argument(
        "--profile",
        action="store_true",
        help="one extra run per tag count with py-spy on the gateway (not in medians)",
    )
    p.add_argument(
        "--gateway-cmd",
        default=None,
        help="command instead of .venv/bin/edgegw (gets 'run -c CONFIG' appended), "
        "e.g. to run an instrumented gateway",
    )
    p.add_argument(
        "--stop-dump-after",
        type=float,
        default=15.0,
        help="seconds after SIGTERM before a py-spy dump of a gateway still running",
    )
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dirs (logs, outbox)")
    p.add_argument(
        "--output-prefix",
        default="e2e",
        help="write bench/results/PREFIX-<timestamp>.json and PREFIX-latest.json",
    )
    p.add_argument("--no-save", action="store_true", help="do not write bench/results")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM -> SystemExit, so that every `finally` stops the processes this run started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.poll_s = parse_duration(args.poll)
    if args.sinks < 1:
        print("--sinks must be >= 1", file=sys.stderr)
        return 2
    if not os.path.exists(MOSQUITTO):
        print(f"{MOSQUITTO} not found (apt-get install mosquitto)", file=sys.stderr)
        return 2
    started = dt.datetime.now(dt.UTC)
    code_at_start = git_state()
    configs = []
    profiles: dict[str, Any] = {}
    for tags in args.tags:
        runs = []
        for i in range(args.runs):
            t = time.monotonic()
            r = run_once(tags, i + 1, args)
            runs.append(r)
            base = ", ".join(
                f"{k} {v.get('subscriber_msgs_per_s', 0):,.0f}/s" for k, v in r["baselines"].items()
            )
            print(
                f"tags={tags} run {i + 1}/{args.runs}: {r['values_per_s']:,.0f} values/s, "
                f"commits {r['outbox_commits_per_s']:,.0f}/s, depth {r['outbox_depth_end']:,}, "
                f"gw CPU {r['gateway_cpu_percent']}% "
                f"(loop {r['gateway_main_thread_cpu_percent']}%), "
                f"{r['gateway_cpu_ms_per_1k_values']} ms/1k, "
                f"RSS {r['peak_rss_mb']} MB, stop {r['stop_seconds']} s, "
                f"machine busy {r['machine_busy_percent']}% "
                f"(unaccounted {r['unaccounted_cpu_percent']}%), exit {r['gateway_exit_status']}; "
                f"baselines: {base} [{time.monotonic() - t:.0f} s]",
                flush=True,
            )
            check = r.get("delivery_check")
            if check:
                print(
                    f"  delivery: published {check['published_by_gateway']:,}, received "
                    f"{check['received_distinct']:,} distinct, seq holes "
                    f"{check['seq_missing_in_range']}, received but still in the outbox "
                    f"{check['received_but_still_in_outbox']}",
                    flush=True,
                )
            for key in (
                "stop_note",
                "commits_per_s_after_sigterm",
                "stop_stack_dump",
                "stop_stack_dump_at_kill",
            ):
                if key in r:
                    print(f"  {key}:\n{r[key]}", flush=True)
        configs.append(summarise_config(tags, runs, args))
        if args.profile:
            r = run_once(tags, 0, args, profile=True)
            raw = Path(r["profile_raw"])
            if raw.exists():
                summary = summarise_profile(raw, args.seconds)
                summary["values_per_s_while_profiled"] = r["values_per_s"]
                profiles[str(tags)] = summary
                if not args.no_save:
                    RESULTS.mkdir(parents=True, exist_ok=True)
                    shutil.copy(raw, RESULTS / f"{args.output_prefix}-pyspy-{tags}.txt")
                print(
                    f"profile tags={tags} ({summary['samples']} samples): threads "
                    f"{summary['threads_percent']}; by component:"
                )
                for name, pct in summary["components_percent"]:
                    print(f"  {pct:5.1f}%  {name}")
                print("  top self time:")
                for name, pct in summary["self_percent"][:12]:
                    print(f"  {pct:5.1f}%  {name}")
            if not args.keep_tmp:
                shutil.rmtree(r["tmp"], ignore_errors=True)
    print()
    print_table(configs, args.baselines)
    doc = {
        "benchmark": "edgegw e2e (modbus simulator -> edgegw -> mosquitto -> subscriber)",
        "started_utc": started.isoformat(timespec="seconds"),
        "finished_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", "bench.e2e", *sys.argv[1:]]),
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "mosquitto": mosquitto_version(),
        },
        "code": {"at_start": code_at_start, "at_end": git_state()},
        "settings": {k: v for k, v in vars(args).items() if k not in ("no_save", "keep_tmp")},
        "configs": configs,
    }
    if profiles:
        doc["profiles"] = profiles
    if not args.no_save:
        save(doc, started, args.output_prefix)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
