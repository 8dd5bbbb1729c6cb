"""The benchmark suite in one command: the speed targets of issue 16, one summary, one chart.

    .venv/bin/python -m bench.suite                   # full suite, medians of 3 runs
    .venv/bin/python -m bench.suite --quick           # smoke run of every scenario
    .venv/bin/python -m bench.suite --only batch two-sinks
    .venv/bin/python -m bench.suite --only latency steady-opcua   # issue 6's, for context
    .venv/bin/python -m bench.suite --no-run          # summary and chart of the last results
    .venv/bin/python -m bench.suite --help            # the scenarios and their targets

Each scenario runs the existing modules (`bench.e2e`, `bench.catchup`, `bench.peer`,
`bench.opcua`; the two-sinks and peer scenarios several of them) as child processes, each with
its own `--output-prefix` (`suite-e2e`, ...), so the suite's files never mix with ad-hoc runs.
Their output is streamed; then their `bench/results/<prefix>-latest.json` is read and reduced to
rows: the figure, the ceiling measured in the same run, their ratio, the target and whether it
is met. The summary goes to
`bench/results/suite-<UTC>.json` and `suite-latest.json`, a Markdown table to stdout and
`suite-latest.md`, the chart (`bench.chart`) to `suite-latest.png`. `--quick` uses the prefix
`suite-quick` so that a smoke run never overwrites the full suite's results.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import importlib.util
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
ONE_MILLION = 1_000_000


# -- plan and rows ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What the user asked for, as the scenarios' argument builders need it."""

    quick: bool
    runs: int
    fast_poll: str
    prefix: str


@dataclass(frozen=True)
class Target:
    """One condition of a row: `on` the figure or the ratio, `op` `>=` or `<=`."""

    on: str
    op: str
    value: float

    def holds(self, figure: float | None, ratio: float | None) -> bool:
        actual = figure if self.on == "figure" else ratio
        if actual is None:
            return False  # a figure the scenario should have produced and did not
        return actual >= self.value if self.op == ">=" else actual <= self.value


@dataclass
class Row:
    """One line of the table: a figure of one scenario against its ceiling and target."""

    scenario: str
    metric: str  # stable name for bench.chart: throughput, cpu, rss, drain_s, ...
    label: str
    figure: float | None
    unit: str
    detail: str = ""
    ceiling: float | None = None
    ceiling_unit: str = ""
    ceiling_label: str = ""
    ratio: float | None = None
    target: str = ""
    targets: list[Target] = field(default_factory=list)
    # Reasons the figure cannot be trusted (e.g. the backlog was not fully delivered): the
    # row is then not met whatever the number says.
    problems: list[str] = field(default_factory=list)
    # Secondary numbers for bench.chart (p50 next to a p99, the drain rate next to seconds).
    extras: dict[str, float | None] = field(default_factory=dict)
    short: str = ""  # a few words for bench.chart's axis when the label is too long
    met: bool | None = None

    def judge(self) -> Row:
        if not self.targets:
            self.met = None
        else:
            self.met = not self.problems and all(
                t.holds(self.figure, self.ratio) for t in self.targets
            )
        return self


def dig(doc: Any, *path: str | int) -> Any:
    """doc[path[0]][path[1]]..., or None as soon as a step is missing or of the wrong type:
    the scenarios' JSON is read defensively (other modules own it and may change it)."""
    for step in path:
        if isinstance(step, int) and isinstance(doc, list) and -len(doc) <= step < len(doc):
            doc = doc[step]
        elif isinstance(step, str) and isinstance(doc, dict):
            doc = doc.get(step)
        else:
            return None
    return doc


def number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def fmt(value: float | None, spec: str = "") -> str:
    if value is None:
        return "n/a"
    if not spec:
        spec = ",.0f" if abs(value) >= 100 else ".1f"
    return format(value, spec)


# -- the scenarios: arguments --------------------------------------------------------------------


def e2e_timing(plan: Plan, seconds: int) -> list[str]:
    if plan.quick:
        return ["--seconds", "5", "--warmup", "2", "--baseline-seconds", "4"]
    return ["--seconds", str(seconds)]


# Per message, the judged load: 2,000 tags at --fast-poll (50 ms: 40,000 values/s offered, more
# than raw paho sends here, 19,000-27,000 msgs/s, so the ratio is the gateway's own limit).
PER_MESSAGE_TAGS = 2000


def per_message_args(plan: Plan) -> list[str]:
    # Only the judged tag count: 5,000 and 10,000 tags would add about 45 s per run each (over
    # 4 minutes at 3 runs) for figures no target reads (earlier results show them as context).
    return [
        "--tags",
        str(PER_MESSAGE_TAGS),
        "--poll",
        plan.fast_poll,
        *e2e_timing(plan, 15),
        "--runs",
        str(plan.runs),
        "--baselines",
        "paho",
    ]


def batch_args(plan: Plan) -> list[str]:
    # 10,000 churning tags at 50 ms offer 200,000 values/s: more than the target and the ceiling.
    return [
        "--tags",
        "10000",
        "--poll",
        plan.fast_poll,
        "--batch",
        "500",
        *e2e_timing(plan, 15),
        "--runs",
        str(plan.runs),
        "--baselines",
        "paho",
    ]


def steady_modbus_args(plan: Plan) -> list[str]:
    timing = ["--seconds", "10", "--warmup", "3"] if plan.quick else ["--seconds", "30"]
    # No baseline: at 1 s the question is the cost of a steady load, not a ceiling of MQTT.
    # Batched, as the README advises from a few thousand tags on (per message, 10,000 values/s
    # is most of a core in paho alone: see the per-message profile).
    return [
        "--tags",
        "10000",
        "--poll",
        "1s",
        "--batch",
        "500",
        *timing,
        "--runs",
        str(plan.runs),
        "--baselines",
    ]


# Two sinks against one: the steady plant load (10,000 tags at 1 s, batched), which one sink
# carries well below a core. Under saturation the CPU per value would also count the backlog
# that grows (read and committed, not yet sent), and the comparison would mean little.
SINKS_TAGS, SINKS_POLL = "10000", "1s"


