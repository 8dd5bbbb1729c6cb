"""`edgegw demo`: simulator + broker + gateway + a subscriber printing what arrives."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

from edgegw.config.diagnostics import validate_document
from edgegw.config.model import GatewayConfig
from edgegw.config.yamlpos import load_yaml_text
from edgegw.errors import EdgeGwError

DEMO_CONFIG = "demo.yaml"


def demo_config_text() -> str:
    return resources.files("edgegw.demo").joinpath(DEMO_CONFIG).read_text()


def free_port(preferred: int | None = None) -> int:
    """`preferred` when it is free on loopback, else any free port."""
    candidates = [preferred, 0] if preferred else [0]
    for port in candidates:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise EdgeGwError("no free TCP port on 127.0.0.1")


async def wait_for_port(port: int, within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise EdgeGwError(
                    f"nothing listens on 127.0.0.1:{port} after {within:g} s"
                ) from None
            await asyncio.sleep(0.05)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


@contextlib.asynccontextmanager
async def mosquitto(port: int, workdir: str) -> AsyncIterator[str]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    conf = Path(workdir, "mosquitto.conf")
    # A few bytes to a temporary directory, once at start: not worth a thread.
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")  # noqa: ASYNC240
    process = await asyncio.create_subprocess_exec(
        binary, "-c", str(conf), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        await wait_for_port(port, 10.0)
        yield f"mosquitto {binary}"
    finally:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 5.0)
        except TimeoutError:
            process.kill()
            await process.wait()


@contextlib.asynccontextmanager
async def embedded_broker(port: int) -> AsyncIterator[str]:
    try:
        from amqtt.broker import Broker
    except ImportError:
        raise EdgeGwError(
            "no MQTT broker: install mosquitto (apt-get install mosquitto) or the embedded "
            "one (pip install 'edgegw[demo]')"
        ) from None
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
    )
    for noisy in ("amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    await broker.start()
    try:
        yield "embedded amqtt broker"
    finally:
        await broker.shutdown()


def _broker_kind(kind: str) -> str:
    has_mosquitto = shutil.which("mosquitto") is not None or os.path.exists("/usr/sbin/mosquitto")
    if kind == "mosquitto" and not has_mosquitto:
        raise EdgeGwError("mosquitto is not installed (apt-get install mosquitto)")
    if kind == "auto":
        return "mosquitto" if has_mosquitto else "embedded"
    return kind


def _broker(kind: str, port: int, workdir: str) -> contextlib.AbstractAsyncContextManager[str]:
    if _broker_kind(kind) == "mosquitto":
        return mosquitto(port, workdir)
    return embedded_broker(port)


def _print_message(topic: str, payload: bytes) -> None:
    try:
        message: Any = orjson.loads(payload)
    except orjson.JSONDecodeError:
        print(f"{topic}  {payload.decode(errors='replace')}", flush=True)
        return
    if "/schemas/" in topic:
        print(f"{topic}  (JSON Schema, {len(payload)} bytes, retained)", flush=True)
        return
    if isinstance(message, dict) and message.get("schema") == "edgegw.event/1":
        print(
            f"{message.get('ts', '')}  {topic}  EVENT key={message.get('key')} "
            f"data={message.get('data')}  seq={message.get('seq')}",
            flush=True,
        )
        return
    if not isinstance(message, dict) or "value" not in message:
        print(f"{topic}  {payload.decode(errors='replace')}", flush=True)
        return
    unit = f" {message['unit']}" if message.get("unit") else ""
    reason = f" ({message['reason']})" if message.get("reason") else ""
    print(
        f"{message.get('ts', '')}  {topic}  {message['value']!r}{unit}  "
        f"{message.get('quality')}{reason}  seq={message.get('seq')}",
        flush=True,
    )


def _subscribe(port: int, topic_filter: str) -> Any:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="edgegw-demo-subscriber")
    client.on_connect = lambda c, *_: c.subscribe(topic_filter, qos=1)
    client.on_message = lambda _c, _u, msg: _print_message(msg.topic, bytes(msg.payload))
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


async def _demo(duration: float | None, broker_kind: str, state_dir: str | None) -> None:
    from edgegw.app import Gateway
    from simulators.modbus_plc import ModbusPlc
    from simulators.opcua_plc import OpcUaPlc

    with tempfile.TemporaryDirectory(prefix="edgegw-demo-") as workdir:
        modbus_port = free_port(5020)
        opcua_port = free_port(4840)
        mqtt_port = free_port(1883)
        doc = load_yaml_text(demo_config_text(), "edgegw/demo/demo.yaml")
        doc.data["mqtt"]["url"] = f"mqtt://127.0.0.1:{mqtt_port}"
        doc.data["sources"][0]["url"] = f"tcp://127.0.0.1:{modbus_port}"
        filler = OpcUaPlc(host="127.0.0.1", port=opcua_port)
        doc.data["sources"][1]["url"] = filler.url
        doc.data["gateway"]["state_dir"] = state_dir or os.path.join(workdir, "state")
        if _broker_kind(broker_kind) == "embedded":
            doc.data["mqtt"]["version"] = "3.1.1"  # amqtt speaks MQTT 3.1.1 only
        config = validate_document(GatewayConfig, doc)
        plc = ModbusPlc(host="127.0.0.1", port=modbus_port, unit=1)
        await plc.start()
        await filler.start()
        try:
            async with _broker(broker_kind, mqtt_port, workdir) as broker_name:
                topic_filter = "#"  # a broker of our own: everything on it is the demo's
                print(
                    f"edgegw demo: Modbus PLC on tcp://127.0.0.1:{modbus_port}, OPC UA PLC on "
                    f"{filler.url}, {broker_name} "
                    f"on mqtt://127.0.0.1:{mqtt_port}, outbox in {config.gateway.state_dir}.\n"
                    f"Subscribed to '{topic_filter}'. Ctrl-C stops.",
                    flush=True,
                )
                subscriber = _subscribe(mqtt_port, topic_filter)
                gateway = Gateway(config)
                loop = asyncio.get_running_loop()
                for signum in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(signum, gateway.request_stop)
                if duration is not None:
                    loop.call_later(duration, gateway.request_stop)
                try:
                    await gateway.run()
                finally:
                    subscriber.loop_stop()
                    subscriber.disconnect()
        finally:
            await filler.stop()
            await plc.stop()


def run_demo(*, duration: float | None, broker: str, state_dir: str | None) -> int:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_demo(duration, broker, state_dir))
    print("edgegw demo: stopped.", file=sys.stderr)
    return 0
