"""Prometheus text metrics and a health summary, served on a local HTTP port.

A deliberately small HTTP/1.1 server on asyncio streams (GET only, one response per
connection): the gateway must not depend on a web framework to say how it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from edgegw.errors import EdgeGwError
from edgegw.outbox.backlog import age_seconds
from edgegw.service.health import GatewayHealth

log = logging.getLogger(__name__)

FAMILIES: dict[str, str] = {
    "edgegw_info": "gauge",
    "edgegw_uptime_seconds": "gauge",
    "edgegw_outbox_depth": "gauge",
    "edgegw_outbox_oldest_age_seconds": "gauge",
    "edgegw_committed_total": "counter",
    "edgegw_published_total": "counter",
    "edgegw_publish_refused_total": "counter",
    "edgegw_outbox_dropped_total": "counter",
    "edgegw_outbox_duplicates_total": "counter",
    "edgegw_event_conflicts_total": "counter",
    "edgegw_intake_waits_total": "counter",
    "edgegw_outbox_alarm": "gauge",
    "edgegw_outbox_recovered_from_corruption": "gauge",
    "edgegw_quarantined_total": "counter",
    "edgegw_broker_up": "gauge",
    "edgegw_broker_connects_total": "counter",
    "edgegw_sink_up": "gauge",
    "edgegw_sink_published_total": "counter",
    "edgegw_sink_refused_total": "counter",
    "edgegw_sink_connects_total": "counter",
    "edgegw_sink_lag_values": "gauge",
    "edgegw_sink_oldest_age_seconds": "gauge",
    "edgegw_outbox_unrouted_total": "counter",
    "edgegw_e2e_latency_seconds": "histogram",
    "edgegw_source_up": "gauge",
    "edgegw_reads_total": "counter",
    "edgegw_read_errors_total": "counter",
    "edgegw_source_availability_ratio": "gauge",
    "edgegw_source_outages_total": "counter",
    "edgegw_mttr_seconds": "gauge",
    "edgegw_tags_bad": "gauge",
    "edgegw_config_reloads_total": "counter",
    "edgegw_device_reads_total": "counter",
    "edgegw_device_errors_total": "counter",
    "edgegw_device_response_seconds": "gauge",
    "edgegw_device_breaker_open": "gauge",
}
"""Every metric family served on /metrics, with its Prometheus type (the dashboard and the
tests check against it)."""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(health: GatewayHealth) -> str:
    """The Prometheus text exposition of every family in FAMILIES."""
    lines: list[str] = []

    def metric(name: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {FAMILIES[name]}")
        lines.extend(f"{name}{labels} {value:g}" for labels, value in samples)

    def one(name: str, help_text: str, value: float) -> None:
        metric(name, help_text, [("", value)])

    outbox = health.outbox
    sinks = health.sinks
    info = f'{{version="{_escape(health.version)}",gateway="{_escape(health.gateway)}"}}'
    metric("edgegw_info", "Version and gateway id (always 1).", [(info, 1)])
    one("edgegw_uptime_seconds", "Seconds since the gateway started.", health.uptime)
    one(
        "edgegw_outbox_depth",
        "Values stored in the outbox: not yet acknowledged by every sink that selects them.",
        outbox.depth,
    )
    metric(
        "edgegw_outbox_oldest_age_seconds",
        "Age of the oldest value some sink has not acknowledged (0 when none waits; no "
        "sample while the outbox file cannot be read).",
        # No backlog per sink: the scan failed, and a 0 would read as "all delivered".
        [("", age_seconds(outbox.oldest_created, health.wall_time) or 0.0)] if outbox.sinks else [],
    )
    one("edgegw_committed_total", "Events committed to the outbox.", health.committed)
    one(
        "edgegw_published_total",
        "Events acknowledged by the broker and deleted.",
        sum(sink.published for sink in sinks),
    )
    one(
        "edgegw_publish_refused_total",
        "Publishes the broker refused (PUBACK >= 0x80); they stay in the outbox.",
        sum(sink.refused for sink in sinks),
    )
    one(
        "edgegw_outbox_dropped_total",
        "Events dropped by retention (announced by edgegw.gap/1 messages).",
        outbox.dropped,
    )
    one(
        "edgegw_outbox_duplicates_total",
        "Events refused because their id was committed before.",
        outbox.duplicates,
    )
    one(
        "edgegw_event_conflicts_total",
        "Business events detected again with other data than was sent under their key "
        "(held in the quarantine with rule conflict).",
        outbox.conflicts,
    )
    one(
        "edgegw_intake_waits_total",
        "Times intake waited for the forwarder: reading outpaced sending (CPU overload).",
        sum(sink.intake_waits for sink in sinks),
    )
    alarm = health.alarm
    metric(
        "edgegw_outbox_alarm",
        "1 while the outbox takes no data (disk full, I/O error): intake is stopped.",
        [(f'{{reason="{_escape(alarm)}"}}' if alarm else "", 1 if alarm else 0)],
    )
    one(
        "edgegw_outbox_recovered_from_corruption",
        "1 if the outbox was found damaged at start and moved aside.",
        1 if outbox.recovered_from_corruption else 0,
    )
    one(
        "edgegw_quarantined_total",
        "Values and events held back by a contract.",
        health.quarantined,
    )
    one("edgegw_broker_up", "1 while every sink is connected.", all(s.up for s in sinks))
    one(
        "edgegw_broker_connects_total",
        "Successful connections to the broker (more than 1: reconnects).",
        sum(sink.connects for sink in sinks),
    )
    for family, help_text, value_of in (
        ("edgegw_sink_up", "1 while the sink is connected.", lambda s: 1 if s.up else 0),
        ("edgegw_sink_published_total", "Messages the sink acknowledged.", lambda s: s.published),
        (
            "edgegw_sink_refused_total",
            "Messages the sink refused; they stay in the outbox.",
            lambda s: s.refused,
        ),
        ("edgegw_sink_connects_total", "Connections the sink made.", lambda s: s.connects),
    ):
        metric(
            family,
            help_text,
            [(f'{{sink="{_escape(sink.name)}"}}', value_of(sink)) for sink in sinks],
        )
    backlogs = outbox.sinks
    metric(
        "edgegw_sink_lag_values",
        "Values in the outbox the sink selects and has not acknowledged.",
        [(f'{{sink="{_escape(name)}"}}', backlog.waiting) for name, backlog in backlogs.items()],
    )
    metric(
        "edgegw_sink_oldest_age_seconds",
        "Age of the oldest value the sink has not acknowledged (0 when none waits).",
        [
            (
                f'{{sink="{_escape(name)}"}}',
                age_seconds(backlog.oldest_created, health.wall_time) or 0.0,
            )
            for name, backlog in backlogs.items()
        ],
    )
    one(
        "edgegw_outbox_unrouted_total",
        "Values not stored because no sink selects their kind and source (sinks[].select).",
        outbox.unrouted,
    )
    name = "edgegw_e2e_latency_seconds"
    lines.append(f"# HELP {name} Source timestamp to broker acknowledgement, per value.")
    lines.append(f"# TYPE {name} histogram")
    for sink in sinks[:1]:  # one sink today; per-sink families come with several sinks
        histogram = sink.latency
        for bound, count in histogram.buckets:
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            lines.append(f'{name}_bucket{{le="{le}"}} {count}')
        lines.append(f"{name}_sum {histogram.sum:g}")
        lines.append(f"{name}_count {histogram.count}")

    per_source: dict[str, list[tuple[str, float]]] = {
        family: []
        for family in (
            "edgegw_source_up",
            "edgegw_reads_total",
            "edgegw_read_errors_total",
            "edgegw_source_availability_ratio",
            "edgegw_source_outages_total",
            "edgegw_mttr_seconds",
            "edgegw_tags_bad",
        )
    }
    for source in health.sources:
        label = f'{{source="{_escape(source.name)}"}}'
        for family, value in (
            ("edgegw_source_up", 1 if source.up else 0),
            ("edgegw_reads_total", source.reads),
            ("edgegw_read_errors_total", source.errors),
            ("edgegw_source_availability_ratio", source.availability),
            ("edgegw_source_outages_total", source.outages),
            ("edgegw_mttr_seconds", source.mttr),
            ("edgegw_tags_bad", len(source.bad_tags)),
        ):
            if value is not None:
                per_source[family].append((label, value))
    help_texts = {
        "edgegw_source_up": "1 while the source is connected.",
        "edgegw_reads_total": "Answered requests per source.",
        "edgegw_read_errors_total": "Failed requests per source (timeouts, refusals, drops).",
        "edgegw_source_availability_ratio": "Share of the time since start the source was up.",
        "edgegw_source_outages_total": "Times the source went down (or failed its first "
        "connection).",
        "edgegw_mttr_seconds": "Mean time from a source going down to its recovery (absent "
        "until it recovered once).",
        "edgegw_tags_bad": "Tags that cannot be read while their source is up (an address the "
        "PLC lacks, a node the server does not know): edgegw status names them.",
    }
    for family, samples in per_source.items():
        metric(family, help_texts[family], samples)
    devices: dict[str, list[tuple[str, float]]] = {
        "edgegw_device_reads_total": [],
        "edgegw_device_errors_total": [],
        "edgegw_device_response_seconds": [],
        "edgegw_device_breaker_open": [],
    }
    for source in health.sources:
        for device in source.devices:
            label = f'source="{_escape(source.name)}",device="{_escape(device.name)}"'
            devices["edgegw_device_reads_total"].append((f"{{{label}}}", device.reads))
            devices["edgegw_device_response_seconds"].append((f"{{{label}}}", device.last_response))
            devices["edgegw_device_breaker_open"].append(
                (f"{{{label}}}", 1 if device.breaker_open else 0)
            )
            for kind, count in device.errors:
                devices["edgegw_device_errors_total"].append((f'{{{label},kind="{kind}"}}', count))
    device_help = {
        "edgegw_device_reads_total": "Answered requests per device of a Modbus line.",
        "edgegw_device_errors_total": "Failed requests per device of a Modbus line, by kind "
        "(timeout, crc, exception, wrong_reply).",
        "edgegw_device_response_seconds": "Response time of the last answered request.",
        "edgegw_device_breaker_open": "1 while the device's circuit breaker is open (it did "
        "not answer; asked only every breaker.retry).",
    }
    for family, samples in devices.items():
        metric(family, device_help[family], samples)
    reloads = health.reloads
    metric(
        "edgegw_config_reloads_total",
        "Config reloads on SIGHUP, by result.",
        [(f'{{result="{result}"}}', reloads[result]) for result in ("applied", "refused")],
    )
    return "\n".join(lines) + "\n"


def health_document(health: GatewayHealth) -> dict[str, Any]:
    """The gateway's state as /healthz serves it and `edgegw status` prints it."""
    failing = health.failing()
    rates = health.rates
    outbox = health.outbox
    sink = health.sinks[0]
    return {
        "status": "ok" if not failing else "failing",
        "failing": failing,
        "gateway": health.gateway,
        "version": health.version,
        "uptime_seconds": round(health.uptime, 1),
        "broker": {
            "up": sink.up,
            "address": sink.address,
            "connects": sink.connects,
            "last_error": sink.last_error,
            "published": sum(s.published for s in health.sinks),  # as the rate: every sink
            "published_per_second": rates.get("published", 0.0),
        },
        "sinks": {
            s.name: {
                "up": s.up,
                "address": s.address,
                "connects": s.connects,
                "last_error": s.last_error,
                "published": s.published,
                "refused": s.refused,
                "last_refusal": s.last_refusal,
                # None when the backlog could not be read (never a false 0)
                "waiting": None if backlog is None else backlog.waiting,
                "oldest_age_seconds": None
                if backlog is None
                else _rounded(age_seconds(backlog.oldest_created, health.wall_time)),
            }
            for s in health.sinks
            for backlog in (outbox.sinks.get(s.name),)
        },
        "outbox": {
            "depth": outbox.depth,
            "oldest_age_seconds": _rounded(age_seconds(outbox.oldest_created, health.wall_time)),
            "committed": health.committed,
            "committed_per_second": rates.get("committed", 0.0),
            "dropped": outbox.dropped,
            "quarantined": health.quarantined,
            "alarm": health.alarm,
        },
        "sources": {
            s.name: {
                "up": s.up,
                "reads": s.reads,
                "errors": s.errors,
                "reads_per_second": rates.get(f"reads:{s.name}", 0.0),
                "errors_per_second": rates.get(f"errors:{s.name}", 0.0),
                "availability": round(s.availability, 4),
                "outages": s.outages,
                "mttr_seconds": _rounded(s.mttr),
                "down_for_seconds": round(s.down_for, 1),
                "last_error": s.last_error,
                "bad_tags": dict(s.bad_tags),
                "devices": {
                    d.name: {
                        "unit": d.unit,
                        "reads": d.reads,
                        "errors": dict(d.errors),
                        "response_seconds": round(d.last_response, 4),
                        "breaker_open": d.breaker_open,
                        "last_error": d.last_error,
                    }
                    for d in s.devices
                },
            }
            for s in health.sources
        },
    }


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 1)