def sinks_args(sinks: int) -> Callable[[Plan], list[str]]:
    def args(plan: Plan) -> list[str]:
        timing = ["--seconds", "10", "--warmup", "3"] if plan.quick else ["--seconds", "15"]
        return [
            "--tags",
            SINKS_TAGS,
            "--poll",
            SINKS_POLL,
            "--batch",
            "500",
            "--sinks",
            str(sinks),
            *timing,
            "--runs",
            str(plan.runs),
            "--baselines",
        ]

    return args


def opcua_args(items: int, plan: Plan, *extra: str) -> list[str]:
    timing = ["--seconds", "10", "--warmup", "5"] if plan.quick else ["--seconds", "30"]
    return ["--items", str(items), "--interval", "1s", *timing, "--runs", str(plan.runs), *extra]


# Latency: the simulator still changes each of the 1,000 items once a second, but the gateway
# (and the raw client it is compared with) subscribe at 20 ms, as a user who cares about
# latency would: value change -> subscriber then includes at most one 20 ms publishing cycle.
LATENCY_SOURCE_INTERVAL = "20ms"
# A steady flow: 50 changes of 20 values a second (the simulator's default, 4 bursts of 250
# values at one instant, is a burst test: each burst leaves as 250 messages one after another).
LATENCY_SLICE = "20"


def catchup_args(plan: Plan) -> list[str]:
    if plan.quick:
        # A tenth of the backlog; the drain targets are scaled to it in the rows.
        return [
            "--backlog",
            "100000",
            "--after",
            "2",
            "--baseline-seconds",
            "4",
            "--runs",
            str(plan.runs),
        ]
    return ["--backlog", str(ONE_MILLION), "--runs", str(plan.runs)]


def peer_tags(plan: Plan) -> list[str]:
    return ["10000"] if plan.quick else ["1000", "10000"]


def peer_args(storage: str) -> Callable[[Plan], list[str]]:
    def args(plan: Plan) -> list[str]:
        timing = ["--seconds", "5", "--warmup", "3"] if plan.quick else ["--seconds", "10"]
        # 100 ms: the peer's fastest useful poll (its connector loops sleep 100 ms).
        return [
            "--tags",
            *peer_tags(plan),
            "--poll",
            "100ms",
            "--storage",
            storage,
            *timing,
            "--runs",
            str(plan.runs),
        ]

    return args


def peer_edgegw_args(plan: Plan) -> list[str]:
    timing = ["--seconds", "5", "--warmup", "2"] if plan.quick else ["--seconds", "10"]
    return [
        "--tags",
        *peer_tags(plan),
        "--poll",
        "100ms",
        "--batch",
        "500",
        *timing,
        "--runs",
        str(plan.runs),
        "--baselines",
    ]


# -- the scenarios: rows from their JSON ---------------------------------------------------------


def e2e_configs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    configs = doc.get("configs")
    return [c for c in configs if isinstance(c, dict)] if isinstance(configs, list) else []


def e2e_throughput_row(name: str, cfg: dict[str, Any], targets: list[Target], text: str) -> Row:
    values = number(dig(cfg, "median", "values_per_s"))
    paho = number(dig(cfg, "baselines", "paho", "median_subscriber_msgs_per_s"))
    offered = number(cfg.get("offered_values_per_s"))
    cpu = number(dig(cfg, "median", "gateway_cpu_percent"))
    detail = f"offered {fmt(offered)}/s, gateway CPU {fmt(cpu, '.0f')} %"
    if cfg.get("all_exit_0") is False:
        detail += ", a stop did not exit 0"
    return Row(
        scenario=name,
        metric="throughput",
        label=f"{fmt(number(cfg.get('tags')))} tags @ {cfg.get('poll')}",
        figure=values,
        unit="values/s",
        detail=detail,
        ceiling=paho,
        ceiling_unit="msgs/s",
        ceiling_label="raw paho QoS 1",
        ratio=ratio(values, paho),
        target=text,
        targets=targets,
    )


def cpu_per_value(cfg: dict[str, Any] | None) -> float | None:
    # bench.e2e's gateway_cpu_ms_per_1k_values: ms of CPU per 1,000 values = µs per value.
    return number(dig(cfg, "median", "gateway_cpu_ms_per_1k_values"))


def per_message_rows(doc: dict[str, Any], plan: Plan) -> list[Row]:
    rows = []
    for cfg in e2e_configs(doc):
        if cfg.get("tags") == PER_MESSAGE_TAGS:
            targets, text = [Target("ratio", ">=", 0.8)], ">= 0.8 x raw paho"
        else:
            targets, text = [], f"(context: judged at {fmt(PER_MESSAGE_TAGS)} tags)"
        rows.append(e2e_throughput_row("per-message", cfg, targets, text))
    return rows


BATCH_VALUES_PER_S = 60_000
BATCH_PAHO_RATIO = 3.0
BATCH_US_PER_VALUE = 16.0


def batch_rows(doc: dict[str, Any], plan: Plan) -> list[Row]:
    rows = []
    for cfg in e2e_configs(doc):
        speed = [
            Target("figure", ">=", BATCH_VALUES_PER_S),
            Target("ratio", ">=", BATCH_PAHO_RATIO),
        ]
        text = f">= {fmt(BATCH_VALUES_PER_S)} values/s and >= {BATCH_PAHO_RATIO:g} x raw paho"
        rows.append(e2e_throughput_row("batch", cfg, speed, text))
        cpu = Row(
            scenario="batch",
            metric="cpu_per_value",
            label=f"{fmt(number(cfg.get('tags')))} tags @ {cfg.get('poll')}: gateway CPU per value",
            figure=cpu_per_value(cfg),
            unit="µs",
            detail=f"gateway CPU {fmt(number(dig(cfg, 'median', 'gateway_cpu_percent')), '.0f')} %",
            target=f"<= {BATCH_US_PER_VALUE:g} µs per value",
            targets=[Target("figure", "<=", BATCH_US_PER_VALUE)],
            short="batched",
        )
        rows.append(cpu)
    return rows


