"""`edgegw demo`: two PLC simulators, a broker, the gateway, and a subscriber that prints what
arrives, exactly as it arrives, then a summary of what the run showed."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import yaml

from edgegw.config.diagnostics import validate_document
from edgegw.config.model import GatewayConfig
from edgegw.config.yamlpos import load_yaml_text
from edgegw.errors import EdgeGwError, OutboxError

if TYPE_CHECKING:
    from edgegw.service.app import Gateway

DEMO_CONFIG = "demo.yaml"
# The ports the demo prefers (the README's and the simulators' defaults); any free one else.
PREFERRED_PORTS = {"modbus": 5020, "opcua": 4840, "mqtt": 1883, "http": 9108}
SUBSCRIBE_WITHIN = 10.0  # seconds for the demo's own subscriber to be in place
QUIET_AFTER_STOP = 0.3  # seconds without a message: the broker has delivered the last one
TAIL_WITHIN = 2.0  # at most this long waiting for the last messages after the gateway stops
# Simulation steps, slower than the simulators' defaults (0.1 s) so that a person can follow
# the output: a press batch every ~8 s, a filler batch every ~16 s, about 3 messages a second.
PRESS_TICK = 0.2
FILLER_TICK = 0.5


def demo_config_text() -> str:
    return resources.files("edgegw.demo").joinpath(DEMO_CONFIG).read_text()


def demo_config_location() -> str:
    """Where the packaged demo config is, as a path a user can pass to `edgegw check -c`."""
    location = resources.files("edgegw.demo").joinpath(DEMO_CONFIG)
    return str(location) if isinstance(location, Path) else f"edgegw/demo/{DEMO_CONFIG}"


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
        yield f"mosquitto ({binary})"
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
        yield "the embedded amqtt broker (MQTT 3.1.1)"
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


# --- what the subscriber receives ------------------------------------------------------------


@dataclass
class Tally:
    """What the demo's subscriber received: the counts of the summary."""

    values: int = 0
    events: Counter[str] = field(default_factory=Counter)
    seqs: set[int] = field(default_factory=set)
    repeated: int = 0  # a seq received again (QoS 1 may deliver twice; consumers dedupe on id)
    gap_notices: int = 0  # edgegw.gap/1 messages: seqs the gateway itself dropped
    tags: set[str] = field(default_factory=set)
    last_message_at: float = 0.0  # time.monotonic() of the latest message

    def count_seq(self, seq: object) -> None:
        if isinstance(seq, int):
            if seq in self.seqs:
                self.repeated += 1
            self.seqs.add(seq)


def _json(value: object) -> str:
    return orjson.dumps(value).decode()


def describe(topic: str, payload: bytes, tally: Tally) -> list[str]:
    """The lines to print for one received message, counting it in `tally`.

    A message is printed the way `mosquitto_sub -v` prints it: the topic, a space, the payload
    exactly as it went over the wire. Only the retained JSON Schemas (a kilobyte or two each)
    are shortened. A business event gets an EVENT line before it, a gap notice a GAP line.
    """
    tally.last_message_at = time.monotonic()
    wire = f"{topic} {payload.decode(errors='replace')}"
    try:
        message: Any = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return [wire]  # the gateway's status: online / offline
    if not isinstance(message, dict):
        return [wire]
    if "/schemas/" in topic or "$schema" in message:
        return [f"{topic} (a JSON Schema of the messages, {len(payload)} bytes, retained)"]
    kind = message.get("schema")
    if kind == "edgegw.telemetry/1":
        tally.values += 1
        tally.tags.add(f"{message.get('source')}.{message.get('tag')}")
        tally.count_seq(message.get("seq"))
        return [wire]
    if kind == "edgegw.batch/1":
        for item in message.get("items") or []:
            if isinstance(item, dict):
                tally.values += 1
                tally.tags.add(f"{item.get('source')}.{item.get('tag')}")
                tally.count_seq(item.get("seq"))
        return [wire]
    if kind == "edgegw.event/1":
        event_type = str(message.get("type"))
        tally.events[event_type] += 1
        tally.count_seq(message.get("seq"))
        return [
            f"EVENT {event_type} key {_json(message.get('key'))} "
            f"data {_json(message.get('data'))} seq {message.get('seq')}",
            wire,
        ]
    if kind == "edgegw.gap/1":
        tally.gap_notices += 1
        tally.count_seq(message.get("seq"))
        return [
            f"GAP the gateway dropped {message.get('count')} messages "
            f"(seqs {_json(message.get('dropped'))}): {message.get('reason')}",
            wire,
        ]
    return [wire]


