"""The books behind the KPIs: latency histogram, availability and MTTR, what a reload changes."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from edgegw.histogram import Histogram
from edgegw.service.reload import diff_configs
from edgegw.sources import base
from edgegw.sources.base import SourceStatus
from tests.support.gateway import bench_tags, build_config, config_dict

pytestmark = pytest.mark.timeout(30)


def test_histogram_is_cumulative_and_bounds_are_inclusive() -> None:
    histogram = Histogram((0.1, 1.0))
    for value in (0.1, 0.5, 1.0, 7.0, -2.0):
        histogram.observe(value)
    assert histogram.cumulative() == [(0.1, 2), (1.0, 4), (float("inf"), 5)]
    assert histogram.count == 5
    assert histogram.sum == pytest.approx(8.6)  # the negative one (clock skew) counts as 0


def test_many_observations_of_one_value_count_as_each_of_them() -> None:
    one_by_one, at_once = Histogram((0.1, 1.0)), Histogram((0.1, 1.0))
    for value, count in ((0.05, 3), (0.5, 2), (-1.0, 4), (9.0, 1)):
        for _ in range(count):
            one_by_one.observe(value)
        at_once.observe_many(value, count)
    assert (
        at_once.cumulative() == one_by_one.cumulative() == [(0.1, 7), (1.0, 9), (float("inf"), 10)]
    )
    assert (at_once.count, at_once.sum) == (one_by_one.count, pytest.approx(one_by_one.sum))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(base.time, "monotonic", fake)
    return fake


def test_availability_and_mttr_over_two_outages(clock: Clock) -> None:
    status = SourceStatus("plc")
    clock.now += 1
    status.connected = True  # started fine: no outage
    clock.now += 9
    status.connected = False  # outage 1: 5 s
    clock.now += 5
    status.connected = False  # still down (a failed reconnect): same outage
    status.connected = True
    clock.now += 10
    status.connected = False  # outage 2: 15 s
    clock.now += 15
    status.connected = True
    clock.now += 10
    assert status.outages == 2
    assert status.mttr() == pytest.approx(10.0)
    # up 9 + 10 + 10 of 49 s observed: the first second was the connect, not an outage
    assert status.availability() == pytest.approx(29 / 49)
    assert status.down_for() == 0


def test_a_failed_first_connection_is_an_outage_from_the_start(clock: Clock) -> None:
    status = SourceStatus("plc")
    clock.now += 3
    status.connected = False
    clock.now += 4
    assert status.outages == 1
    assert status.down_for() == pytest.approx(7)
    assert status.mttr() is None  # not repaired yet: no figure, not 0 s
    status.connected = True
    assert status.mttr() == pytest.approx(7)
    assert status.availability() == 0


def _config(tmp_path: Path, **source: object) -> dict[str, object]:
    return config_dict(tmp_path, 1883, 5020, bench_tags(2), **source)


def test_reload_diff_names_sources_and_what_needs_a_restart(tmp_path: Path) -> None:
    old = _config(tmp_path)
    new = copy.deepcopy(old)
    new["sources"][0]["tags"] = bench_tags(3)  # type: ignore[index]
    added = copy.deepcopy(old["sources"][0])  # type: ignore[index]
    added["name"] = "plc2"
    new["sources"].append(added)  # type: ignore[attr-defined]
    changes = diff_configs(build_config(old), build_config(new))
    assert changes.changed == ["plc"]
    assert changes.added == ["plc2"]
    assert changes.removed == []
    assert changes.pipeline
    assert not changes.mqtt
    assert not changes.needs_restart
    assert changes.describe() == "sources added: plc2; sources changed: plc"

    renamed = copy.deepcopy(old)
    renamed["gateway"]["id"] = "other"  # type: ignore[index]
    renamed["mqtt"]["keepalive"] = "5s"  # type: ignore[index]
    changes = diff_configs(build_config(old), build_config(renamed))
    assert changes.needs_restart == ["gateway.id"]
    assert changes.mqtt

    assert diff_configs(build_config(old), build_config(copy.deepcopy(old))).empty


def test_connecting_at_start_is_no_downtime(clock: Clock) -> None:
    status = SourceStatus("plc")
    clock.now += 1.5  # the first connection takes its time, and succeeds
    status.connected = True
    clock.now += 12.5
    assert status.availability() == 1.0
    assert status.outages == 0
    assert status.mttr() is None


def test_a_deliberate_stop_is_no_outage(clock: Clock) -> None:
    status = SourceStatus("plc")
    status.connected = True
    clock.now += 10
    status.stopped()
    status.connected = False  # what a driver's cleanup may still do
    clock.now += 10
    assert not status.connected
    assert status.outages == 0
    assert status.availability() == pytest.approx(0.5)