ReadHealth = Callable[[], Awaitable[GatewayHealth]]


async def start_http(read_health: ReadHealth, host: str, port: int) -> asyncio.Server:
    """Bind /metrics and /healthz, or say plainly why not (before any task group turns the
    OSError into a 39-line ExceptionGroup)."""
    try:
        return await asyncio.start_server(lambda r, w: _handle(read_health, r, w), host, port)
    except OSError as exc:
        # asyncio's text repeats the address; the errno's own words are enough.
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        hint = (
            ": another process listens there (another edgegw?); choose a free port"
            if exc.errno == errno.EADDRINUSE
            else ""
        )
        raise EdgeGwError(f"http.listen {host}:{port}: cannot listen: {why}{hint}") from None


async def serve(server: asyncio.Server) -> None:
    bound = server.sockets[0].getsockname()
    log.info("metrics on http://%s:%d/metrics and /healthz", bound[0], bound[1])
    async with server:
        await server.serve_forever()


async def _handle(
    read_health: ReadHealth, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        request = await asyncio.wait_for(reader.readline(), 5.0)
        parts = request.decode("latin-1").split()
        path = parts[1] if len(parts) >= 2 else ""
        if parts and parts[0] != "GET":
            status, body, kind = 405, b"GET only\n", "text/plain"
        elif path == "/metrics":
            status, body = 200, render_metrics(await read_health()).encode()
            kind = "text/plain; version=0.0.4"
        elif path == "/healthz":
            state = health_document(await read_health())
            status = 200 if state["status"] == "ok" else 503
            body = orjson.dumps(state)
            kind = "application/json"
        else:
            status, body, kind = 404, b"try /metrics or /healthz\n", "text/plain"
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}.get(
            status, "Service Unavailable"
        )
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
    except (TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