def cpu_rss_rows(
    name: str,
    what: str,
    cpu: float | None,
    rss: float | None,
    raw_cpu: float | None,
    limits: tuple[float, float] | None,
) -> list[Row]:
    """Gateway CPU and peak RSS at a steady load; `limits` (CPU %, RSS MB) or None for a
    scenario shown for context only."""
    cpu_row = Row(
        scenario=name,
        metric="cpu",
        label=f"{what}: gateway CPU",
        figure=cpu,
        unit="% of a core",
        target=f"<= {limits[0]:g} % of a core" if limits else "(context)",
        targets=[Target("figure", "<=", limits[0])] if limits else [],
    )
    if raw_cpu is not None:
        # The bare asyncua client on the same server: what subscribing alone costs.
        cpu_row.ceiling, cpu_row.ceiling_unit = raw_cpu, "% of a core"
        cpu_row.ceiling_label, cpu_row.ratio = "raw asyncua client", ratio(cpu, raw_cpu)
    rss_row = Row(
        scenario=name,
        metric="rss",
        label=f"{what}: gateway peak RSS",
        figure=rss,
        unit="MB",
        target=f"<= {limits[1]:g} MB" if limits else "(context)",
        targets=[Target("figure", "<=", limits[1])] if limits else [],
    )
    return [cpu_row, rss_row]


def delivered_row(
    name: str, what: str, delivered: float | None, ceiling: float | None, label: str
) -> Row:
    # No target of its own: it says whether the CPU and RSS above were measured under the
    # full load (a gateway that drops values would look cheap).
    return Row(
        scenario=name,
        metric="delivered",
        label=f"{what}: delivered",
        figure=delivered,
        unit="values/s",
        ceiling=ceiling,
        ceiling_unit="values/s",
        ceiling_label=label,
        ratio=ratio(delivered, ceiling),
        target="(context: should be ~1.0 x offered)",
    )


STEADY_MODBUS_LIMITS = (15.0, 70.0)  # % of one core, MB


def steady_modbus_rows(doc: dict[str, Any], plan: Plan) -> list[Row]:
    rows: list[Row] = []
    for cfg in e2e_configs(doc):
        what = f"Modbus {fmt(number(cfg.get('tags')))} tags @ {cfg.get('poll')}"
        cpu = number(dig(cfg, "median", "gateway_cpu_percent"))
        rss = number(dig(cfg, "median", "peak_rss_mb"))
        rows += cpu_rss_rows("steady-modbus", what, cpu, rss, None, STEADY_MODBUS_LIMITS)
        values = number(dig(cfg, "median", "values_per_s"))
        offered = number(cfg.get("offered_values_per_s"))
        rows.append(delivered_row("steady-modbus", what, values, offered, "offered"))
    return rows


def opcua_what(doc: dict[str, Any]) -> str:
    items = number(dig(doc, "summary", "items"))
    interval = number(dig(doc, "summary", "interval_s"))
    return f"OPC UA {fmt(items)} items @ {fmt(interval, 'g')} s"


def steady_opcua_rows(doc: dict[str, Any], plan: Plan) -> list[Row]:
    med = dig(doc, "summary", "median")
    what = opcua_what(doc)
    cpu = number(dig(med, "gateway_cpu_percent"))
    rss = number(dig(med, "peak_rss_mb"))
    raw_cpu = number(dig(doc, "summary", "baseline_median", "client_cpu_percent"))
    rows = cpu_rss_rows("steady-opcua", what, cpu, rss, raw_cpu, None)
    delivered = number(dig(med, "delivered_per_s"))
    writes = number(dig(med, "server_writes_per_s"))
    rows.append(delivered_row("steady-opcua", what, delivered, writes, "server writes"))
    return rows


def latency_rows(doc: dict[str, Any], plan: Plan) -> list[Row]:
    med = dig(doc, "summary", "median")
    what = opcua_what(doc)
    delivered = number(dig(med, "delivered_per_s"))
    interval = dig(doc, "settings", "source_interval") or "1s"
    raw_p99 = number(dig(doc, "summary", "baseline_median", "latency_p99_ms"))
    e2e_p99 = number(dig(med, "latency_p99_ms"))
    source = Row(
        scenario="latency",
        metric="source_latency_p99",
        label=f"{what}, subscribed at {interval}: value change (source timestamp) -> "
        "subscriber p99",
        figure=e2e_p99,
        unit="ms",
        detail=f"p50 {fmt(number(dig(med, 'latency_p50_ms')))} ms at {fmt(delivered)} values/s",
        ceiling=raw_p99,
        ceiling_unit="ms",
        ceiling_label="raw asyncua client, same subscription",
        ratio=ratio(e2e_p99, raw_p99),
        target="(context; issue 6: p99 <= 50 ms)",
        extras={"p50": number(dig(med, "latency_p50_ms"))},
    )
    added = Row(
        scenario="latency",
        metric="gateway_latency_p99",
        label=f"{what}: latency added by the gateway (notification received -> subscriber) p99",
        figure=number(dig(med, "gateway_internal_p99_ms")),
        unit="ms",
        detail=f"p50 {fmt(number(dig(med, 'gateway_internal_p50_ms')))} ms",
        target="(context)",
        extras={"p50": number(dig(med, "gateway_internal_p50_ms"))},
    )
    return [source, added]


# Issue 16, for 1,000,000 values of backlog; scaled linearly for a smaller --backlog (--quick,
# where the gateway's start-up then weighs more: indicative only).
CATCHUP_TARGET_S = {"batch": 5.0, "message": 50.0}
CATCHUP_BYTES_PER_VALUE = 60.0


def drain_row(mode: dict[str, Any], backlog: float) -> Row:
    name = str(dig(mode, "mode"))
    per_million = CATCHUP_TARGET_S.get(name)
    limit = round(per_million * backlog / ONE_MILLION, 2) if per_million else None
    text = "(context)" if limit is None else f"<= {fmt(limit, 'g')} s"
    if limit is not None and backlog != ONE_MILLION:
        text += f" ({per_million:g} s per 1 M)"
    med = dig(mode, "median")
    row = Row(
        scenario="catchup",
        metric="drain_s",
        label=f"{fmt(backlog)} values backlog, {name} mode: drain",
        figure=number(dig(med, "drain_s_from_start")),
        unit="s",
        detail=f"{fmt(number(dig(med, 'drain_values_per_s')))} values/s",
        ceiling=number(dig(med, "ceiling_msgs_per_s")),
        ceiling_unit="msgs/s",
        ceiling_label="raw paho QoS 1",
        ratio=number(dig(med, "ratio_values_vs_ceiling")),
        target=text,
        targets=[] if limit is None else [Target("figure", "<=", limit)],
        extras={"values_per_s": number(dig(med, "drain_values_per_s")), "backlog": backlog},
        short=name,
    )
    if dig(mode, "all_drained") is False:
        row.problems.append("a run did not drain the backlog")
    if dig(mode, "all_delivered") is False:
        row.problems.append("backlog values missing at the subscriber")
    return row


