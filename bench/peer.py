"""Peer benchmark: ThingsBoard IoT Gateway on the same Modbus simulator as `bench.e2e`.

    .venv/bin/python -m bench.peer                                   # 100 1000 10000 tags, 3 runs
    .venv/bin/python -m bench.peer --tags 100 --seconds 5 --runs 1   # quick check (about 40 s)

The peer (PyPI `thingsboard-gateway` 3.8.5) runs from its own venv, `bench/.peer-venv`, made
and filled on the first run (`bench.peer_tb.ensure_peer_venv`). For each tag count, poll
interval and run, everything is started fresh in a temporary directory, on free ports:

1. a private Mosquitto (the same config as `bench.e2e`),
2. in this process: a counting subscriber on `#` (`PeerTelemetryCounter`: values inside the
   peer's `v1/gateway/telemetry` messages) and the responder to the peer's `getSessionLimits`
   RPC (`SessionLimitsResponder`; without it the peer publishes nothing),
3. the Modbus simulator with `--bench-registers N` (holding registers 1000.. change at every
   read, so every value read is a new value),
4. `thingsboard-gateway` with `TB_GW_CONFIG_DIR` = its config written by `bench.peer_tb`:
   N uint16 holding-register tags as telemetry, `--tags-per-device` tags per device, all
   devices on the simulator's one host:port (the peer then shares one Modbus connection);
   `--storage` memory (default) or sqlite (its durable storage, in the run's temp directory).

After the first telemetry message and `--warmup` seconds, a window of `--seconds` measures the
values/s received, the peer's CPU (all processes and threads of its tree, % of one core) and
peak RSS (sampled every 0.5 s). The peer is then stopped with SIGINT (its own shutdown path;
SIGKILL after `--stop-timeout`).

Results: a table on stdout, `bench/results/peer-<timestamp>.json` and `peer-latest.json`.
See bench/README.md ("bench.peer").
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import psutil

from bench.e2e import (
    MOSQUITTO,
    REPO,
    RESULTS,
    Sampler,
    cpu_seconds,
    free_port,
    git_state,
    machine_busy,
    median,
    mosquitto_version,
    parse_duration,
    start_modbus_simulator,
    start_mosquitto,
    stop_process,
)
from bench.peer_tb import (
    PEER_VENV,
    STORAGES,
    Layout,
    PeerTelemetryCounter,
    SessionLimitsResponder,
    ensure_peer_venv,
    peer_command,
    peer_versions,
    write_peer_config,
)

# -- processes ---------------------------------------------------------------------------------


class TreeSampler(Sampler):
    """`Sampler` over a process and its children: RSS summed at each sample, CPU summed.

    The peer is one process today; summing the tree keeps the figures honest if a connector
    or a pip install at start spawns helpers. Every process seen is added to `seen` (pid ->
    create time), so that whoever runs something next can wait until they are all gone.
    """

    def __init__(self, proc: psutil.Process, seen: dict[int, float], interval: float = 0.5) -> None:
        super().__init__(proc, interval)
        self.seen = seen
        with contextlib.suppress(psutil.Error):
            seen.setdefault(proc.pid, proc.create_time())

    def run(self) -> None:
        while not self._stop_evt.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
            except psutil.Error:
                return
            rss = cpu = 0.0
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    self.seen.setdefault(p.pid, p.create_time())
                    rss += p.memory_info().rss
                    cpu += cpu_seconds(p)
            self.samples.append((time.monotonic(), int(rss), cpu))
            self._stop_evt.wait(self.interval)


def tree_cpu_seconds(proc: psutil.Process) -> float:
    total = 0.0
    with contextlib.suppress(psutil.Error):
        for p in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += cpu_seconds(p)
    return total


def start_peer(tmp: Path) -> subprocess.Popen[Any]:
    (tmp / "logs").mkdir(exist_ok=True)  # the peer's file loggers default to ./logs
    env = {k: v for k, v in os.environ.items() if not k.startswith("TB_")}
    env["TB_GW_CONFIG_DIR"] = str(tmp / "config")
    log = (tmp / "peer.log").open("wb")
    # Own session: on a stop, SIGINT/SIGKILL go to the peer's whole process group.
    return subprocess.Popen(
        peer_command(),
        cwd=tmp,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_peer(proc: subprocess.Popen[Any] | None, timeout: float) -> tuple[int | None, float]:
    """SIGINT (the peer's own clean stop), SIGKILL after `timeout`; (exit status, seconds)."""
    if proc is None:
        return None, 0.0
    t0 = time.monotonic()
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    # Anything the peer left behind in its group (it should leave nothing).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, round(time.monotonic() - t0, 2)


def log_tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


# -- one run -----------------------------------------------------------------------------------


def wait_first_telemetry(
    counter: PeerTelemetryCounter,
    responder: SessionLimitsResponder,
    peer: subprocess.Popen[Any],
    tmp: Path,
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    while counter.snapshot_counts()[1] == 0:
        if peer.poll() is not None:
            raise RuntimeError(
                f"the peer exited with {peer.returncode} before publishing telemetry; end of "
                f"its log (peer.log, kept with --keep-tmp):\n{log_tail(tmp / 'peer.log')}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"no telemetry from the peer within {timeout:g} s (it publishes nothing before "
                f"its getSessionLimits RPC is answered; RPC requests seen: {responder.requests}); "
                f"end of its log (peer.log, kept with --keep-tmp):\n{log_tail(tmp / 'peer.log')}"
            )
        if counter.error or responder.error:
            raise RuntimeError(f"bench MQTT client failed: {counter.error or responder.error}")
        time.sleep(0.05)


def measure_window(
    counter: PeerTelemetryCounter,
    peer: subprocess.Popen[Any],
    others: dict[str, psutil.Process],
    peer_ps: psutil.Process,
    seconds: float,
) -> dict[str, Any]:
    """Counts, CPU and machine load over one window of `seconds`."""
    busy0, total0 = machine_busy()
    other0 = {n: cpu_seconds(p) for n, p in others.items()}
    cpu0 = tree_cpu_seconds(peer_ps)
    (m0, v0), t0 = counter.snapshot_counts(), time.monotonic()
    series: list[int] = []
    last = v0
    t_next = t0 + 1.0
    while (now := time.monotonic()) < t0 + seconds:
        time.sleep(max(0.0, min(t_next, t0 + seconds) - now))
        if time.monotonic() >= t_next:
            values = counter.snapshot_counts()[1]
            series.append(values - last)
            last = values
            t_next += 1.0
        if peer.poll() is not None:
            raise RuntimeError(f"the peer died during the window (exit {peer.returncode})")
    (m1, v1), t1 = counter.snapshot_counts(), time.monotonic()
    cpu1 = tree_cpu_seconds(peer_ps)
    other1 = {n: cpu_seconds(p) for n, p in others.items()}
    busy1, total1 = machine_busy()
    return {
        "t0": t0,
        "t1": t1,
        "messages": m1 - m0,
        "values": v1 - v0,
        "peer_cpu_s": cpu1 - cpu0,
        "series": series,
        "other_cpu_s": {n: other1[n] - other0[n] for n in others},
        "machine_busy_share": (busy1 - busy0) / (total1 - total0),
    }


def window_figures(w: dict[str, Any], tags: int, layout: Layout, poll_s: float) -> dict[str, Any]:
    elapsed = w["t1"] - w["t0"]
    values, messages, cpu = w["values"], w["messages"], w["peer_cpu_s"]
    cores = os.cpu_count() or 1
    out: dict[str, Any] = {
        "window_s": round(elapsed, 3),
        "values_per_s": round(values / elapsed, 1),
        "offered_values_per_s": round(tags / poll_s, 1),
        "messages_per_s": round(messages / elapsed, 1),
        "messages_per_s_per_device": round(messages / elapsed / layout.devices, 2),
        "values_per_message": round(values / messages, 1) if messages else None,
        "cpu_percent": round(100 * cpu / elapsed, 1),
        "cpu_ms_per_1k_values": round(cpu * 1e6 / values, 2) if values else None,
        "values_per_s_series": w["series"],
        "other_cpu_percent": {n: round(100 * s / elapsed, 1) for n, s in w["other_cpu_s"].items()},
        "machine_busy_percent": round(100 * cores * w["machine_busy_share"], 1),
    }
    out["values_vs_offered"] = round(out["values_per_s"] / out["offered_values_per_s"], 3)
    # Machine load (of cores x 100 %) not explained by the processes we know: another job.
    known = out["cpu_percent"] + sum(out["other_cpu_percent"].values())
    out["unaccounted_cpu_percent"] = round(out["machine_busy_percent"] - known, 1)
    return out


def run_once(
    tags: int, poll: str, run_index: int, args: argparse.Namespace, seen: dict[int, float]
) -> dict[str, Any]:
    """One run; `seen` gets every process of the peer's tree (pid -> create time), also when
    the run fails."""
    poll_s = parse_duration(poll)
    layout = Layout(tags, args.tags_per_device, args.layout, args.max_registers)
    tmp = Path(tempfile.mkdtemp(prefix=f"edgegw-peer-{tags}-"))
    mqtt_port, modbus_port = free_port(), free_port()
    procs: dict[str, subprocess.Popen[Any]] = {}
    counter: PeerTelemetryCounter | None = None
    responder: SessionLimitsResponder | None = None
    sampler: TreeSampler | None = None
    peer: subprocess.Popen[Any] | None = None
    result: dict[str, Any] = {"run": run_index, "tags": tags, "poll": poll, "tmp": str(tmp)}
    try:
        procs["mosquitto"] = start_mosquitto(tmp, mqtt_port)
        counter = PeerTelemetryCounter("127.0.0.1", mqtt_port)
        counter.start()
        responder = SessionLimitsResponder("127.0.0.1", mqtt_port)
        responder.start()
        procs["simulator"] = start_modbus_simulator(tmp, modbus_port, tags)
        write_peer_config(
            tmp / "config",
            mqtt_port,
            modbus_port,
            round(poll_s * 1000),
            layout,
            args.read_records,
            args.storage,
        )
        started = time.monotonic()
        peer = start_peer(tmp)
        peer_ps = psutil.Process(peer.pid)
        sampler = TreeSampler(peer_ps, seen)
        sampler.start()
        result["storage"] = args.storage
        wait_first_telemetry(counter, responder, peer, tmp, args.start_timeout)
        result["first_message_s"] = round(time.monotonic() - started, 2)
        time.sleep(args.warmup)

        others = {n: psutil.Process(p.pid) for n, p in procs.items()}
        others["bench+subscriber"] = psutil.Process()
        w = measure_window(counter, peer, others, peer_ps, args.seconds)
        result.update(window_figures(w, tags, layout, poll_s))
        result["peak_rss_mb_window"] = round(sampler.peak_rss(w["t0"], w["t1"]) / 2**20, 1)

        sampler.stop()
        result["peak_rss_mb"] = round(sampler.peak_rss() / 2**20, 1)
        result["peer_exit_status"], result["stop_seconds"] = stop_peer(peer, args.stop_timeout)
        peer = None
        if result["peer_exit_status"] == -signal.SIGKILL:
            result["stop_note"] = f"still running {args.stop_timeout:g} s after SIGINT: killed"
        result.update(
            devices=layout.devices,
            devices_seen=len(counter.devices),
            modbus_requests_per_poll=layout.requests_per_poll(),
            rpc_requests=[{"method": m, "answered": a} for m, a in responder.requests],
            other_topics=dict(counter.other_topics),
            bad_payloads=counter.bad_payloads,
            mean_payload_bytes=round(counter.payload_bytes / counter.messages, 1)
            if counter.messages
            else None,
            peer_log_tail=log_tail(tmp / "peer.log", 1500) or None,
        )
        return result
    finally:
        if sampler is not None and sampler.is_alive():
            sampler.stop()
        stop_peer(peer, args.stop_timeout)
        for sub in (counter, responder):
            if sub is not None:
                sub.stop()
        for name in ("simulator", "mosquitto"):
            stop_process(procs.get(name))
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)


# -- driver ------------------------------------------------------------------------------------


METRICS = (
    "values_per_s",
    "offered_values_per_s",
    "values_vs_offered",
    "cpu_percent",
    "cpu_ms_per_1k_values",
    "peak_rss_mb",
    "peak_rss_mb_window",
    "messages_per_s",
    "messages_per_s_per_device",
    "values_per_message",
    "machine_busy_percent",
    "unaccounted_cpu_percent",
)


def summarise_config(
    tags: int, poll: str, runs: list[dict[str, Any]], args: argparse.Namespace
) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]
    layout = Layout(tags, args.tags_per_device, args.layout, args.max_registers)
    med: dict[str, Any] = {m: median([r.get(m) for r in ok]) for m in METRICS}
    for name in ("simulator", "mosquitto", "bench+subscriber"):
        med[f"{name}_cpu_percent"] = median([r["other_cpu_percent"][name] for r in ok])
    return {
        "tags": tags,
        "poll": poll,
        "storage": args.storage,
        "devices": layout.devices,
        "tags_per_device": args.tags_per_device,
        "layout": args.layout,
        "max_registers_per_request": args.max_registers if args.layout == "range" else 1,
        "modbus_requests_per_poll": layout.requests_per_poll(),
        "runs": runs,
        "failed_runs": len(runs) - len(ok),
        "median": med,
    }


def fmt(v: Any, spec: str = ",.0f") -> str:
    return "n/a" if v is None else format(v, spec)


def print_table(configs: list[dict[str, Any]]) -> None:
    head = (
        f"{'tags':>6} {'poll':>6} {'dev':>4} {'offered/s':>9} {'values/s':>9} {'msgs/s':>7} "
        f"{'msg/s/dev':>9} {'CPU%':>5} {'ms/1k':>6} {'RSS MB':>6} {'failed':>6}"
    )
    print(head)
    print("-" * len(head))
    for c in configs:
        m = c["median"]
        print(
            f"{c['tags']:>6} {c['poll']:>6} {c['devices']:>4} {fmt(m['offered_values_per_s']):>9} "
            f"{fmt(m['values_per_s']):>9} {fmt(m['messages_per_s']):>7} "
            f"{fmt(m['messages_per_s_per_device'], '.1f'):>9} {fmt(m['cpu_percent'], '.0f'):>5} "
            f"{fmt(m['cpu_ms_per_1k_values'], '.1f'):>6} {fmt(m['peak_rss_mb'], '.0f'):>6} "
            f"{c['failed_runs']:>6}"
        )
    storage = configs[0]["storage"] if configs else "?"
    print(
        f"(medians over runs; {storage} storage; values/s = values inside the peer's "
        "v1/gateway/telemetry messages received per second; CPU = the peer's process tree, % of "
        "one core)"
    )


def print_run(r: dict[str, Any], runs: int, seconds: float) -> None:
    if "error" in r:
        print(f"tags={r['tags']} poll={r['poll']} run {r['run']}/{runs}: FAILED\n{r['error']}")
        return
    print(
        f"tags={r['tags']} poll={r['poll']} run {r['run']}/{runs}: {r['values_per_s']:,.0f} "
        f"values/s of {r['offered_values_per_s']:,.0f} offered, {r['messages_per_s']:,.1f} msgs/s "
        f"({r['messages_per_s_per_device']} per device, {r['devices_seen']}/{r['devices']} "
        f"devices seen), CPU {r['cpu_percent']}%, RSS {r['peak_rss_mb']} MB, first message "
        f"after {r['first_message_s']} s, machine busy {r['machine_busy_percent']}% "
        f"(unaccounted {r['unaccounted_cpu_percent']}%), stop {r['stop_seconds']} s "
        f"exit {r['peer_exit_status']} [{seconds:.0f} s]",
        flush=True,
    )


def duration_text(text: str) -> str:
    """An argparse type: checks a duration like 100ms (error before anything starts), keeps it."""
    parse_duration(text)
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.peer",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Throughput, CPU and RSS of the peer, ThingsBoard IoT Gateway 3.8.5 "
        "(thingsboard-gateway, in its own venv bench/.peer-venv, created on the first run), "
        "reading N uint16 holding registers from the project's Modbus simulator and publishing "
        "them to a private Mosquitto. Counts the values in its v1/gateway/telemetry messages. "
        "See bench/README.md.",
    )
    p.add_argument("--tags", type=int, nargs="+", default=[100, 1000, 10000], help="tag counts")
    p.add_argument(
        "--poll",
        type=duration_text,
        nargs="+",
        default=["100ms"],
        help="poll intervals (pollPeriod of every device), e.g. 100ms 1s. 100ms is the peer's "
        "fastest useful one: its connector's request and conversion loops sleep 100 ms",
    )
    p.add_argument("--seconds", type=float, default=10.0, help="measured window per run")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds after the first message")
    p.add_argument("--runs", type=int, default=3, help="runs per configuration (medians quoted)")
    p.add_argument(
        "--tags-per-device",
        type=int,
        default=100,
        help="tags per peer device (a device = one Modbus slave entry; all share the simulator's "
        "connection). The peer sends at most about 10 messages/s per device",
    )
    p.add_argument(
        "--layout",
        choices=["range", "per-tag"],
        default="range",
        help="range: one wide-range address entry per device ('1000-1099'), read in requests of "
        "--max-registers (the peer's only register batching); per-tag: one timeseries entry and "
        "one Modbus request per tag, as in the peer's example configs",
    )
    p.add_argument(
        "--max-registers",
        type=int,
        default=125,
        help="maxRegistersPerRequest of the range entries (peer default 16, Modbus limit 125)",
    )
    p.add_argument(
        "--storage",
        choices=STORAGES,
        default="memory",
        help="the peer's event storage: memory (fastest, lost on a crash) or sqlite (durable, "
        "in the run's temp directory: the counterpart of edgegw's outbox)",
    )
    p.add_argument(
        "--read-records",
        type=int,
        default=1000,
        help="events packed per send round: storage.read_records_count (memory; shipped "
        "config: 100) or storage.max_read_records_count (sqlite; its default 1000)",
    )
    p.add_argument(
        "--start-timeout", type=float, default=120.0, help="seconds to wait for the first value"
    )
    p.add_argument(
        "--stop-timeout",
        type=float,
        default=10.0,
        help="seconds after SIGINT before SIGKILL (the peer's Modbus connector waits up to 5 s "
        "per device to disconnect, so with many devices it is killed)",
    )
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dirs (configs, logs)")
    p.add_argument(
        "--output-prefix",
        default="peer",
        help="write bench/results/PREFIX-<timestamp>.json and PREFIX-latest.json",
    )
    p.add_argument("--no-save", action="store_true", help="do not write bench/results")
    return p


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    configs = []
    for tags in args.tags:
        for poll in args.poll:
            runs = []
            for i in range(args.runs):
                t = time.monotonic()
                seen: dict[int, float] = {}
                try:
                    r = run_once(tags, poll, i + 1, args, seen)
                except (RuntimeError, OSError, psutil.Error) as exc:
                    # OSError: a bench MQTT client could not connect; psutil: the peer vanished.
                    r = {"run": i + 1, "tags": tags, "poll": poll, "error": str(exc)}
                # [pid, create time] of every process of the peer's tree: `bench.suite` waits
                # until they are gone before it measures anything else.
                r["peer_processes"] = [[pid, at] for pid, at in sorted(seen.items())]
                runs.append(r)
                print_run(r, args.runs, time.monotonic() - t)
            configs.append(summarise_config(tags, poll, runs, args))
    return configs


