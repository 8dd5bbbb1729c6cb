"""PNG chart of a benchmark suite summary (`bench.suite`): one small panel per kind of figure.

    .venv/bin/python -m bench.chart                                # bench/results/suite-latest.json
    .venv/bin/python -m bench.chart bench/results/suite-20261202T100000Z.json

Writes `PREFIX-<stamp>.png` and `PREFIX-latest.png` next to the summary (PREFIX and stamp from
the summary: `suite`, or `suite-quick` for a `--quick` run). About 1,000 x 650 px, sized to be
readable at README width. Panels: throughput (per message, batched, their paho ceiling, the
peer with each storage), CPU and RSS at steady load, catch-up seconds (and bytes per value on
disk), gateway CPU per value (batched; two sinks against one); each against its target. Green:
target met, red: not met, blue: no target (context), grey: the ceiling measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: files only

# (pyplot after the backend is chosen)
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

RESULTS = Path(__file__).resolve().parent / "results"
COLOURS = {True: "#2e7d32", False: "#c62828", None: "#1565c0"}
CEILING = "#9e9e9e"
TARGET = "#ef6c00"
Row = dict[str, Any]


def rows(summary: dict[str, Any], scenario: str, metric: str | None = None) -> list[Row]:
    for scn in summary.get("scenarios", []):
        if scn.get("name") == scenario:
            return [r for r in scn.get("rows", []) if metric is None or r.get("metric") == metric]
    return []


def short(value: float | None) -> str:
    """1234 -> 1.2k, 123456 -> 123k: bar labels must stay narrow."""
    if value is None:
        return "n/a"
    if value >= 1_000_000:
        return f"{value / 1_000_000:g} M"
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def wrap(label: str) -> str:
    """'2,000 tags @ 50ms' on two lines: six groups share 600 px."""
    return label.replace(" @ ", "\n@ ")


def target_value(row: Row, on: str = "figure") -> float | None:
    for t in row.get("targets", []):
        if t.get("on") == on:
            return float(t["value"])
    return None


def status(summary: dict[str, Any], *scenarios: str) -> str:
    """'not run', 'failed', ... of the scenarios behind an empty panel."""
    found = {s.get("status") for s in summary.get("scenarios", []) if s.get("name") in scenarios}
    return ", ".join(sorted(str(f) for f in found)) or "not run"


def empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def bar(ax: Axes, x: float, value: float | None, colour: str, width: float = 0.38) -> None:
    """One bar with its value on top; a missing value is an 'n/a' at the bottom."""
    if value is None:
        # At the bottom of the axes whatever the scale (0 does not exist on a log axis).
        ax.text(
            x,
            0.02,
            "n/a",
            ha="center",
            fontsize=7,
            color="grey",
            transform=ax.get_xaxis_transform(),
            in_layout=False,
        )
        return
    ax.bar(x, value, width=width, color=colour)
    ax.annotate(
        short(value),
        (x, value),
        ha="center",
        va="bottom",
        fontsize=7,
        xytext=(0, 1),
        textcoords="offset points",
    )


def spread(ax: Axes, n: int, minimum: int = 3) -> None:
    """x limits for n groups, centred, never narrower than `minimum` groups: a panel with a
    single group would otherwise draw bars as wide as the panel."""
    pad = max(minimum - n, 0) / 2
    ax.set_xlim(-0.6 - pad, n - 0.4 + pad)


def headroom(ax: Axes) -> None:
    """Room above the highest bar for its label, below the title."""
    ax.autoscale_view()
    bottom, top = ax.get_ylim()
    ax.set_ylim(bottom, top * (3.0 if ax.get_yscale() == "log" else 1.12))


def target_mark(ax: Axes, x: float, value: float | None, span: float = 0.45) -> None:
    """A target for one group only (the groups of a panel have different targets)."""
    if value is not None:
        ax.hlines(value, x - span, x + span, colors=TARGET, linestyles="--", linewidth=1.2)


def pairs(ax: Axes, groups: list[tuple[str, Row, float | None]], ylabel: str) -> None:
    """Per group: the gateway's figure (coloured by met) and the same run's ceiling (grey),
    with the group's target as a dashed line across it."""
    for x, (_, row, target) in enumerate(groups):
        bar(ax, x - 0.2, row.get("figure"), COLOURS[row.get("met")])
        if row.get("ceiling") is not None:
            bar(ax, x + 0.2, row["ceiling"], CEILING)
        target_mark(ax, x, target)
    ax.set_xticks(range(len(groups)), [g[0] for g in groups], fontsize=7)
    ax.set_ylabel(ylabel)
    spread(ax, len(groups))