def missing_ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """The seqs absent between the lowest and the highest received, as inclusive ranges."""
    ordered = sorted(set(seqs))
    return [
        (before + 1, after - 1)
        for before, after in itertools.pairwise(ordered)
        if after - before > 1
    ]


def _ranges_text(ranges: list[tuple[int, int]], limit: int = 8) -> str:
    parts = [str(a) if a == b else f"{a}-{b}" for a, b in ranges[:limit]]
    if len(ranges) > limit:
        parts.append(f"and {len(ranges) - limit} more ranges")
    return ", ".join(parts)


@dataclass(frozen=True)
class RunFacts:
    """What the summary says besides the tally: where things were, how it went."""

    seconds: float
    config_path: str
    config_kept: bool  # the state directory (with the config) outlives the demo
    mqtt_port: int
    quarantined: int | None
    quarantine_error: str | None = None
    configured_tags: tuple[str, ...] = ()  # source.tag of every tag in the config


def summary(tally: Tally, facts: RunFacts) -> list[str]:
    seqs = tally.seqs
    ranges = missing_ranges(seqs)
    missing = sum(b - a + 1 for a, b in ranges)
    lines = [f"edgegw demo: stopped after {facts.seconds:.1f} s. The subscriber received:"]
    tags = len(tally.tags)
    lines.append(f"  values       {tally.values} (telemetry of {tags} tag{'s' * (tags != 1)})")
    silent = [tag for tag in facts.configured_tags if tag not in tally.tags]
    if silent:
        lines.append(
            f"  silent tags  {', '.join(silent)}: not one value (the gateway's log says why)"
        )
    events = ", ".join(f"{count} {name}" for name, count in sorted(tally.events.items()))
    lines.append(f"  events       {sum(tally.events.values())}{f' ({events})' if events else ''}")
    if not seqs:
        lines.append("  seq gaps     none seen (no numbered message arrived)")
    elif not ranges:
        lines.append(f"  seq gaps     0 (seq {min(seqs)}..{max(seqs)}, every one arrived)")
    else:
        lines.append(
            f"  seq gaps     {len(ranges)} ({missing} seqs missing between {min(seqs)} and "
            f"{max(seqs)}: {_ranges_text(ranges)})"
        )
    if tally.repeated:
        lines.append(
            f"  repeated     {tally.repeated} (QoS 1 delivers at least once; dedupe on 'id')"
        )
    if tally.gap_notices:
        lines.append(f"  gap notices  {tally.gap_notices} (edgegw.gap/1: the gateway dropped data)")
    if facts.quarantined is None:
        lines.append(f"  quarantined  unknown ({facts.quarantine_error})")
    elif facts.quarantined:
        look = (
            f"edgegw quarantine -c {facts.config_path}"
            if facts.config_kept
            else "run with --state-dir DIR to keep them for edgegw quarantine"
        )
        lines.append(f"  quarantined  {facts.quarantined} records held back by a contract ({look})")
    else:
        lines.append("  quarantined  0 records (every value and event met its contract)")
    lines += _next_steps(facts)
    return lines


