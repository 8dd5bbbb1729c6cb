"""ThingsBoard IoT Gateway as the peer of `bench.peer`: its venv, its config, its MQTT side.

Everything here is about the peer itself, so that `bench/peer.py` only orchestrates:

* `ensure_peer_venv`: a venv of its own at `bench/.peer-venv` (never the project's `.venv`:
  the peer pins pymodbus 3.9.2 and ships its own `paho` package, both clash with edgegw's).
* `write_peer_config`: `tb_gateway.json`, `modbus.json` and `logs.json` in a temp directory.
* `SessionLimitsResponder`: answers the peer's `getSessionLimits` RPC, without which it
  publishes nothing to a plain broker.
* `PeerTelemetryCounter`: counts the values in the peer's `v1/gateway/telemetry` messages.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.e2e import REPO
from bench.subscriber import RawSubscriber, _remaining_length, _utf8

PEER_VENV = REPO / "bench" / ".peer-venv"
# pyserial and pyserial-asyncio are imported by the peer's Modbus connector even for TCP; when
# they are missing it pip-installs them at start (a network call in the middle of a run).
PEER_PACKAGES = (
    "thingsboard-gateway==3.8.5",
    "pymodbus==3.9.2",
    "pyserial==3.5",
    "pyserial-asyncio==0.6",
)
PEER_MARKER = PEER_VENV / ".bench-packages"  # what was installed, to reinstall on a change
TELEMETRY_TOPIC = "v1/gateway/telemetry"
RPC_REQUEST_FILTER = "v1/devices/me/rpc/request/+"
RPC_REQUEST_PREFIX = "v1/devices/me/rpc/request/"
RPC_RESPONSE_PREFIX = "v1/devices/me/rpc/response/"
FIRST_REGISTER = 1000  # simulators.modbus_plc --bench-registers: holding 1000.. change per read
STORAGES = ("memory", "sqlite")

# What the peer waits for before it publishes anything (read from thingsboard-gateway 3.8.5
# and tb-mqtt-client 1.13 in the peer venv):
# * on connect, `TBDeviceMqttClient` subscribes to `v1/devices/me/rpc/response/+` and its
#   service loop publishes `{"method": "getSessionLimits", "params": {"timeout": 5000}}` on
#   `v1/devices/me/rpc/request/<n>` (tb_device_mqtt.py `request_service_configuration`).
# * the reply must come on `v1/devices/me/rpc/response/<n>`, same `<n>`, as a JSON object.
#   `TBGatewayMqttClient.__on_service_configuration` (tb_gateway_mqtt.py) pops
#   `gatewayRateLimits` (limits for the devices behind the gateway) and `rateLimits` (the
#   gateway's own session); each has `messages`, `telemetryMessages`, `telemetryDataPoints`
#   as "count:seconds,..." strings, where a missing key or "0:0," means no limit.
#   `maxInflightMessages` becomes paho's in-flight window (x 0.8 when no limit is set) and,
#   with no limit at all, the client queue becomes 50,000 messages; `maxPayloadSize` (x 0.8)
#   is the size at which the gateway splits a device's data into several messages.
# * only then `rate_limits_received` is set and `TBClient.is_connected()` turns true: until
#   then the "send data" thread keeps everything in its storage. A reply with an "error" key
#   would also unblock it, with the client's defaults (8,196-byte payloads) instead.
# The values below are what a ThingsBoard server with rate limits switched off answers, with
# its default MQTT payload limit (65,536 bytes) and 100 in flight (as edgegw uses).
UNLIMITED = {"messages": "0:0,", "telemetryMessages": "0:0,", "telemetryDataPoints": "0:0,"}
SESSION_LIMITS: dict[str, Any] = {
    "maxPayloadSize": 65536,
    "maxInflightMessages": 100,
    "rateLimits": UNLIMITED,
    "gatewayRateLimits": UNLIMITED,
}


# -- the venv ------------------------------------------------------------------------------------


def peer_python() -> Path:
    return PEER_VENV / "bin" / "python"


def ensure_peer_venv() -> None:
    """Create `bench/.peer-venv` once and install `PEER_PACKAGES` (again if the list changed)."""
    wanted = "\n".join(PEER_PACKAGES) + "\n"
    if peer_python().exists() and PEER_MARKER.exists() and PEER_MARKER.read_text() == wanted:
        return
    PEER_VENV.mkdir(parents=True, exist_ok=True)
    log = PEER_VENV / "bench-setup.log"
    print(f"setting up the peer venv {PEER_VENV} (once; log {log}) ...", flush=True)
    if not peer_python().exists():
        # `-m venv` from the project's venv makes a venv of the same base interpreter.
        _run_logged([sys.executable, "-m", "venv", str(PEER_VENV)], log, timeout=300)
    _run_logged(
        [str(peer_python()), "-m", "pip", "install", "--disable-pip-version-check", *PEER_PACKAGES],
        log,
        timeout=1200,
    )
    PEER_MARKER.write_text(wanted)


def _run_logged(cmd: list[str], log: Path, timeout: float) -> None:
    with log.open("ab") as out:
        try:
            rc = subprocess.run(
                cmd, stdout=out, stderr=out, timeout=timeout, check=False
            ).returncode
        except subprocess.TimeoutExpired:
            rc = None
    if rc != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(cmd)} failed ({rc}); end of {log}:\n{tail}")


def peer_versions() -> dict[str, str]:
    """Installed versions in the peer venv (asked of its own interpreter)."""
    code = (
        "import json, importlib.metadata as m; print(json.dumps({n: m.version(n) for n in "
        "('thingsboard-gateway', 'pymodbus', 'tb-mqtt-client', 'tb-paho-mqtt-client')}))"
    )
    try:
        out = subprocess.run(
            [str(peer_python()), "-c", code], capture_output=True, text=True, timeout=60, check=True
        )
        return dict(json.loads(out.stdout))
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        return {"error": str(exc)}


def peer_command() -> list[str]:
    # The console script reads TB_GW_CONFIG_DIR; logs go to ./logs of the working directory.
    return [str(PEER_VENV / "bin" / "thingsboard-gateway")]


# -- the peer's configuration --------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """How N tags become the peer's devices and Modbus requests."""

    tags: int
    tags_per_device: int
    mode: str  # "range": one wide-range entry per device; "per-tag": one entry per tag
    max_registers: int  # registers per request in "range" mode

    @property
    def devices(self) -> int:
        return -(-self.tags // self.tags_per_device)

    def requests_per_poll(self) -> int:
        if self.mode == "per-tag":
            return self.tags
        full, rest = divmod(self.tags_per_device, self.max_registers)
        per_device = full + (1 if rest else 0)
        last = self.tags - (self.devices - 1) * self.tags_per_device
        last_requests = -(-last // self.max_registers)
        return per_device * (self.devices - 1) + last_requests


def device_name(k: int) -> str:
    return f"Bench Device {k:03d}"


def timeseries(first: int, count: int, layout: Layout) -> list[dict[str, Any]]:
    """The `timeseries` entries of one device: uint16 holding registers first..first+count-1."""
    if layout.mode == "per-tag":
        return [
            {
                "tag": f"r{i}",
                "type": "16uint",
                "functionCode": 3,
                "objectsCount": 1,
                "address": FIRST_REGISTER + i,
            }
            for i in range(first, first + count)
        ]
    # The connector's wide-range address "A-B": one entry, read in requests of
    # maxRegistersPerRequest registers (default 16), one key per register named by the tag
    # template (`${address}` is required in it).
    start = FIRST_REGISTER + first
    return [
        {
            "tag": "r${address}",
            "type": "16uint",
            "functionCode": 3,
            "objectsCount": 1,
            "address": f"{start}-{start + count - 1}",
            "maxRegistersPerRequest": layout.max_registers,
        }
    ]


def modbus_config(modbus_port: int, poll_ms: int, layout: Layout) -> dict[str, Any]:
    slaves = []
    for k, first in enumerate(range(0, layout.tags, layout.tags_per_device)):
        count = min(layout.tags_per_device, layout.tags - first)
        slaves.append(
            {
                "host": "127.0.0.1",
                "port": modbus_port,
                "type": "tcp",
                "method": "socket",
                "unitId": 1,
                "deviceName": device_name(k),
                "deviceType": "default",
                "timeout": 5,
                "byteOrder": "BIG",
                "wordOrder": "BIG",
                "retries": 1,
                "pollPeriod": poll_ms,
                "timeseries": timeseries(first, count, layout),
                "attributes": [],
            }
        )
    # logLevel: the connector logs every poll at INFO and below; WARNING is what a production
    # setup would keep.
    return {"name": "Modbus", "logLevel": "WARNING", "master": {"slaves": slaves}}


def storage_config(storage: str, read_records: int, data_dir: Path) -> dict[str, Any]:
    """The peer's `storage` section. Keys read from thingsboard-gateway 3.8.5:
    memory: `storage/memory/memory_event_storage.py` (`max_records_count`, `read_records_count`);
    sqlite: `storage/sqlite/storage_settings.py` (`data_file_path` is a directory, with the
    trailing slash, holding `data.db`; `max_read_records_count` = events per send round;
    `writing_batch_size` 1000, `size_limit` 1024 MB and `max_db_amount` 10 left at their
    defaults). Its connection runs WAL with `synchronous=NORMAL` (database_connector.py)."""
    if storage == "sqlite":
        # The durable one, the counterpart of edgegw's outbox (which runs synchronous=FULL).
        return {
            "type": "sqlite",
            "data_file_path": f"{data_dir}/",
            "messages_ttl_check_in_hours": 1,
            "messages_ttl_in_days": 7,
            "max_read_records_count": read_records,
        }
    # Memory: the fastest of the three (file and SQLite write every event to disk), and lost
    # on a crash; read_records_count is how many events the send thread packs into one round.
    return {"type": "memory", "read_records_count": read_records, "max_records_count": 100000}


def gateway_config(mqtt_port: int, storage: dict[str, Any]) -> dict[str, Any]:
    return {
        "thingsboard": {
            "host": "127.0.0.1",
            "port": mqtt_port,
            "remoteShell": False,
            "remoteConfiguration": False,
            "latencyDebugMode": False,
            # Statistics would add the gateway's own telemetry messages to the broker.
            "statistics": {"enable": False},
            "deviceFiltering": {"enable": False},
            "maxPayloadSizeBytes": SESSION_LIMITS["maxPayloadSize"],
            "minPackSendDelayMS": 50,
            "minPackSizeToSend": 500,
            "checkConnectorsConfigurationInSeconds": 600,
            "handleDeviceRenaming": False,
            # Plain MQTT: an access token is the MQTT user name; Mosquitto allows anonymous.
            "security": {"type": "accessToken", "accessToken": "bench-peer"},
            "qos": 1,
            # ON_RECEIVED: every value read is sent (the registers change at every read anyway).
            "reportStrategy": {"type": "ON_RECEIVED"},
            "checkingDeviceActivity": {"checkDeviceInactivity": False},
        },
        "storage": storage,
        "grpc": {"enabled": False},
        "connectors": [{"type": "modbus", "name": "Modbus", "configuration": "modbus.json"}],
    }


def logs_config() -> dict[str, Any]:
    """WARNING and above to stdout (= the peer log of the run), nothing to files.

    pymodbus 3.9.2 logs a deprecation warning on every BinaryPayloadDecoder use (= every value
    decoded) when its logger is enabled for WARNING; at ERROR that costs one level check.
    """
    console = {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stdout"}
    names = ("service", "connector", "converter", "tb_connection", "storage", "extension")
    loggers: dict[str, Any] = {
        n: {"handlers": ["console"], "level": "WARNING", "propagate": False} for n in names
    }
    loggers["pymodbus"] = {"handlers": ["console"], "level": "ERROR", "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
        "handlers": {"console": console},
        "loggers": loggers,
        "root": {"level": "ERROR", "handlers": ["console"]},
    }


def write_peer_config(
    config_dir: Path,
    mqtt_port: int,
    modbus_port: int,
    poll_ms: int,
    layout: Layout,
    read_records: int,
    storage: str,
) -> None:
    """The peer's three files in `config_dir`; its SQLite storage (if any) in a `data`
    directory beside it, so that it goes with the run's temp directory."""
    config_dir.mkdir(parents=True, exist_ok=True)
    data_dir = config_dir.parent / "data"
    data_dir.mkdir(exist_ok=True)
    files = {
        "tb_gateway.json": gateway_config(
            mqtt_port, storage_config(storage, read_records, data_dir)
        ),
        "modbus.json": modbus_config(modbus_port, poll_ms, layout),
        "logs.json": logs_config(),
    }
    for name, doc in files.items():
        (config_dir / name).write_text(json.dumps(doc, indent=1))


# -- MQTT side -----------------------------------------------------------------------------------


def publish_packet(topic: str, payload: bytes) -> bytes:
    """An MQTT 3.1.1 PUBLISH at QoS 0."""
    body = _utf8(topic) + payload
    return b"\x30" + _remaining_length(len(body)) + body


class SessionLimitsResponder(RawSubscriber):
    """Answers `getSessionLimits` on `v1/devices/me/rpc/request/+` with `SESSION_LIMITS`.

    It replies from its reader thread on its own socket (QoS 0, a few messages per run); every
    request is recorded as (method, answered).
    """

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port, {}, topic=RPC_REQUEST_FILTER)
        self.requests: list[tuple[str, bool]] = []
        self._reply = orjson.dumps(SESSION_LIMITS)

    def _count(self, topic: bytes, payload: bytes) -> None:
        request_id = topic.decode(errors="replace").removeprefix(RPC_REQUEST_PREFIX)
        try:
            method = str(orjson.loads(payload).get("method"))
        except (orjson.JSONDecodeError, AttributeError):
            method = "?"
        answered = method == "getSessionLimits" and self._sock is not None
        if answered:
            assert self._sock is not None
            self._sock.sendall(publish_packet(RPC_RESPONSE_PREFIX + request_id, self._reply))
        self.requests.append((method, answered))

    def answered(self) -> int:
        return sum(1 for _, ok in self.requests if ok)


class PeerTelemetryCounter(RawSubscriber):
    """Counts messages and values of `v1/gateway/telemetry` (`{"Device": [{"ts", "values"}]}`).

    Subscribed to `#` so that anything else the peer publishes (connect notices, attributes,
    its own telemetry) is counted by topic too. Called from the reader thread only; `snapshot`
    reads plain ints.
    """

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port, {})
        self._topic = TELEMETRY_TOPIC.encode()
        self.messages = 0
        self.values = 0
        self.payload_bytes = 0
        self.bad_payloads = 0
        self.first_arrival = 0.0  # monotonic
        self.last = 0.0
        self.devices: set[str] = set()
        self.other_topics: Counter[str] = Counter()

    def _count(self, topic: bytes, payload: bytes) -> None:
        if topic != self._topic:
            # Per-device topics would make this Counter large: keep the first 3 levels.
            self.other_topics["/".join(topic.decode(errors="replace").split("/")[:3])] += 1
            return
        now = time.monotonic()
        if not self.first_arrival:
            self.first_arrival = now
        self.last = now
        self.messages += 1
        self.payload_bytes += len(payload)
        try:
            doc = orjson.loads(payload)
            values = 0
            for device, entries in doc.items():
                self.devices.add(device)
                for entry in entries:
                    values += len(entry["values"])
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError):
            self.bad_payloads += 1
            return
        self.values += values

    def snapshot_counts(self) -> tuple[int, int]:
        """(messages, values) so far."""
        return self.messages, self.values

    def last_arrival(self) -> float:
        return self.last