def backlog_on_disk(doc: dict[str, Any]) -> tuple[float | None, float | None]:
    """(bytes per value, file MB): bench.catchup's `outbox_on_disk`; for results older than
    it, the same from each run's fill (file MB / values held)."""
    summary = dig(doc, "outbox_on_disk")
    if isinstance(summary, dict):
        return number(summary.get("bytes_per_value")), number(summary.get("file_mb"))
    per_value, sizes = [], []
    for mode in doc.get("modes") or []:
        for run in dig(mode, "runs") or []:
            size, rows = number(dig(run, "fill", "file_mb")), number(dig(run, "fill", "rows"))
            if size is not None and rows:
                per_value.append(size * 2**20 / rows)
                sizes.append(size)
    if not per_value:
        return None, None
    return round(statistics.median(per_value), 1), statistics.median(sizes)


def disk_row(doc: dict[str, Any], backlog: float) -> Row:
    per_value, file_mb = backlog_on_disk(doc)
    return Row(
        scenario="catchup",
        metric="bytes_per_value",
        label=f"{fmt(backlog)} values backlog: outbox on disk per value (broker away)",
        figure=per_value,
        unit="bytes",
        detail=f"{fmt(file_mb)} MB file" if file_mb is not None else "",
        target=f"<= {CATCHUP_BYTES_PER_VALUE:g} bytes per value",
        targets=[Target("figure", "<=", CATCHUP_BYTES_PER_VALUE)],
    )


def catchup_rows(doc: dict[str, Any], plan: Plan) -> list[Row]:
    backlog = number(dig(doc, "settings", "backlog")) or float(ONE_MILLION)
    modes = doc.get("modes")
    if not isinstance(modes, list):
        return []
    return [*(drain_row(m, backlog) for m in modes if isinstance(m, dict)), disk_row(doc, backlog)]


def best_config(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The configuration (tag count, poll) with the highest median values/s: a gateway's
    maximum is where it does the most, whatever load was offered."""
    scored = [(number(dig(c, "median", "values_per_s")), c) for c in e2e_configs(doc)]
    valid = [(v, c) for v, c in scored if v is not None]
    return max(valid, key=lambda vc: vc[0])[1] if valid else None


def same_load(doc: dict[str, Any], cfg: dict[str, Any] | None) -> dict[str, Any] | None:
    """The configuration of doc with the tag count and poll of cfg, if there is one."""
    for c in e2e_configs(doc):
        if cfg and c.get("tags") == cfg.get("tags") and c.get("poll") == cfg.get("poll"):
            return c
    return None


def load_text(cfg: dict[str, Any] | None) -> str:
    return f"{fmt(number(dig(cfg, 'tags')))} tags @ {dig(cfg, 'poll')}" if cfg else "n/a"


SINKS_CPU_RATIO = 1.3


def sinks_rows(one: dict[str, Any], two: dict[str, Any], plan: Plan) -> list[Row]:
    """Gateway CPU per value with two MQTT sinks (two brokers) against one, same load. The
    values are those the first broker's subscriber received; how much the other sink had not
    acknowledged at the end of each window says whether it kept up."""
    rows = []
    for two_cfg in e2e_configs(two):
        one_cfg = same_load(one, two_cfg)
        mine, base = cpu_per_value(two_cfg), cpu_per_value(one_cfg)
        lag = max(
            (
                waiting
                for run in two_cfg.get("runs") or []
                for name, waiting in (dig(run, "sink_waiting_end") or {}).items()
                if name != "mqtt" and isinstance(waiting, int)
            ),
            default=None,
        )
        values = number(dig(two_cfg, "median", "values_per_s"))
        row = Row(
            scenario="two-sinks",
            metric="sinks_cpu_per_value",
            label=f"{load_text(two_cfg)}, batched: gateway CPU per value, "
            f"{two_cfg.get('sinks')} MQTT sinks on as many brokers",
            figure=mine,
            unit="µs",
            detail=f"{fmt(values)} values/s at the first broker, the other sink's backlog at "
            f"the end of a window at most {fmt(lag)} values",
            ceiling=base,
            ceiling_unit="µs",
            ceiling_label=f"one sink ({fmt(number(dig(one_cfg, 'median', 'values_per_s')))} "
            "values/s)",
            ratio=ratio(mine, base),
            target=f"<= {SINKS_CPU_RATIO:g} x one sink",
            targets=[Target("ratio", "<=", SINKS_CPU_RATIO)],
            short="two sinks",
        )
        if one_cfg is None:
            row.problems.append("no one-sink run at the same load")
        # A sink that falls behind does less work and would look cheap: more than two poll
        # rounds waiting at the end of a window means it did not keep up.
        tags = number(two_cfg.get("tags"))
        if lag is not None and tags and lag > 2 * tags:
            row.problems.append("the other sink did not keep up")
        rows.append(row)
    return rows


# edgegw's maximum values/s against the peer's, per storage of the peer.
PEER_SPEED_RATIO = {"memory": 1.5, "SQLite": 2.5}


def peer_storage_rows(storage: str, peer: dict[str, Any], ours: dict[str, Any]) -> list[Row]:
    """The peer's maximum with one storage (bench.peer) against edgegw's on the same loads
    (bench.e2e, batched like the peer, which packs about 100 values per message)."""
    theirs_cfg, ours_cfg = best_config(peer), best_config(ours)
    theirs_v = number(dig(theirs_cfg, "median", "values_per_s"))
    ours_v = number(dig(ours_cfg, "median", "values_per_s"))
    where = f"edgegw at {load_text(ours_cfg)}, peer at {load_text(theirs_cfg)}"
    # Memory for the same job: edgegw on the load where the peer peaked (RSS grows with the
    # tag count, so maxima at different tag counts would not compare).
    matched = same_load(ours, theirs_cfg)
    same = matched or ours_cfg
    theirs_rss = number(dig(theirs_cfg, "median", "peak_rss_mb"))
    ours_rss = number(dig(same, "median", "peak_rss_mb"))
    factor = PEER_SPEED_RATIO[storage]
    speed = Row(
        scenario="peer",
        metric="peer_throughput",
        label=f"edgegw (batched) vs ThingsBoard IoT Gateway with its {storage} storage: "
        "maximum values/s",
        figure=ours_v,
        unit="values/s",
        detail=where,
        ceiling=theirs_v,
        ceiling_unit="values/s",
        ceiling_label=f"peer's maximum ({storage})",
        ratio=ratio(ours_v, theirs_v),
        target=f">= {factor:g} x the peer ({storage})",
        targets=[Target("ratio", ">=", factor)],
        short=storage,
    )
    memory = Row(
        scenario="peer",
        metric="peer_rss",
        label=f"edgegw vs ThingsBoard IoT Gateway with its {storage} storage: peak RSS on the "
        "peer's best load",
        figure=ours_rss,
        unit="MB",
        detail=f"both at {load_text(theirs_cfg)}" if matched else where,
        ceiling=theirs_rss,
        ceiling_unit="MB",
        ceiling_label=f"peer's peak RSS ({storage})",
        ratio=ratio(ours_rss, theirs_rss),
        target="<= 1.0 x the peer",
        targets=[Target("ratio", "<=", 1.0)],
        short=storage,
    )
    if any(number(c.get("failed_runs")) for c in e2e_configs(peer)):
        speed.problems.append("a peer run failed")
    return [speed, memory]


def peer_rows(memory: dict[str, Any], sqlite: dict[str, Any], ours: dict[str, Any]) -> list[Row]:
    return [
        *peer_storage_rows("SQLite", sqlite, ours),
        *peer_storage_rows("memory", memory, ours),
    ]


# -- between steps: the peer's processes must be gone before edgegw is measured ------------------


PEER_VENV = REPO / "bench" / ".peer-venv"  # bench.peer_tb.PEER_VENV (not imported: psutil...)
PEER_GONE_TIMEOUT_S = 60.0


def recorded_peer_processes(doc: dict[str, Any] | None) -> set[tuple[int, float]]:
    """(pid, create time) of every process bench.peer saw in the peer's tree, all runs."""
    found: set[tuple[int, float]] = set()
    for cfg in e2e_configs(doc or {}):
        for run in cfg.get("runs") or []:
            for entry in dig(run, "peer_processes") or []:
                if isinstance(entry, list) and len(entry) == 2:
                    found.add((int(entry[0]), float(entry[1])))
    return found


def alive_peer_processes(psutil: Any, recorded: set[tuple[int, float]]) -> list[str]:
    """The recorded processes still alive (same pid and create time: not a reused pid), and
    any process running from the peer's venv (one that left the peer's tree is not recorded).
    A zombie counts as gone: it holds no CPU or memory."""
    alive: dict[int, str] = {}
    for pid, created in recorded:
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - created) < 0.5 and proc.status() != psutil.STATUS_ZOMBIE:
                alive[pid] = " ".join(proc.cmdline())[:120]
        except psutil.Error:
            continue
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if any(str(PEER_VENV) in part for part in cmdline):
            alive[proc.info["pid"]] = " ".join(cmdline)[:120]
    return [f"pid {pid}: {cmd}" for pid, cmd in sorted(alive.items())]