def _next_steps(facts: RunFacts) -> list[str]:
    packaged = demo_config_location()
    sub = f"mosquitto_sub -h 127.0.0.1 -p {facts.mqtt_port} -t '#' -v"
    if shutil.which("mosquitto_sub") is None:
        sub += "   (apt-get install mosquitto-clients)"
    lines = [
        "What to try next:",
        f"  edgegw check -c {packaged}",
        "      the demo's config: both PLCs, the tags, the event; copy it to start your own",
        "  while a demo runs, in another terminal:",
        f"      {sub}",
        f"      edgegw status -c {facts.config_path if facts.config_kept else 'CONFIG'}"
        + ("" if facts.config_kept else "   (CONFIG: the path the demo prints at start)"),
    ]
    if facts.config_kept:
        lines += [
            f"  edgegw outbox stats -c {facts.config_path}",
            f"  edgegw quarantine -c {facts.config_path}",
            "      the outbox this demo left behind",
        ]
    else:
        lines += [
            "  edgegw demo --state-dir ./demo-state",
            "      keeps the outbox and demo.yaml, for `edgegw outbox stats -c "
            "./demo-state/demo.yaml`",
        ]
    docs = Path(__file__).resolve().parents[2] / "docs" / "README.md"
    where = str(docs) if docs.is_file() else "docs/README.md of edgegw"
    lines.append(f"  {where}: configuration, protocols, business events, operations")
    return lines


# --- the run ---------------------------------------------------------------------------------


def _subscribe(port: int, topic_filter: str, tally: Tally) -> tuple[Any, threading.Event]:
    """A paho client printing every message it receives, and the event set on its SUBACK."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="edgegw-demo-subscriber")
    subscribed = threading.Event()

    def on_message(_client: Any, _userdata: Any, message: Any) -> None:
        for line in describe(message.topic, bytes(message.payload), tally):
            print(line, flush=True)

    client.on_connect = lambda c, *_: c.subscribe(topic_filter, qos=1)
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client, subscribed


async def _wait_quiet(tally: Tally) -> None:
    """After the gateway stopped: until the broker has delivered what it was sent."""
    deadline = time.monotonic() + TAIL_WITHIN
    while time.monotonic() < deadline:
        if time.monotonic() - tally.last_message_at >= QUIET_AFTER_STOP:
            return
        await asyncio.sleep(0.05)


def _effective_config(
    broker_kind: str, state_dir: str, ports: dict[str, int], opcua_url: str
) -> tuple[GatewayConfig, str]:
    """The demo config with what the demo started filled in: (validated config, YAML text)."""
    doc = load_yaml_text(demo_config_text(), f"edgegw/demo/{DEMO_CONFIG}")
    data = doc.data
    data["mqtt"]["url"] = f"mqtt://127.0.0.1:{ports['mqtt']}"
    if broker_kind == "embedded":
        data["mqtt"]["version"] = "3.1.1"  # amqtt speaks MQTT 3.1.1 only
    data["http"]["listen"] = f"127.0.0.1:{ports['http']}"
    data["gateway"]["state_dir"] = state_dir
    for source in data["sources"]:
        if source["protocol"] == "modbus":
            source["url"] = f"tcp://127.0.0.1:{ports['modbus']}"
        else:
            source["url"] = opcua_url
    text = (
        f"# Written by `edgegw demo` from {demo_config_location()}, with the ports and the\n"
        "# state directory of this run.\n" + yaml.safe_dump(data, sort_keys=False)
    )
    return validate_document(GatewayConfig, doc), text


def _config_file(state_dir: str) -> str:
    return os.path.join(os.path.abspath(state_dir), DEMO_CONFIG)


async def _write_config_once_started(gateway: Gateway, path: str, text: str) -> None:
    """demo.yaml goes into the state directory once the gateway holds its lock: a second demo
    on the same directory stops before it could overwrite the first one's ports."""
    await gateway.started.wait()
    await asyncio.to_thread(Path(path).write_text, text)


def _banner(config: GatewayConfig, config_path: str, broker_name: str) -> list[str]:
    lines = ["edgegw demo: a small line on this machine, all started by the demo:"]
    for source in config.sources:
        kind = (
            "Modbus TCP PLC simulator (simulators/modbus_plc.py)"
            if source.protocol == "modbus"
            else "OPC UA PLC simulator (simulators/opcua_plc.py)"
        )
        tags = ", ".join(tag.name for tag in source.tags or [])
        lines.append(f"  {source.name:<9} {kind} at {source.url}: {tags}")
    assert config.http is not None
    lines += [
        f"  broker    {broker_name} at {config.mqtt.url}",
        f"  gateway   config {config_path}, outbox in {config.gateway.state_dir}, "
        f"metrics http://{config.http.listen}/metrics",
        "Each line below is one MQTT message as a subscriber receives it: the topic, then the "
        "payload exactly as sent (JSON). An EVENT line marks a business event.",
        f"In another terminal: edgegw status -c {config_path}",
        "Ctrl-C stops and prints a summary.",
    ]
    return lines


