"""The whole benchmark suite of issue 6 in one command: every scenario, one summary, one chart.

    .venv/bin/python -m bench.suite                   # full suite, medians of 3 runs (~45 min)
    .venv/bin/python -m bench.suite --quick           # smoke run of every scenario (~6 min)
    .venv/bin/python -m bench.suite --only latency steady-opcua
    .venv/bin/python -m bench.suite --no-run          # summary and chart of the last results
    .venv/bin/python -m bench.suite --help            # the scenarios and their targets

Each scenario runs the existing modules (`bench.e2e`, `bench.opcua`, `bench.catchup`,
`bench.peer`; the peer scenario two of them) as child processes, each with its own
`--output-prefix` (`suite-e2e`, ...), so the suite's files never mix with ad-hoc runs. Their
output is streamed; then their `bench/results/<prefix>-latest.json` is read and reduced to rows:
the figure, the ceiling measured in the same run, their ratio, the target and whether it is
met. The summary goes to
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
CATCHUP_TARGET_S = 60.0  # for 1,000,000 rows; scaled down for a smaller --backlog


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


def per_message_args(plan: Plan) -> list[str]:
    tags = ["2000", "10000"] if plan.quick else ["2000", "5000", "10000"]
    return [
        "--tags",
        *tags,
        "--poll",
        plan.fast_poll,
        *e2e_timing(plan, 15),
        "--runs",
        str(plan.runs),
        "--baselines",
        "paho",
    ]


def batch_args(plan: Plan) -> list[str]:
    # Only 10,000 tags: fewer tags cannot offer 100,000 values/s at a 50 ms poll.
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
        # A tenth of the backlog; the 60 s target is scaled to it in the rows.
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


def peer_args(plan: Plan) -> list[str]:
    timing = ["--seconds", "5", "--warmup", "3"] if plan.quick else ["--seconds", "10"]
    # 100 ms: the peer's fastest useful poll (its connector loops sleep 100 ms).
    return ["--tags", *peer_tags(plan), "--poll", "100ms", *timing, "--runs", str(plan.runs)]


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


def per_message_rows(doc: dict[str, Any], plan: Plan) -> list[Row]:
    targets = [Target("figure", ">=", 20_000), Target("ratio", ">=", 0.75)]
    text = ">= 20,000 values/s and >= 0.75 x paho"
    return [e2e_throughput_row("per-message", c, targets, text) for c in e2e_configs(doc)]


def batch_rows(doc: dict[str, Any], plan: Plan) -> list[Row]:
    targets = [Target("figure", ">=", 100_000)]
    return [
        e2e_throughput_row("batch", c, targets, ">= 100,000 values/s") for c in e2e_configs(doc)
    ]


def cpu_rss_rows(
    name: str, what: str, cpu: float | None, rss: float | None, raw_cpu: float | None
) -> list[Row]:
    cpu_row = Row(
        scenario=name,
        metric="cpu",
        label=f"{what}: gateway CPU",
        figure=cpu,
        unit="% of a core",
        target="<= 15 % of a core",
        targets=[Target("figure", "<=", 15.0)],
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
        target="<= 80 MB",
        targets=[Target("figure", "<=", 80.0)],
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


def steady_modbus_rows(doc: dict[str, Any], plan: Plan) -> list[Row]:
    rows: list[Row] = []
    for cfg in e2e_configs(doc):
        what = f"Modbus {fmt(number(cfg.get('tags')))} tags @ {cfg.get('poll')}"
        cpu = number(dig(cfg, "median", "gateway_cpu_percent"))
        rss = number(dig(cfg, "median", "peak_rss_mb"))
        rows += cpu_rss_rows("steady-modbus", what, cpu, rss, None)
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
    rows = cpu_rss_rows("steady-opcua", what, cpu, rss, raw_cpu)
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
        target="p99 <= 50 ms",
        targets=[Target("figure", "<=", 50.0)],
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


def catchup_rows(doc: dict[str, Any], plan: Plan) -> list[Row]:
    backlog = number(dig(doc, "settings", "backlog")) or float(ONE_MILLION)
    limit = round(CATCHUP_TARGET_S * backlog / ONE_MILLION, 1)
    text = f"<= {fmt(limit, 'g')} s" + ("" if backlog == ONE_MILLION else " (60 s per 1 M)")
    modes = doc.get("modes")
    rows = []
    for mode in modes if isinstance(modes, list) else []:
        med = dig(mode, "median")
        row = Row(
            scenario="catchup",
            metric="drain_s",
            label=f"{fmt(backlog)} rows backlog, {dig(mode, 'mode')} mode: drain",
            figure=number(dig(med, "drain_s_from_start")),
            unit="s",
            detail=f"{fmt(number(dig(med, 'drain_values_per_s')))} values/s",
            ceiling=number(dig(med, "ceiling_msgs_per_s")),
            ceiling_unit="msgs/s",
            ceiling_label="raw paho QoS 1",
            ratio=number(dig(med, "ratio_values_vs_ceiling")),
            target=text,
            targets=[Target("figure", "<=", limit)],
            extras={"values_per_s": number(dig(med, "drain_values_per_s")), "backlog": backlog},
        )
        if dig(mode, "all_drained") is False:
            row.problems.append("a run did not drain the backlog")
        if dig(mode, "all_delivered") is False:
            row.problems.append("backlog values missing at the subscriber")
        rows.append(row)
    return rows


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


def peer_rows(peer: dict[str, Any], ours: dict[str, Any], plan: Plan) -> list[Row]:
    """The peer's maximum (bench.peer) against edgegw's on the same loads (bench.e2e, batched
    like the peer, which packs about 100 values per message)."""
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
    speed = Row(
        scenario="peer",
        metric="peer_throughput",
        label="edgegw (batched) vs ThingsBoard IoT Gateway: maximum values/s",
        figure=ours_v,
        unit="values/s",
        detail=where,
        ceiling=theirs_v,
        ceiling_unit="values/s",
        ceiling_label="peer's maximum",
        ratio=ratio(ours_v, theirs_v),
        target=">= 5 x the peer",
        targets=[Target("ratio", ">=", 5.0)],
    )
    memory = Row(
        scenario="peer",
        metric="peer_rss",
        label="edgegw vs ThingsBoard IoT Gateway: peak RSS on the peer's best load",
        figure=ours_rss,
        unit="MB",
        detail=f"both at {load_text(theirs_cfg)}" if matched else where,
        ceiling=theirs_rss,
        ceiling_unit="MB",
        ceiling_label="peer's peak RSS",
        ratio=ratio(ours_rss, theirs_rss),
        target="<= 1.0 x the peer",
        targets=[Target("ratio", "<=", 1.0)],
    )
    if any(number(c.get("failed_runs")) for c in e2e_configs(peer)):
        speed.problems.append("a peer run failed")
    return [speed, memory]


# -- the scenario table --------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One child process of a scenario: a bench module and its arguments."""

    module: str
    prefix: str  # appended to the suite's prefix: suite-e2e, suite-quick-e2e, ...
    args: Callable[[Plan], list[str]]

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