def throughput_panel(ax: Axes, summary: dict[str, Any]) -> None:
    groups: list[tuple[str, Row, float | None]] = [
        (f"{kind}\n{wrap(r['label'])}", r, target_value(r))
        for scenario, kind in (("per-message", "per message"), ("batch", "batched"))
        for r in rows(summary, scenario, "throughput")
    ]
    for r in rows(summary, "peer", "peer_throughput"):
        ceiling, factor = r.get("ceiling"), target_value(r, "ratio")
        goal = ceiling * factor if ceiling is not None and factor is not None else None
        groups.append((f"vs peer\n{r.get('short') or ''}\n(grey: peer)", r, goal))
    ax.set_title("Throughput end to end, values/s (grey: raw paho QoS 1 in the same run)")
    if not groups:
        empty(ax, status(summary, "per-message", "batch", "peer"))
        return
    pairs(ax, groups, "values/s (log)")
    ax.set_yscale("log")
    ax.set_ylim(bottom=500)
    headroom(ax)


def steady_panel(ax: Axes, summary: dict[str, Any], metric: str, title: str, unit: str) -> None:
    groups: list[tuple[str, Row, float | None]] = []
    for scenario, name in (("steady-modbus", "Modbus"), ("steady-opcua", "OPC UA")):
        # "Modbus 10,000 tags @ 1s: gateway CPU" -> the load on three lines
        groups += [
            (
                f"{name}\n{wrap(r['label'].split(':')[0].removeprefix(name).strip())}",
                r,
                target_value(r),
            )
            for r in rows(summary, scenario, metric)
        ]
    if metric == "rss":
        groups += [
            (f"vs peer\n{r.get('short') or ''}\n(grey: peer)", r, r.get("ceiling"))
            for r in rows(summary, "peer", "peer_rss")
        ]
    ax.set_title(title)
    if not groups:
        empty(ax, status(summary, "steady-modbus", "steady-opcua"))
        return
    pairs(ax, groups, unit)
    ax.set_ylim(bottom=0)
    headroom(ax)


def catchup_panel(ax: Axes, summary: dict[str, Any]) -> None:
    found = rows(summary, "catchup", "drain_s")
    ax.set_title("Catch-up: seconds to drain the backlog")
    if not found:
        empty(ax, status(summary, "catchup"))
        return
    for x, r in enumerate(found):
        bar(ax, x, r.get("figure"), COLOURS[r.get("met")], width=0.5)
        target_mark(ax, x, target_value(r), span=0.35)
    backlog = found[0].get("extras", {}).get("backlog")
    labels = [r.get("short") or r["label"].split(", ")[-1].replace(": drain", "") for r in found]
    ax.set_xticks(range(len(found)), labels, fontsize=7)
    spread(ax, len(found))
    ax.set_ylabel(f"s for {short(backlog)} values")
    ax.set_ylim(bottom=0)
    headroom(ax)
    for r in rows(summary, "catchup", "bytes_per_value"):
        # One number, no bar: the disk cost of the same backlog, against its target.
        met = {True: "met", False: "NOT met", None: ""}[r.get("met")]
        figure = r.get("figure")
        shown = "n/a" if figure is None else f"{figure:.0f}"
        goal = target_value(r)
        ax.set_xlabel(
            f"on disk: {shown} bytes per value (target {goal:g}) {met}"
            if goal is not None
            else f"on disk: {shown} bytes per value",
            fontsize=7,
            color=COLOURS[r.get("met")],
        )