def save(doc: dict[str, Any], prefix: str, started: dt.datetime) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    data = orjson.dumps(doc, option=orjson.OPT_INDENT_2)
    (RESULTS / f"{prefix}-{stamp}.json").write_bytes(data)
    (RESULTS / f"{prefix}-latest.json").write_bytes(data)
    print(f"\nwrote {RESULTS / f'{prefix}-{stamp}.json'} and {prefix}-latest.json")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM -> SystemExit, so that every `finally` stops the processes this run started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not 1 <= args.max_registers <= 125:
        print("--max-registers must be 1..125 (the Modbus limit)", file=sys.stderr)
        return 2
    if not os.path.exists(MOSQUITTO):
        print(f"{MOSQUITTO} not found (apt-get install mosquitto)", file=sys.stderr)
        return 2
    try:
        ensure_peer_venv()
    except RuntimeError as exc:
        print(f"cannot set up the peer venv: {exc}", file=sys.stderr)
        return 2
    started = dt.datetime.now(dt.UTC)
    code_at_start = git_state()
    configs = run_all(args)
    print()
    print_table(configs)
    doc = {
        "benchmark": "peer: modbus simulator -> ThingsBoard IoT Gateway -> mosquitto -> subscriber",
        "started_utc": started.isoformat(timespec="seconds"),
        "finished_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", "bench.peer", *sys.argv[1:]]),
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "mosquitto": mosquitto_version(),
        },
        "peer": {"venv": str(PEER_VENV.relative_to(REPO)), "versions": peer_versions()},
        "code": {"at_start": code_at_start, "at_end": git_state()},
        "settings": {k: v for k, v in vars(args).items() if k not in ("no_save", "keep_tmp")},
        "configs": configs,
    }
    if not args.no_save:
        save(doc, args.output_prefix, started)
    return 1 if any(c["failed_runs"] for c in configs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