def one(rows: Callable[[dict[str, Any], Plan], list[Row]]) -> Callable[[Docs, Plan], list[Row]]:
    """rows() of a scenario of a single step."""
    return lambda docs, plan: rows(docs[0], plan)


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        1,
        "per-message",
        "Throughput, one message per value",
        ">= 20,000 values/s end to end and >= 0.75 of raw paho QoS 1 in the same run",
        "Modbus simulator -> edgegw -> Mosquitto -> subscriber, 2,000-10,000 tags polled fast "
        "(--fast-poll, so that more than the target is offered); ceiling: raw paho QoS 1 on "
        "the same broker after the gateway stopped.",
        (Step("bench.e2e", "e2e", per_message_args),),
        one(per_message_rows),
    ),
    Scenario(
        2,
        "batch",
        "Throughput, batched (mqtt.batch 500)",
        ">= 100,000 values/s end to end",
        "As per-message with --batch 500 and 10,000 tags; the paho ceiling (one message per "
        "value) is shown for scale.",
        (Step("bench.e2e", "batch", batch_args),),
        one(batch_rows),
    ),
    Scenario(
        3,
        "steady-modbus",
        "Steady plant load, Modbus",
        "<= 15 % of one core and RSS <= 80 MB",
        "10,000 Modbus tags polled every 1 s (10,000 values/s), batched (mqtt.batch 500); "
        "gateway CPU and peak RSS.",
        (Step("bench.e2e", "steady-modbus", steady_modbus_args),),
        one(steady_modbus_rows),
    ),
    Scenario(
        3,
        "steady-opcua",
        "Steady plant load, OPC UA",
        "<= 15 % of one core and RSS <= 80 MB",
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
    ),
    Scenario(
        4,
        "catchup",
        "Catch-up after an outage",
        "1,000,000 rows of backlog drained in <= 60 s",
        "An outbox pre-filled with the backlog, broker up, live Modbus data on; seconds to "
        "deliver the backlog, per-message and batched; ceiling: raw paho QoS 1. --quick uses "
        "100,000 rows and scales the target to 6 s.",
        (Step("bench.catchup", "catchup", catchup_args),),
        one(catchup_rows),
    ),
    Scenario(
        5,
        "latency",
        "Latency at 1,000 values/s",
        "p99 <= 50 ms",
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
    ),
    Scenario(
        6,
        "peer",
        "Against a peer gateway (ThingsBoard IoT Gateway)",
        ">= 5x the peer's maximum values/s, at no more memory",
        "The peer (bench.peer, its own venv) on Modbus tags at 100 ms, its fastest useful poll, "
        "then edgegw batched (bench.e2e --batch 500) on the same tags and poll; each one's "
        "maximum values/s over the tag counts, and its peak RSS there.",
        (
            Step("bench.peer", "peer", peer_args),
            Step("bench.e2e", "peer-edgegw", peer_edgegw_args),
        ),
        lambda docs, plan: peer_rows(docs[0], docs[1], plan),
    ),
)
NAMES = [s.name for s in SCENARIOS]


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
    return {"number": scn.number, "name": scn.name, "title": scn.title, "target": scn.target}


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
    return {"run": run, "doc": doc, "path": path}


