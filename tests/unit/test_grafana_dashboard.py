"""The shipped Grafana dashboard queries exactly the metric families the gateway serves.

`edgegw.service.metrics.FAMILIES` is the authority: a query naming a metric that is not served, or a
family no panel shows, fails here, so the dashboard cannot drift from the code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgegw.service.metrics import FAMILIES

DASHBOARD = Path(__file__).resolve().parents[2] / "grafana" / "edgegw-dashboard.json"
DATASOURCE = "${DS_PROMETHEUS}"
METRIC = re.compile(r"edgegw_[a-z0-9_]+")
SELECTOR = re.compile(r"(edgegw_[a-z0-9_]+)(\{[^}]*\})?")
SERIES_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}

pytestmark = pytest.mark.timeout(30)


def load() -> dict[str, Any]:
    with DASHBOARD.open(encoding="utf-8") as file:
        loaded: dict[str, Any] = json.load(file)
    return loaded


def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, and the panels nested in (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from walk(panel.get("panels", []))


def name(panel: dict[str, Any]) -> str:
    return f"panel id={panel.get('id')} {panel.get('title')!r}"


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every templating variable."""
    for panel in walk(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield f"{name(panel)} refId={target.get('refId')}", target.get("expr", "")
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        yield f"variable ${variable.get('name')}", text


def family_of(metric: str) -> str | None:
    """The served family a series name belongs to, or None if the gateway serves no such name."""
    if metric in FAMILIES:
        return metric if FAMILIES[metric] not in SERIES_SUFFIXES else None
    for kind, suffixes in SERIES_SUFFIXES.items():
        for suffix in suffixes:
            base = metric.removesuffix(suffix)
            if base != metric and FAMILIES.get(base) == kind:
                return base
    return None


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load()


def test_parses_and_identifies_itself() -> None:
    loaded = load()
    assert loaded["uid"] == "edgegw-overview"
    assert loaded["title"] == "edgegw — edge gateway"
    assert loaded.get("id") is None, "an importable dashboard carries no database id"
    inputs = {entry["name"]: entry for entry in loaded.get("__inputs", [])}
    assert inputs.get("DS_PROMETHEUS", {}).get("pluginId") == "prometheus", loaded.get("__inputs")
    variables = {v["name"]: v for v in loaded["templating"]["list"]}
    assert {"instance", "source"} <= variables.keys(), sorted(variables)
    assert variables["source"]["multi"], "$source is multi-value"
    assert variables["source"]["includeAll"], "$source offers All"


def problem(metric: str) -> str | None:
    """Why the gateway serves no series of this name, or None if it does."""
    if family_of(metric) is not None:
        return None
    if metric in FAMILIES:
        return f"{metric} is a {FAMILIES[metric]}: query its _bucket/_sum/_count series"
    for suffix in ("_bucket", "_sum", "_count"):
        base = metric.removesuffix(suffix)
        if base != metric and base in FAMILIES:
            return f"{base} is a {FAMILIES[base]}, which has no {suffix} series"
    return f"{metric} is not in edgegw.service.metrics.FAMILIES"


def test_every_query_names_only_served_series(dashboard: dict[str, Any]) -> None:
    wrong = [
        f"{where}: {why}"
        for where, expr in queries(dashboard)
        for metric in METRIC.findall(expr)
        if (why := problem(metric)) is not None
    ]
    assert not wrong, "queries name series the gateway does not serve:\n" + "\n".join(wrong)


def test_the_series_check_knows_histograms_from_the_rest() -> None:
    histogram = next(f for f, kind in FAMILIES.items() if kind == "histogram")
    counter = next(f for f, kind in FAMILIES.items() if kind == "counter")
    assert problem(f"{histogram}_bucket") is None
    assert problem(f"{histogram}_count") is None
    assert problem(histogram) is not None
    assert problem(counter) is None
    assert problem(f"{counter}_bucket") is not None
    assert problem("edgegw_no_such_metric") is not None


def test_every_family_has_a_panel(dashboard: dict[str, Any]) -> None:
    used = {
        family_of(metric)
        for panel in walk(dashboard["panels"])
        for target in panel.get("targets", [])
        for metric in METRIC.findall(target.get("expr", ""))
    }
    missing = sorted(set(FAMILIES) - used)
    assert not missing, f"metric families without a panel: {missing} (add one to {DASHBOARD})"


def test_every_selector_filters_by_instance(dashboard: dict[str, Any]) -> None:
    wrong = []
    for where, expr in queries(dashboard):
        if where == "variable $instance":
            continue  # lists the instances, so it cannot filter by them
        for metric, labels in SELECTOR.findall(expr):
            if 'instance=~"$instance"' not in labels:
                wrong.append(f"{where}: {metric}{labels}")
    assert not wrong, 'selectors without instance=~"$instance":\n' + "\n".join(wrong)


def test_panel_ids_are_unique(dashboard: dict[str, Any]) -> None:
    seen: dict[int, str] = {}
    for panel in walk(dashboard["panels"]):
        assert "id" in panel, f"{name(panel)} has no id"
        assert panel["id"] not in seen, f"{name(panel)} reuses the id of {seen[panel['id']]}"
        seen[panel["id"]] = name(panel)


def test_panels_fit_the_grid_without_overlapping(dashboard: dict[str, Any]) -> None:
    placed: list[tuple[str, int, int, int, int]] = []
    for panel in walk(dashboard["panels"]):
        grid = panel.get("gridPos")
        assert grid, f"{name(panel)} has no gridPos"
        x, y, w, h = grid["x"], grid["y"], grid["w"], grid["h"]
        assert min(w, h) > 0, f"{name(panel)}: empty gridPos {grid}"
        assert min(x, y) >= 0, f"{name(panel)}: negative gridPos {grid}"
        assert x + w <= 24, f"{name(panel)} runs past the 24-column grid: {grid}"
        if panel["type"] == "row":
            assert (x, w, h) == (0, 24, 1), f"{name(panel)}: a row spans x=0 w=24 h=1, got {grid}"
        for other, ox, oy, ow, oh in placed:
            if x < ox + ow and ox < x + w and y < oy + oh and oy < y + h:
                pytest.fail(f"{name(panel)} {grid} overlaps {other}")
        placed.append((f"{name(panel)} {grid}", x, y, w, h))


def test_every_panel_and_target_uses_the_datasource_input(dashboard: dict[str, Any]) -> None:
    def uid(item: dict[str, Any]) -> object:
        return (item.get("datasource") or {}).get("uid")

    wrong = []
    for panel in walk(dashboard["panels"]):
        if panel["type"] == "row":
            assert not panel.get("targets"), f"{name(panel)}: a row has no queries"
            if panel.get("datasource") is not None and uid(panel) != DATASOURCE:
                wrong.append(f"{name(panel)}: {panel['datasource']}")
            continue
        if uid(panel) != DATASOURCE:
            wrong.append(f"{name(panel)}: {panel.get('datasource')}")
        if not panel.get("targets"):
            wrong.append(f"{name(panel)}: no targets")
        wrong.extend(
            f"{name(panel)} refId={target.get('refId')}: {target.get('datasource')}"
            for target in panel.get("targets", [])
            if uid(target) != DATASOURCE
        )
    wrong.extend(
        f"variable ${variable['name']}: {variable.get('datasource')}"
        for variable in dashboard["templating"]["list"]
        if variable.get("type") == "query" and uid(variable) != DATASOURCE
    )
    assert not wrong, f"datasource is not {DATASOURCE}:\n" + "\n".join(wrong)


def test_every_panel_explains_itself(dashboard: dict[str, Any]) -> None:
    bare = [
        name(panel)
        for panel in walk(dashboard["panels"])
        if panel["type"] != "row" and len(panel.get("description", "").strip()) < 20
    ]
    assert not bare, f"panels without a description for the operator: {bare}"