def wait_peer_gone(doc: dict[str, Any] | None) -> str | None:
    """After bench.peer: poll until none of the peer's processes is left (a SQLite storage
    still flushing, a child that outlived its group), at most PEER_GONE_TIMEOUT_S. None when
    they are gone, else why the next step must not run."""
    import psutil  # only here: --help and --no-run need the standard library alone

    recorded = recorded_peer_processes(doc)
    deadline = time.monotonic() + PEER_GONE_TIMEOUT_S
    while alive := alive_peer_processes(psutil, recorded):
        if time.monotonic() >= deadline:
            return (
                f"{len(alive)} peer process(es) still running {PEER_GONE_TIMEOUT_S:g} s after "
                f"bench.peer exited ({'; '.join(alive[:5])}): the next step was not run, so that "
                "edgegw is not measured beside them. Stop them and run the scenario again."
            )
        time.sleep(0.5)
    return None


# -- the scenario table --------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One child process of a scenario: a bench module and its arguments. `settle`, if any,
    runs after the child exited, with its JSON (None if there is none): None when the next
    step may run, else why not (the scenario then stops there)."""

    module: str
    prefix: str  # appended to the suite's prefix: suite-e2e, suite-quick-e2e, ...
    args: Callable[[Plan], list[str]]
    settle: Callable[[dict[str, Any] | None], str | None] | None = None

    def command(self, plan: Plan) -> list[str]:
        prefix = f"{plan.prefix}-{self.prefix}"
        return ["-m", self.module, *self.args(plan), "--output-prefix", prefix]

    def results_file(self, plan: Plan, results_dir: Path) -> Path:
        return results_dir / f"{plan.prefix}-{self.prefix}-latest.json"


Docs = list[dict[str, Any]]  # the steps' JSON, in the order of the steps


@dataclass(frozen=True)
class Scenario:
    number: int
    name: str
    title: str
    target: str
    about: str
    steps: tuple[Step, ...]
    rows: Callable[[Docs, Plan], list[Row]]
    # The speed targets of issue 16: run by default and judged. The others (issue 6's OPC UA
    # scenarios) run only when named with --only, and show their figures as context.
    judged: bool = True


def one(rows: Callable[[dict[str, Any], Plan], list[Row]]) -> Callable[[Docs, Plan], list[Row]]:
    """rows() of a scenario of a single step."""
    return lambda docs, plan: rows(docs[0], plan)


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        1,
        "batch",
        "Throughput, batched (mqtt.batch 500)",
        f">= {BATCH_VALUES_PER_S:,} values/s end to end and >= {BATCH_PAHO_RATIO:g}x raw paho "
        f"QoS 1 in the same run; <= {BATCH_US_PER_VALUE:g} µs of gateway CPU per value",
        "Modbus simulator -> edgegw -> Mosquitto -> subscriber, 10,000 churning tags polled "
        "every --fast-poll (200,000 values/s offered), --batch 500; ceiling: raw paho QoS 1 "
        "(one message per value) on the same broker after the gateway stopped.",
        (Step("bench.e2e", "batch", batch_args),),
        one(batch_rows),
    ),
    Scenario(
        2,
        "per-message",
        "Throughput, one message per value",
        ">= 0.8x raw paho QoS 1 in the same run",
        f"As batch, one MQTT message per value, {PER_MESSAGE_TAGS:,} tags polled every "
        "--fast-poll; ceiling: raw paho QoS 1 on the same broker after the gateway stopped.",
        (Step("bench.e2e", "e2e", per_message_args),),
        one(per_message_rows),
    ),
    Scenario(
        3,
        "steady-modbus",
        "Steady plant load, Modbus",
        f"<= {STEADY_MODBUS_LIMITS[0]:g} % of one core and RSS <= {STEADY_MODBUS_LIMITS[1]:g} MB",
        "10,000 Modbus tags polled every 1 s (10,000 values/s), batched (mqtt.batch 500); "
        "gateway CPU and peak RSS.",
        (Step("bench.e2e", "steady-modbus", steady_modbus_args),),
        one(steady_modbus_rows),
    ),
    Scenario(
        4,
        "catchup",
        "Catch-up after an outage",
        "1,000,000 values of backlog drained in <= 5 s batched and <= 50 s per message; "
        f"<= {CATCHUP_BYTES_PER_VALUE:g} bytes per value on disk",
        "An outbox pre-filled with the backlog by the gateway's own pipeline and outbox while "
        "no broker is there (its file size / values held is the disk figure), then broker up, "
        "live Modbus data on; seconds to deliver the backlog, per message and batched; "
        "ceiling: raw paho QoS 1. --quick uses 100,000 values and scales the drain targets.",
        (Step("bench.catchup", "catchup", catchup_args),),
        one(catchup_rows),
    ),
    Scenario(
        5,
        "two-sinks",
        "Two MQTT sinks on two brokers",
        f"<= {SINKS_CPU_RATIO:g}x the gateway CPU per value of one sink",
        f"bench.e2e at {int(SINKS_TAGS):,} tags @ {SINKS_POLL}, batched, with one sink (the "
        "mqtt: section), then with two (a second Mosquitto and a sinks: entry of type mqtt); "
        "gateway CPU per value received at the first broker.",
        (
            Step("bench.e2e", "sinks-one", sinks_args(1)),
            Step("bench.e2e", "sinks-two", sinks_args(2)),
        ),
        lambda docs, plan: sinks_rows(docs[0], docs[1], plan),
    ),
    Scenario(
        6,
        "peer",
        "Against a peer gateway (ThingsBoard IoT Gateway)",
        ">= 2.5x the peer's maximum values/s with its SQLite storage and >= 1.5x with its "
        "memory storage, at no more RSS",
        "The peer (bench.peer, its own venv) on Modbus tags at 100 ms, its fastest useful poll, "
        "with its memory storage, then with its SQLite storage; once its processes are gone, "
        "edgegw batched (bench.e2e --batch 500) on the same tags and poll; each one's maximum "
        "values/s over the tag counts, and peak RSS on the load where the peer peaked.",
        (
            Step("bench.peer", "peer-memory", peer_args("memory"), settle=wait_peer_gone),
            Step("bench.peer", "peer-sqlite", peer_args("sqlite"), settle=wait_peer_gone),
            Step("bench.e2e", "peer-edgegw", peer_edgegw_args),
        ),
        lambda docs, plan: peer_rows(docs[0], docs[1], docs[2]),
    ),
    Scenario(
        7,
        "steady-opcua",
        "Steady plant load, OPC UA (context)",
        "none in issue 16 (issue 6: <= 15 % of one core, RSS <= 80 MB)",
        "10,000 OPC UA items subscribed at 1 s, batched (mqtt.batch 500); gateway CPU and "
        "peak RSS; the raw asyncua client on the same server as the CPU reference.",
        (
            Step(
                "bench.opcua",
                "steady-opcua",
                lambda plan: opcua_args(10_000, plan, "--batch", "500"),
            ),
        ),
        one(steady_opcua_rows),
        judged=False,
    ),
    Scenario(
        8,
        "latency",
        "Latency at 1,000 values/s (context)",
        "none in issue 16 (issue 6: p99 <= 50 ms)",
        "1,000 OPC UA items each changing once a second (50 changes of 20 values a second), "
        "subscribed at 20 ms; p99 from the "
        "value's source timestamp to the subscriber, against a raw asyncua client with the same "
        "subscription; the part the gateway adds is shown for context.",
        (
            Step(
                "bench.opcua",
                "latency",
                lambda plan: opcua_args(
                    1_000,
                    plan,
                    "--source-interval",
                    LATENCY_SOURCE_INTERVAL,
                    "--bench-slice",
                    LATENCY_SLICE,
                ),
            ),
        ),
        one(latency_rows),
        judged=False,
    ),
)
NAMES = [s.name for s in SCENARIOS]
DEFAULT_NAMES = [s.name for s in SCENARIOS if s.judged]


# -- running -------------------------------------------------------------------------------------


def stream(cmd: list[str], tail: collections.deque[str]) -> int:
    """Runs cmd in the repo, echoes its output as it comes, keeps the last lines in tail."""
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            tail.append(line.rstrip("\n"))
        return proc.wait()
    finally:
        # Interrupted (Ctrl-C, SIGTERM): let the scenario stop the processes it started.
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def not_run(scn: Scenario, reason: str) -> dict[str, Any]:
    return {**describe(scn), "status": "not run", "reason": reason, "met": None, "rows": []}


def describe(scn: Scenario) -> dict[str, Any]:
    return {
        "number": scn.number,
        "name": scn.name,
        "title": scn.title,
        "target": scn.target,
        "judged": scn.judged,
    }


def relative(path: Path) -> str:
    return str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)


def summarise(scn: Scenario, docs: Docs, paths: list[Path], plan: Plan) -> dict[str, Any]:
    try:
        rows = [r.judge() for r in scn.rows(docs, plan)]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        # A shape this module does not know: report it, keep the other scenarios.
        names = ", ".join(p.name for p in paths)
        return {**not_run(scn, f"unreadable {names}: {exc!r}"), "status": "unreadable"}
    judged = [r.met for r in rows if r.met is not None]
    return {
        **describe(scn),
        "status": "ok" if rows else "no figures",
        "reason": None if rows else f"no figures in {', '.join(p.name for p in paths)}",
        "met": all(judged) if judged else None,
        "results": [
            {
                "file": relative(path),
                "started_utc": doc.get("started_utc"),
                "command": doc.get("command"),
                "head": dig(doc, "code", "at_start", "head"),
            }
            for doc, path in zip(docs, paths, strict=True)
        ],
        "rows": [asdict(r) for r in rows],
    }


def run_step(step: Step, plan: Plan, results_dir: Path) -> dict[str, Any]:
    """Runs one child process; its fresh JSON, or why there is none."""
    cmd = [sys.executable, "-u", *step.command(plan)]
    print(f"\n=== {shlex.join(cmd)}", flush=True)
    started = time.time()
    tail: collections.deque[str] = collections.deque(maxlen=20)
    code = stream(cmd, tail)
    took = round(time.time() - started, 1)
    print(f"=== {step.module}: exit {code} after {took:.0f} s", flush=True)
    path = step.results_file(plan, results_dir)
    # Only a file written by this run counts: an older one would pass off stale figures.
    fresh = path.exists() and path.stat().st_mtime >= started - 1
    doc = read_json(path) if fresh else None
    command = shlex.join(["python", *step.command(plan)])
    run: dict[str, Any] = {"command": command, "exit_code": code, "seconds": took}
    if doc is None:
        run.update(error=f"no fresh {path.name} (exit {code})", output_tail=list(tail))
    if step.settle is not None:
        print(f"=== {step.module}: waiting until what it started is gone", flush=True)
        unsettled = step.settle(doc)
        if unsettled:
            print(f"=== {unsettled}", flush=True)
            run["unsettled"] = unsettled
    return {"run": run, "doc": doc, "path": path}


def run_steps(scn: Scenario, plan: Plan, results_dir: Path) -> list[dict[str, Any]]:
    """The scenario's steps in order; a step that could not settle ends the scenario there
    (what it left running would share the cores with the next step's measurement)."""
    done: list[dict[str, Any]] = []
    for step in scn.steps:
        done.append(run_step(step, plan, results_dir))
        if "unsettled" in done[-1]["run"]:
            break
    return done


def run_scenario(scn: Scenario, plan: Plan, results_dir: Path) -> dict[str, Any]:
    missing = [s.module for s in scn.steps if importlib.util.find_spec(s.module) is None]
    if missing:
        return not_run(scn, f"{', '.join(missing)} not found")
    print(f"\n===== {scn.number}. {scn.title} [{scn.name}]", flush=True)
    done = run_steps(scn, plan, results_dir)
    runs = [d["run"] for d in done]
    errors = [r[key] for r in runs for key in ("error", "unsettled") if key in r]
    if len(done) < len(scn.steps):
        skipped = ", ".join(s.module for s in scn.steps[len(done) :])
        errors.append(f"not run: {skipped}")
    if errors:
        return {**not_run(scn, "; ".join(errors)), "status": "failed", "runs": runs}
    docs, paths = [d["doc"] for d in done], [d["path"] for d in done]
    return {**summarise(scn, docs, paths, plan), "runs": runs}


def read_scenario(scn: Scenario, plan: Plan, results_dir: Path) -> dict[str, Any]:
    paths = [step.results_file(plan, results_dir) for step in scn.steps]
    docs = [read_json(path) for path in paths]
    absent = [p.name for p, d in zip(paths, docs, strict=True) if d is None]
    if absent:
        return not_run(scn, f"no {', '.join(absent)}")
    return summarise(scn, [d for d in docs if d is not None], paths, plan)


# -- machine and summary -------------------------------------------------------------------------


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def code_state() -> dict[str, Any]:
    status = git("status", "--porcelain") or ""
    return {
        "head": git("rev-parse", "--short", "HEAD"),
        "dirty": [line[3:] for line in status.splitlines() if line],
    }


def machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def verdict(scenarios: list[dict[str, Any]]) -> dict[str, Any]:
    judged = [s for s in scenarios if s["met"] is not None]
    # All met = every scenario of issue 16 has results and meets its targets.
    required = [s for s in scenarios if s.get("judged", True)]
    return {
        "scenarios_judged": len(judged),
        "scenarios_met": sum(1 for s in judged if s["met"]),
        "scenarios_without_results": [s["name"] for s in scenarios if s["status"] != "ok"],
        "all_met": bool(required) and all(s["met"] is True for s in required),
    }


def run_mode(plan: Plan, no_run: bool) -> str:
    """How the figures were made, for the table's and the chart's headings."""
    if no_run:
        return "summary of earlier results (each scenario's command in the JSON)"
    if plan.quick:
        return "quick smoke run (1 short run each: indicative only)"
    return f"medians of {plan.runs} runs"


# -- Markdown ------------------------------------------------------------------------------------


def md_value(value: float | None, unit: str) -> str:
    return f"{fmt(value)} {unit}" if value is not None else "n/a"


def md_row(scn: dict[str, Any], row: dict[str, Any]) -> str:
    figure = f"**{md_value(row['figure'], row['unit'])}**"
    if row["detail"]:
        figure += f" ({row['detail']})"
    ceiling = ""
    if row["ceiling"] is not None:
        ceiling = f"{row['ceiling_label']}: {md_value(row['ceiling'], row['ceiling_unit'])}"
    met = {True: "yes", False: "**no**", None: "-"}[row["met"]]
    if row["problems"]:
        met += f" ({'; '.join(row['problems'])})"
    cells = [
        f"{scn['number']}. {scn['name']}: {row['label']}",
        figure,
        ceiling,
        fmt(row["ratio"], ".2f") if row["ratio"] is not None else "",
        row["target"],
        met,
    ]
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def markdown(summary: dict[str, Any]) -> str:
    mach, code = summary["machine"], summary["code"]
    dirty = f" + {len(code['dirty'])} changed files" if code["dirty"] else ""
    lines = [
        f"Benchmark suite `{summary['stamp']}`: {mach['cpu_count']} cores ({mach['cpu_model']}), "
        f"Python {mach['python']}, code `{code['head']}`{dirty}, {summary['mode']}; "
        f"`{summary['command']}`.",
        "",
        "| scenario | figure | ceiling in same run | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for scn in summary["scenarios"]:
        if not scn["rows"]:
            what = f"{scn['number']}. {scn['title']}"
            lines.append(
                f"| {what} | {scn['status']}: {scn['reason']} |  |  | {scn['target']} | - |"
            )
        lines += [md_row(scn, row) for row in scn["rows"]]
    v = summary["verdict"]
    lines += ["", f"Scenarios met: {v['scenarios_met']} of {v['scenarios_judged']} judged."]
    return "\n".join(lines) + "\n"


# -- command line --------------------------------------------------------------------------------


def epilog_scenario(s: Scenario) -> list[str]:
    full = Plan(quick=False, runs=3, fast_poll="50ms", prefix="suite")
    quick = Plan(quick=True, runs=1, fast_poll="50ms", prefix="suite-quick")
    parts = [
        f"\n  {s.name}  ({s.number}. {s.title})",
        f"      target: {s.target}",
        textwrap.fill(s.about, 96, initial_indent=" " * 6, subsequent_indent=" " * 6),
    ]
    for step in s.steps:
        parts += [
            f"      full:  python {shlex.join(step.command(full))}",
            f"      quick: python {shlex.join(step.command(quick))}",
        ]
        if step.settle is not None:
            parts.append(
                f"      then:  wait until the peer's processes are gone (at most "
                f"{PEER_GONE_TIMEOUT_S:g} s, else the scenario stops there)"
            )
    return parts


def epilog() -> str:
    parts = ["scenarios of issue 16, run by default (name: what it runs; target on 2 cores):"]
    for s in SCENARIOS:
        if s.judged:
            parts += epilog_scenario(s)
    parts.append("\nnot run by default (issue 6's OPC UA scenarios, context only): --only NAME")
    for s in SCENARIOS:
        if not s.judged:
            parts += epilog_scenario(s)
    closing = (
        "Each figure is compared with a ceiling measured in the same run (raw paho, one sink, "
        "the peer, the raw asyncua client, the server's writes). Results: "
        "bench/results/PREFIX-<UTC>.json and PREFIX-latest.json/.md/.png (PREFIX suite, or "
        "suite-quick with --quick)."
    )
    return "\n".join(parts) + "\n\n" + textwrap.fill(closing, 100)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.suite",
        description=textwrap.fill(
            "Runs the benchmark scenarios of issue 16's speed targets one after the other, then "
            "writes a summary (JSON, Markdown table, PNG chart). Full suite: roughly 35 minutes "
            "on 2 cores; --quick: about 6. Run it on a quiet machine. See bench/README.md.",
            100,
        ),
        epilog=epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="one short run of each scenario")
    p.add_argument(
        "--only",
        nargs="+",
        choices=NAMES,
        metavar="NAME",
        help="only these scenarios (names below; steady-opcua and latency run only this way)",
    )
    p.add_argument("--runs", type=int, help="runs per scenario (default 3, --quick 1)")
    p.add_argument(
        "--fast-poll",
        default="50ms",
        help="poll of the throughput scenarios: at 50 ms, 2,000 tags offer 40,000 values/s "
        "(per message: more than raw paho sends here) and 10,000 tags 200,000 values/s "
        "(batched: more than three times the 60,000 target)",
    )
    p.add_argument(
        "--output-prefix", help="prefix of every file written (default suite, suite-quick)"
    )
    p.add_argument(
        "--no-run",
        action="store_true",
        help="run nothing: summarise the PREFIX-*-latest.json already in --results-dir",
    )
    p.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS,
        help="where the scenarios' JSON is read and the summary written (other than "
        "bench/results only with --no-run: the scenarios always write to bench/results)",
    )
    p.add_argument("--no-chart", action="store_true", help="no PNG (e.g. without matplotlib)")
    return p