def run_scenario(scn: Scenario, plan: Plan, results_dir: Path) -> dict[str, Any]:
    missing = [s.module for s in scn.steps if importlib.util.find_spec(s.module) is None]
    if missing:
        return not_run(scn, f"{', '.join(missing)} not found")
    print(f"\n===== {scn.number}. {scn.title} [{scn.name}]", flush=True)
    done = [run_step(step, plan, results_dir) for step in scn.steps]
    runs = [d["run"] for d in done]
    errors = [r["error"] for r in runs if "error" in r]
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
    return {
        "scenarios_judged": len(judged),
        "scenarios_met": sum(1 for s in judged if s["met"]),
        "scenarios_without_results": [s["name"] for s in scenarios if s["status"] != "ok"],
        "all_met": bool(judged) and len(judged) == len(scenarios) and all(s["met"] for s in judged),
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


def epilog() -> str:
    full = Plan(quick=False, runs=3, fast_poll="50ms", prefix="suite")
    quick = Plan(quick=True, runs=1, fast_poll="50ms", prefix="suite-quick")
    parts = ["scenarios (name: what it runs; target on 2 cores):"]
    for s in SCENARIOS:
        parts += [
            f"\n  {s.name}  ({s.number}. {s.title})",
            f"      target: {s.target}",
            textwrap.fill(s.about, 96, initial_indent=" " * 6, subsequent_indent=" " * 6),
        ]
        for step in s.steps:
            parts += [
                f"      full:  python {shlex.join(step.command(full))}",
                f"      quick: python {shlex.join(step.command(quick))}",
            ]
    closing = (
        "Each figure is compared with a ceiling measured in the same run (raw paho, the raw "
        "asyncua client, the server's writes, the peer). Results: bench/results/PREFIX-<UTC>.json"
        " and PREFIX-latest.json/.md/.png (PREFIX suite, or suite-quick with --quick)."
    )
    return "\n".join(parts) + "\n\n" + textwrap.fill(closing, 100)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.suite",
        description=textwrap.fill(
            "Runs the benchmark scenarios of issue 6 one after the other, then writes a summary "
            "(JSON, Markdown table, PNG chart). Full suite: about 45 minutes on 2 cores; "
            "--quick: about 6. Run it on a quiet machine. See bench/README.md.",
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
        help="only these scenarios (names below)",
    )
    p.add_argument("--runs", type=int, help="runs per scenario (default 3, --quick 1)")
    p.add_argument(
        "--fast-poll",
        default="50ms",
        help="poll of the throughput scenarios: 2,000 tags at 50 ms offer 40,000 values/s, "
        "twice the target (at 100 ms exactly the target, and rounding would decide)",
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
    chosen = set(args.only or NAMES)
    scenarios = []
    for scn in SCENARIOS:
        if scn.name not in chosen:
            scenarios.append(not_run(scn, "not selected (--only)"))
        elif args.no_run:
            scenarios.append(read_scenario(scn, plan, args.results_dir))
        else:
            scenarios.append(run_scenario(scn, plan, args.results_dir))
    summary = {
        "suite": "edgegw benchmark suite (issue 6)",
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
