"""`edgegw status` and /healthz from one snapshot: each sink shown, a sink that is down named."""

from __future__ import annotations

from edgegw.cli.status import render_status
from edgegw.histogram import Histogram
from edgegw.outbox.store import OutboxHealth
from edgegw.service.health import GatewayHealth
from edgegw.service.metrics import health_document, render_metrics
from edgegw.sinks.base import SinkHealth
from edgegw.sources.base import SourceHealth


def sink(name: str, up: bool, published: int) -> SinkHealth:
    error = None if up else "connection refused"
    latency = Histogram().snapshot()
    return SinkHealth(name, f"{name}.example:1883", up, 1, error, published, 0, None, 0, latency)


def health() -> GatewayHealth:
    source = SourceHealth("plc", True, 10, 0, 1.0, 0, None, 0.0, None, ())
    return GatewayHealth(
        gateway="gw1",
        version="0.1.0",
        uptime=60.0,
        wall_time=1_000_000.0,
        committed=120,
        quarantined=0,
        alarm=None,
        reloads={"applied": 0, "refused": 0},
        rates={},
        outbox=OutboxHealth(5, None, 0, 0, 0, False),
        sinks=(sink("mqtt", True, 120), sink("cloud", False, 40)),
        sources=(source,),
    )


def test_each_sink_has_a_line_and_one_that_is_down_is_named() -> None:
    document = health_document(health())
    assert document["status"] == "failing"
    assert document["failing"] == ["sink cloud: connection refused"]
    text = render_status(document)
    assert "sink     mqtt  mqtt.example:1883  up  120 published  0 refused  1 connects" in text
    assert "sink     cloud  cloud.example:1883  DOWN  40 published" in text
    assert "failing: sink cloud: connection refused" in text


def test_metrics_per_sink_and_their_sums() -> None:
    text = render_metrics(health()).splitlines()
    assert 'edgegw_sink_up{sink="cloud"} 0' in text
    assert 'edgegw_sink_published_total{sink="mqtt"} 120' in text
    assert "edgegw_published_total 160" in text
    assert "edgegw_broker_up 0" in text  # not every sink is connected
