"""Prometheus text metrics and a health summary, served on a local HTTP port.

A deliberately small HTTP/1.1 server on asyncio streams (GET only, one response per
connection): the gateway must not depend on a web framework to say how it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from edgegw.app import Gateway

log = logging.getLogger(__name__)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(gateway: Gateway) -> str:
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{labels} {value:g}" for labels, value in samples)

    outbox = gateway.outbox
    forwarder = gateway.forwarder.status
    pipeline = gateway.pipeline
    metric("edgegw_outbox_depth", "gauge", "Events waiting for the broker.", [("", outbox.depth)])
    metric("edgegw_committed_total", "counter", "Events committed.", [("", gateway.committed)])
    metric(
        "edgegw_published_total",
        "counter",
        "Events acknowledged by the broker.",
        [("", forwarder.published)],
    )
    metric(
        "edgegw_outbox_dropped_total",
        "counter",
        "Events dropped by retention (announced by edgegw.gap/1 messages).",
        [("", outbox.dropped)],
    )
    metric(
        "edgegw_outbox_duplicates_total",
        "counter",
        "Events refused because their id was committed before.",
        [("", outbox.duplicates)],
    )
    metric(
        "edgegw_intake_waits_total",
        "counter",
        "Times intake waited for the forwarder: reading outpaced sending (CPU overload).",
        [("", gateway.forwarder.intake_waits)],
    )
    alarm = gateway.outbox_alarm
    metric(
        "edgegw_outbox_alarm",
        "gauge",
        "1 while the outbox takes no data (disk full, I/O error): intake is stopped.",
        [(f'{{reason="{_escape(alarm)}"}}' if alarm else "", 1 if alarm else 0)],
    )
    metric(
        "edgegw_outbox_recovered_from_corruption",
        "gauge",
        "1 if the outbox was found damaged at start and moved aside.",
        [("", 1 if outbox.corrupt_moved_to else 0)],
    )
    metric(
        "edgegw_quarantined_total",
        "counter",
        "Values and events held back by a contract.",
        [("", pipeline.quarantined)],
    )
    metric(
        "edgegw_broker_up", "gauge", "1 while connected to the broker.", [("", forwarder.broker_up)]
    )
    up: list[tuple[str, float]] = []
    errors: list[tuple[str, float]] = []
    reads: list[tuple[str, float]] = []
    for source in gateway.sources:
        label = f'{{source="{_escape(source.name)}"}}'
        up.append((label, 1 if source.status.connected else 0))
        errors.append((label, source.status.errors))
        reads.append((label, source.status.reads))
    metric("edgegw_source_up", "gauge", "1 while the source is connected.", up)
    metric("edgegw_read_errors_total", "counter", "Failed requests per source.", errors)
    metric("edgegw_reads_total", "counter", "Answered requests per source.", reads)
    return "\n".join(lines) + "\n"


def health(gateway: Gateway) -> tuple[int, bytes]:
    failing = [
        f"source {s.name}: {s.status.last_error}" for s in gateway.sources if not s.status.connected
    ]
    if not gateway.forwarder.status.broker_up:
        failing.append(f"broker: {gateway.forwarder.status.last_error or 'not connected'}")
    if gateway.outbox_alarm:
        failing.append(f"outbox: {gateway.outbox_alarm}")
    body = {
        "status": "ok" if not failing else "failing",
        "failing": failing,
        "outbox_depth": gateway.outbox.depth,
        "sources": {s.name: s.status.connected for s in gateway.sources},
        "broker_up": gateway.forwarder.status.broker_up,
    }
    return (200 if not failing else 503), orjson.dumps(body)


async def serve(gateway: Gateway, host: str, port: int, ready: Callable[[int], None]) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5.0)
            parts = request.decode("latin-1").split()
            path = parts[1] if len(parts) >= 2 else ""
            if parts and parts[0] != "GET":
                status, body, kind = 405, b"GET only\n", "text/plain"
            elif path == "/metrics":
                status, body = 200, render_metrics(gateway).encode()
                kind = "text/plain; version=0.0.4"
            elif path == "/healthz":
                status, body = health(gateway)
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

    server = await asyncio.start_server(handle, host, port)
    bound = server.sockets[0].getsockname()[1]
    log.info("metrics on http://%s:%d/metrics and /healthz", host, bound)
    ready(bound)
    async with server:
        await server.serve_forever()