def cpu_per_value_panel(ax: Axes, summary: dict[str, Any]) -> None:
    """Gateway CPU per value: batched at full speed (target in µs), and with two sinks
    (grey: one sink in the same suite run; target a factor of it)."""
    groups: list[tuple[str, Row, float | None]] = [
        (f"batched\n{wrap(r['label'].split(':')[0])}", r, target_value(r))
        for r in rows(summary, "batch", "cpu_per_value")
    ]
    for r in rows(summary, "two-sinks", "sinks_cpu_per_value"):
        ceiling, factor = r.get("ceiling"), target_value(r, "ratio")
        goal = ceiling * factor if ceiling is not None and factor is not None else None
        groups.append(("two sinks\n(grey: one)", r, goal))
    ax.set_title("Gateway CPU per value, µs")
    if not groups:
        empty(ax, status(summary, "batch", "two-sinks"))
        return
    pairs(ax, groups, "µs of CPU per value")
    ax.set_ylim(bottom=0)
    headroom(ax)


def title(summary: dict[str, Any]) -> str:
    mach, code = summary.get("machine", {}), summary.get("code", {})
    date = str(summary.get("started_utc", ""))[:10]
    kind = str(summary.get("mode", "")).split(" (")[0]  # without the explanation
    dirty = "+changes" if code.get("dirty") else ""
    return (
        f"edgegw benchmark suite: {mach.get('cpu_count')} cores ({mach.get('cpu_model')}), "
        f"{date}, code {code.get('head')}{dirty}, {kind}\n"
        "green: target met, red: not met, blue: context, grey: ceiling in the same run, "
        "orange dashes: target"
    )


def render(summary: dict[str, Any]) -> Figure:
    plt.rcParams.update({"font.size": 8, "axes.titlesize": 8.5, "axes.titleweight": "bold"})
    fig = plt.figure(figsize=(10, 6.6), dpi=100, layout="constrained")
    grid = fig.add_gridspec(2, 3)
    throughput_panel(fig.add_subplot(grid[0, 0:2]), summary)
    steady_panel(
        fig.add_subplot(grid[0, 2]),
        summary,
        "cpu",
        "Steady load: gateway CPU",
        "% of one core",
    )
    steady_panel(fig.add_subplot(grid[1, 0]), summary, "rss", "Steady load: peak RSS, MB", "MB")
    catchup_panel(fig.add_subplot(grid[1, 1]), summary)
    cpu_per_value_panel(fig.add_subplot(grid[1, 2]), summary)
    fig.suptitle(title(summary), fontsize=8.5)
    return fig


def write_chart(summary: dict[str, Any], out_dir: Path) -> list[Path]:
    prefix = summary.get("prefix", "suite")
    paths = [out_dir / f"{prefix}-latest.png"]
    if not summary.get("no_run"):  # a re-summary is not a new measurement: no dated copy
        paths.insert(0, out_dir / f"{prefix}-{summary.get('stamp', 'undated')}.png")
    fig = render(summary)
    try:
        for path in paths:
            fig.savefig(path)
    finally:
        plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.chart",
        description="PNG chart of a bench.suite summary (PREFIX-<stamp>.png and "
        "PREFIX-latest.png next to it).",
    )
    p.add_argument("summary", nargs="?", type=Path, help="suite JSON (default: suite-latest.json)")
    p.add_argument("--results-dir", type=Path, default=RESULTS, help="where suite-latest.json is")
    args = p.parse_args(argv)
    path = args.summary or args.results_dir / "suite-latest.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print(f"cannot read {path}: {exc}", file=sys.stderr)
        return 2
    for out in write_chart(summary, path.parent):
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