async def _demo(duration: float | None, broker_kind: str, state_dir: str | None) -> None:
    from edgegw.outbox.store import read_stats
    from edgegw.service.app import Gateway
    from simulators.modbus_plc import ModbusPlc
    from simulators.opcua_plc import OpcUaPlc

    kind = _broker_kind(broker_kind)
    with tempfile.TemporaryDirectory(prefix="edgegw-demo-") as workdir:
        ports = {name: free_port(port) for name, port in PREFERRED_PORTS.items()}
        filler = OpcUaPlc(host="127.0.0.1", port=ports["opcua"], tick=FILLER_TICK)
        state = os.path.join(workdir, "state") if state_dir is None else state_dir
        config_path = _config_file(state)
        config, text = _effective_config(kind, os.path.dirname(config_path), ports, filler.url)
        plc = ModbusPlc(host="127.0.0.1", port=ports["modbus"], unit=1, tick=PRESS_TICK)
        await plc.start()
        # The OPC UA server takes a second or two to build its address space: meanwhile the
        # broker starts.
        filler_started = asyncio.create_task(filler.start(), name="opcua-simulator")
        try:
            async with _broker(kind, ports["mqtt"], workdir) as broker_name:
                await filler_started
                for line in _banner(config, config_path, broker_name):
                    print(line, flush=True)
                tally = Tally()
                # The broker is the demo's own: everything on it belongs to the demo.
                subscriber, subscribed = _subscribe(ports["mqtt"], "#", tally)
                try:
                    # Subscribed before the gateway starts, so that seq 1 is seen too.
                    if not await asyncio.to_thread(subscribed.wait, SUBSCRIBE_WITHIN):
                        raise EdgeGwError(
                            f"the demo's subscriber is not subscribed on 127.0.0.1:"
                            f"{ports['mqtt']} after {SUBSCRIBE_WITHIN:g} s"
                        )
                    gateway = Gateway(config)
                    loop = asyncio.get_running_loop()
                    for signum in (signal.SIGINT, signal.SIGTERM):
                        loop.add_signal_handler(signum, gateway.request_stop)
                    if duration is not None:
                        loop.call_later(duration, gateway.request_stop)
                    writer = asyncio.create_task(
                        _write_config_once_started(gateway, config_path, text), name="demo.yaml"
                    )
                    started = time.monotonic()
                    try:
                        await gateway.run()
                    finally:
                        writer.cancel()
                    seconds = time.monotonic() - started
                    await _wait_quiet(tally)
                finally:
                    subscriber.loop_stop()
                    subscriber.disconnect()
        finally:
            # Not awaited when the broker failed to start: its failure must not go unseen.
            filler_started.cancel()
            await asyncio.gather(filler_started, return_exceptions=True)
            await asyncio.gather(filler.stop(), plc.stop())
        quarantined: int | None = None
        error = None
        try:
            quarantined = read_stats(config.outbox_path).quarantined
        except OutboxError as exc:
            error = str(exc)
        facts = RunFacts(
            seconds=seconds,
            config_path=config_path,
            config_kept=state_dir is not None,
            mqtt_port=ports["mqtt"],
            quarantined=quarantined,
            quarantine_error=error,
            configured_tags=tuple(
                f"{source.name}.{tag.name}"
                for source in config.sources
                for tag in source.tags or []
            ),
        )
        for line in summary(tally, facts):
            print(line, flush=True)


def run_demo(*, duration: float | None, broker: str, state_dir: str | None) -> int:
    try:
        asyncio.run(_demo(duration, broker, state_dir))
    except KeyboardInterrupt:  # Ctrl-C before the gateway started: nothing to sum up
        print("edgegw demo: stopped before the gateway started.", file=sys.stderr)
        return 130
    return 0
