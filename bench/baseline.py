"""Baseline publishers: how fast can a Python client push QoS 1 messages to this broker?

Run as a separate process by `bench.e2e` (so it shares no GIL with the counting subscriber),
or alone::

    .venv/bin/python -m bench.baseline --port 1883 --client paho --seconds 8

It prints JSON lines on stdout: ``{"event": "window_start", ...}`` when the measured window
begins (after a warm-up), then ``{"event": "result", ...}`` with the rate of PUBACKs received
in the window.

Clients:

* ``paho``: raw paho-mqtt 2.2, MQTT 5, driven in one thread without paho's own loop thread:
  `publish()` writes to the socket at once, `loop()` does select + read of every PUBACK ready.
  Our own window of `--window` unacknowledged messages (paho's in-flight cap set to 0 = none,
  so paho never queues and rescans). No MQTT 5 properties.
* ``edgegw``: the gateway's own `edgegw.sinks.mqtt.MqttClient` alone (paho driven from asyncio
  with add_reader/add_writer), same window, with the same user properties (`id`, `schema`,
  `trace`) and content type as the forwarder sends: the MQTT layer of edgegw without the
  outbox, the sources and the pipeline.

Payloads are edgegw-like telemetry JSON documents of about `--size` bytes with a unique `id`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

TOPIC_PREFIX = "bench/base/"


def _emit(event: str, **fields: Any) -> None:
    sys.stdout.write(orjson.dumps({"event": event, **fields}).decode() + "\n")
    sys.stdout.flush()


def _emit_result(
    client: str,
    window: int,
    payload_bytes: int,
    t0: float,
    state: dict[str, Any],
    window_acked: int,
    sent: int,
) -> None:
    """The measured window's figures, shared by every baseline client."""
    t1 = time.monotonic()
    acked = state["acked"] - window_acked
    _emit(
        "result",
        client=client,
        window=window,
        payload_bytes=payload_bytes,
        seconds=round(t1 - t0, 3),
        acked=acked,
        msgs_per_s=round(acked / (t1 - t0), 1),
        refused=state["refused"],
        sent_total=sent,
        t=time.time(),
    )


def make_payload_factory(size: int) -> Callable[[int], bytes]:
    """n -> a telemetry-like JSON document of about `size` bytes with a unique id."""
    base: dict[str, Any] = {
        "schema": "edgegw.telemetry/1",
        "id": "",
        "gateway": "bench-gw",
        "source": "base",
        "tag": "r0",
        "value": 12345,
        "unit": None,
        "quality": "good",
        "ts": "2026-11-29T05:37:14.123Z",
        "gw_ts": "2026-11-29T05:37:14.125Z",
        "seq": 0,
        "trace": os.urandom(8).hex(),
        "pad": "",
    }
    probe = len(orjson.dumps(base | {"id": "0" * 36}))
    base["pad"] = "x" * max(0, size - probe)
    dumps = orjson.dumps

    def make(n: int) -> bytes:
        base["id"] = f"00000000-0000-5000-8000-{n:012d}"
        base["seq"] = n
        return dumps(base)

    return make


def run_paho(host: str, port: int, seconds: float, warmup: float, window: int, size: int) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"bench-base-{os.getpid()}", protocol=mqtt.MQTTv5
    )
    client.max_inflight_messages_set(0)  # no paho cap: our window is the only one
    client.max_queued_messages_set(0)
    state = {"acked": 0, "refused": 0, "connected": False}

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        state["connected"] = not reason.is_failure

    def on_publish(_c: Any, _u: Any, _mid: int, reason: Any, _p: Any) -> None:
        state["acked"] += 1  # single thread: a plain counter is safe
        if reason.value >= 0x80:
            state["refused"] += 1

    client.on_connect = on_connect
    client.on_publish = on_publish
    client.connect(host, port, keepalive=60)
    deadline = time.monotonic() + 10
    while not state["connected"]:
        client.loop(0.1)
        if time.monotonic() > deadline:
            raise SystemExit("baseline: no CONNACK")
    make = make_payload_factory(size)
    topics = [f"{TOPIC_PREFIX}r{i}" for i in range(1000)]
    sent = 0
    publish = client.publish
    loop = client.loop
    start = time.monotonic()
    t_window = start + warmup
    t_end = t_window + seconds
    window_acked = -1
    t0 = 0.0
    while True:
        now = time.monotonic()
        if window_acked < 0 and now >= t_window:
            window_acked, t0 = state["acked"], now
            _emit("window_start", t=time.time())
        if now >= t_end:
            break
        room = window - (sent - state["acked"])
        for _ in range(room):
            publish(topics[sent % 1000], make(sent), 1)
            sent += 1
        loop(1.0)
    _emit_result("paho", window, len(make(0)), t0, state, window_acked, sent)
    # Let the last PUBACKs in, then leave cleanly.
    deadline = time.monotonic() + 5
    while state["acked"] < sent and time.monotonic() < deadline:
        loop(0.1)
    client.disconnect()


async def run_edgegw(
    host: str, port: int, seconds: float, warmup: float, window: int, size: int
) -> None:
    from edgegw.sinks.mqtt.client import MqttClient
    from edgegw.sinks.mqtt.settings import MqttSettings

    state = {"acked": 0, "refused": 0}
    room = asyncio.Event()

    def on_ack(_token: int, rc: int) -> None:
        state["acked"] += 1
        if rc >= 0x80:
            state["refused"] += 1
        room.set()

    settings = MqttSettings(host=host, port=port, client_id=f"bench-edgegw-{os.getpid()}")
    client = MqttClient(settings, on_ack=on_ack)
    await client.connect()
    make = make_payload_factory(size)
    topics = [f"{TOPIC_PREFIX}r{i}" for i in range(1000)]
    trace = os.urandom(8).hex()
    sent = 0
    start = time.monotonic()
    t_window = start + warmup
    t_end = t_window + seconds
    window_acked = -1
    t0 = 0.0
    while True:
        now = time.monotonic()
        if window_acked < 0 and now >= t_window:
            window_acked, t0 = state["acked"], now
            _emit("window_start", t=time.time())
        if now >= t_end:
            break
        while client.in_flight < window:
            payload = make(sent)
            client.publish(
                topics[sent % 1000],
                payload,
                qos=1,
                token=sent,
                user_properties=(
                    ("id", f"00000000-0000-5000-8000-{sent:012d}"),
                    ("schema", "edgegw.telemetry/1"),
                    ("trace", trace),
                ),
            )
            sent += 1
        room.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(room.wait(), 1.0)
    _emit_result("edgegw", window, len(make(0)), t0, state, window_acked, sent)
    await client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.baseline",
        description="QoS 1 publish rate of a bare MQTT client to a broker (see module docstring).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--client", choices=["paho", "edgegw"], default="paho")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--window", type=int, default=100, help="unacknowledged publishes")
    parser.add_argument("--size", type=int, default=300, help="payload bytes (about)")
    args = parser.parse_args(argv)
    if args.client == "paho":
        run_paho(args.host, args.port, args.seconds, args.warmup, args.window, args.size)
    else:
        asyncio.run(
            run_edgegw(args.host, args.port, args.seconds, args.warmup, args.window, args.size)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