def write_outputs(summary: dict[str, Any], results_dir: Path, chart: bool) -> None:
    results_dir.mkdir(parents=True, exist_ok=True)
    prefix, stamp = summary["prefix"], summary["stamp"]
    data = json.dumps(summary, indent=2, ensure_ascii=False) + "\n"
    names = [f"{prefix}-latest.json", f"{prefix}-latest.md"]
    if not summary["no_run"]:  # a re-summary is not a new measurement: no dated copy
        names.insert(0, f"{prefix}-{stamp}.json")
    table = markdown(summary)
    for name in names:
        (results_dir / name).write_text(data if name.endswith(".json") else table)
    print("\n" + table)
    print(f"wrote {', '.join(str(results_dir / n) for n in names)}")
    if not chart:
        return
    try:
        from bench.chart import write_chart  # matplotlib is an optional extra
    except ImportError as exc:
        print(f"no chart ({exc}): pip install -e '.[bench]'", file=sys.stderr)
        return
    for path in write_chart(summary, results_dir):
        print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.no_run and args.results_dir.resolve() != RESULTS.resolve():
        parser.error("--results-dir other than bench/results needs --no-run")
    # SIGTERM -> SystemExit, so that stream() stops the scenario running at that moment.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    plan = Plan(
        quick=args.quick,
        runs=args.runs or (1 if args.quick else 3),
        fast_poll=args.fast_poll,
        prefix=args.output_prefix or ("suite-quick" if args.quick else "suite"),
    )
    started = dt.datetime.now(dt.UTC)
    code = code_state()
    chosen = set(args.only or DEFAULT_NAMES)
    scenarios = []
    for scn in SCENARIOS:
        if scn.name not in chosen:
            if scn.judged:  # a target left out shows as such; context is simply absent
                scenarios.append(not_run(scn, "not selected (--only)"))
        elif args.no_run:
            scenarios.append(read_scenario(scn, plan, args.results_dir))
        else:
            scenarios.append(run_scenario(scn, plan, args.results_dir))
    summary = {
        "suite": "edgegw benchmark suite (issue 16 speed targets)",
        "prefix": plan.prefix,
        "stamp": started.strftime("%Y%m%dT%H%M%SZ"),
        "started_utc": started.isoformat(timespec="seconds"),
        "finished_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": shlex.join(
            ["python", "-m", "bench.suite", *(sys.argv[1:] if argv is None else argv)]
        ),
        "quick": plan.quick,
        "runs": plan.runs,
        "no_run": args.no_run,
        "mode": run_mode(plan, args.no_run),
        "machine": machine(),
        "code": code,
        "scenarios": scenarios,
        "verdict": verdict(scenarios),
    }
    write_outputs(summary, args.results_dir, chart=not args.no_chart)
    failed = [s["name"] for s in scenarios if s["status"] in ("failed", "unreadable", "no figures")]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
