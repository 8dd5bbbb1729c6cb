"""OPC UA server simulating a small bottle filling line, for integration tests and benchmarks.

Built on asyncua's server. Every start() builds a brand-new asyncua ``Server`` (fresh
sessions, fresh namespace array), so a restart() looks to a client like a real PLC
reboot: the connection drops, old sessions are gone and, with ``namespace_shift``, the
filler namespace may come back under another index. That is what the gateway's
``nsu=`` node id resolution is tested against.

Node map, CLI and the asyncua quirks worked around here: see ``simulators/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import datetime as dt
import ipaddress
import logging
import os
import random
import signal
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from asyncua import Server, ua
from asyncua.common.node import Node
from asyncua.crypto.permission_rules import PermissionRuleset, User
from asyncua.crypto.security_policies import SecurityPolicyFactory, SecurityPolicyNone
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "APPLICATION_URI",
    "DUMMY_NAMESPACE_PREFIX",
    "FILLER_STATES",
    "FILLER_VARIABLES",
    "NAMESPACE_URI",
    "OPERATION_LIMITS",
    "TYPE_VALUES",
    "TYPE_VARIANTS",
    "OpcUaFaults",
    "OpcUaPlc",
    "OpcUaSimStats",
    "main",
    "write_self_signed_certificate",
]

log = logging.getLogger("simulators.opcua_plc")

NAMESPACE_URI = "urn:edgegw:sim:filler"
#: Dummy namespaces registered before NAMESPACE_URI with namespace_shift=N: PREFIX + "0".."N-1".
DUMMY_NAMESPACE_PREFIX = "urn:edgegw:sim:dummy:"
APPLICATION_URI = "urn:edgegw:sim:server"
PRODUCT_URI = "urn:edgegw:sim:opcua-plc"
ENDPOINT_PATH = "/line/"
SERVER_CERT_FILE = "server_cert.der"
SERVER_KEY_FILE = "server_key.pem"
MAX_BENCH_ITEMS = 100_000  # Item00000..Item99999: the id has five digits

#: none: only the None endpoint; sign_encrypt: only the three SignAndEncrypt ones; both: the
#: None endpoint and the three SignAndEncrypt ones, as many PLCs ship by default.
SecurityMode = Literal["none", "sign_encrypt", "both"]
SECURITY_MODES: tuple[SecurityMode, ...] = ("none", "sign_encrypt", "both")

#: Limits the simulator can advertise under Server.ServerCapabilities.OperationLimits and
#: enforce: the variable's name -> the service whose requests it bounds. A client request with
#: more operations than the limit gets a ServiceFault BadTooManyOperations, as a strict server
#: answers (asyncua itself advertises 10,000 for each and enforces none).
OPERATION_LIMITS: dict[str, str] = {
    "MaxNodesPerRead": "Read",
    "MaxNodesPerBrowse": "Browse",
    "MaxNodesPerTranslateBrowsePathsToNodeIds": "TranslateBrowsePathsToNodeIds",
    "MaxMonitoredItemsPerCall": "CreateMonitoredItems",
}

# --- the filling line ------------------------------------------------------------

#: State names in cycle order; the index is Filler.StateCode.
FILLER_STATES = ("idle", "filling", "capping", "done")
# Ticks spent in each state. Every state lasts at least 3 ticks so that a client
# sampling a little slower than the tick still sees each one.
STATE_TICKS = {"idle": 5, "filling": 20, "capping": 5, "done": 3}
NOMINAL_SPEED = 120.0  # bottles/min once ramped up
BAD_BOTTLE_PROBABILITY = 0.03
FROZEN_VALUE = 42.5
#: Filler.Temperature's SourceTimestamp lags its ServerTimestamp by exactly this much.
TEMPERATURE_SOURCE_LAG = dt.timedelta(seconds=2)

#: Browse name (under Objects/Filler) -> variant type, in address-space order.
FILLER_VARIABLES: dict[str, ua.VariantType] = {
    "State": ua.VariantType.String,
    "StateCode": ua.VariantType.Int32,
    "Running": ua.VariantType.Boolean,
    "Speed": ua.VariantType.Double,
    "GoodCount": ua.VariantType.UInt32,
    "BadCount": ua.VariantType.UInt32,
    "BatchId": ua.VariantType.String,
    "Temperature": ua.VariantType.Float,
    "Sensor": ua.VariantType.Double,
    "Frozen": ua.VariantType.Double,
}

# --- Types: one variable per built-in type --------------------------------------------

#: Browse name (under Objects/Types) -> the fixed value served.
TYPE_VALUES: dict[str, object] = {
    "Boolean": True,
    "SByte": -8,
    "Byte": 200,
    "Int16": -1234,
    "UInt16": 54321,
    "Int32": -123456,
    "UInt32": 3_000_000_000,
    "Int64": -9_007_199_254_740_993,  # -(2**53 + 1): not exactly representable as a double
    "UInt64": 18_446_744_073_709_551_615,
    "Float": 1.5,
    "Double": 3.141592653589793,
    "String": "héllo",
    "DateTime": dt.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=dt.UTC),
    "ByteString": b"\x01\x02",
    "Guid": uuid.UUID("6f1c2a4e-9b3d-4e8a-a1f0-5c7d2e9b8a31"),
    "LocalizedText": ua.LocalizedText("Abfüllanlage", "de-DE"),
    "Int32Array": [1, 2, 3],
}
#: Browse name (under Objects/Types) -> variant type (the element type for the array).
TYPE_VARIANTS: dict[str, ua.VariantType] = {
    "Boolean": ua.VariantType.Boolean,
    "SByte": ua.VariantType.SByte,
    "Byte": ua.VariantType.Byte,
    "Int16": ua.VariantType.Int16,
    "UInt16": ua.VariantType.UInt16,
    "Int32": ua.VariantType.Int32,
    "UInt32": ua.VariantType.UInt32,
    "Int64": ua.VariantType.Int64,
    "UInt64": ua.VariantType.UInt64,
    "Float": ua.VariantType.Float,
    "Double": ua.VariantType.Double,
    "String": ua.VariantType.String,
    "DateTime": ua.VariantType.DateTime,
    "ByteString": ua.VariantType.ByteString,
    "Guid": ua.VariantType.Guid,
    "LocalizedText": ua.VariantType.LocalizedText,
    "Int32Array": ua.VariantType.Int32,
}

# --- bench ---------------------------------------------------------------------------

# Bench writes go out in slices of this many items. A slice runs without yielding (the
# server-side write path never suspends), so its size bounds how long clients wait.
BENCH_SLICE = 250
# Bench items are added in batches of this many; see _add_bench_items().
BUILD_BATCH = 50
# Fraction of bench_interval over which a round's slices are spread; the rest is slack
# for a slow slice, so that a round does not spill into the next one.
BENCH_SPREAD = 0.8

# Seconds between updates of the server's CurrentTime (asyncua's own clock is off).
CLOCK_PERIOD = 1.0


@dataclass
class OpcUaFaults:
    """Fault switches, applied at every simulation tick (or step())."""

    #: Filler.Sensor reports BadSensorFailure (its last value is kept and still sent).
    sensor_bad: bool = False

    def clear(self) -> None:
        """Switch every fault off."""
        self.sensor_bad = False


@dataclass
class OpcUaSimStats:
    """Counters for tests and benchmarks. Bench rates refer to the last completed round."""

    starts: int = 0
    ticks: int = 0
    #: Server-side writes of Filler.* and Types.* values (bench writes not included).
    value_writes: int = 0
    bench_writes: int = 0
    bench_rounds: int = 0
    #: Rounds that took longer than bench_interval (the server could not keep up).
    bench_overruns: int = 0
    #: Achieved rate: the items of the last round / the time from its start to the next.
    bench_writes_per_s: float = 0.0
    #: Raw speed of the write path: items / time spent inside the write slices.
    bench_write_capacity_per_s: float = 0.0
    #: Seconds from the first to the end of the last write of the last round.
    bench_round_s: float = 0.0
    #: Client requests by service (the OPERATION_LIMITS services): operations per request ->
    #: how many requests had that many. Counted whether or not a limit is set.
    request_sizes: dict[str, Counter[int]] = field(
        default_factory=lambda: {service: Counter() for service in OPERATION_LIMITS.values()}
    )
    #: Client requests refused with BadTooManyOperations (over an advertised limit).
    too_many_operations: int = 0


class _FillerModel:
    """State of the filling line; every published Filler.* value is an attribute here."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.state = "idle"
        self.phase_ticks = 0
        self.speed = 0.0
        self.good_count = 0
        self.bad_count = 0
        self.batch_number = 1
        self.batch_id = "B001"
        self.temperature = 21.5
        self.sensor = 250.0
        self.frozen = FROZEN_VALUE

    @property
    def state_code(self) -> int:
        return FILLER_STATES.index(self.state)

    @property
    def running(self) -> bool:
        return self.state in ("filling", "capping")

    def set_state(self, state: str) -> None:
        if state not in FILLER_STATES:
            raise ValueError(f"unknown state {state!r}; expected one of {FILLER_STATES}")
        self.state = state
        self.phase_ticks = 0

    def values(self) -> dict[str, object]:
        """The Filler.* values, keyed by browse name."""
        return {
            "State": self.state,
            "StateCode": self.state_code,
            "Running": self.running,
            "Speed": self.speed,
            "GoodCount": self.good_count,
            "BadCount": self.bad_count,
            "BatchId": self.batch_id,
            "Temperature": self.temperature,
            "Sensor": self.sensor,
            "Frozen": self.frozen,
        }

    def advance(self, *, sensor_failed: bool = False) -> None:
        """One tick: idle → filling → capping → done → idle (new batch), plus noise."""
        rng = self.rng
        self.phase_ticks += 1
        done_with_phase = self.phase_ticks >= STATE_TICKS[self.state]
        if self.state == "filling":
            # Ramp towards the nominal speed with some jitter, so Speed moves every tick.
            self.speed = round(
                max(0.0, self.speed + 0.3 * (NOMINAL_SPEED - self.speed) + rng.uniform(-2, 2)), 2
            )
            for _ in range(rng.randint(1, 3)):
                if rng.random() < BAD_BOTTLE_PROBABILITY:
                    self.bad_count = (self.bad_count + 1) & 0xFFFFFFFF
                else:
                    self.good_count = (self.good_count + 1) & 0xFFFFFFFF
        if done_with_phase:
            self._next_state()
        if self.state != "filling":
            self.speed = 0.0
        self.temperature = round(min(24.0, max(18.0, self.temperature + rng.uniform(-0.2, 0.2))), 2)
        if not sensor_failed:
            # A failed sensor keeps reporting its last reading.
            self.sensor = round(250.0 + rng.gauss(0.0, 0.5), 3)

    def _next_state(self) -> None:
        following = FILLER_STATES[(self.state_code + 1) % len(FILLER_STATES)]
        if following == "idle":
            self.batch_number += 1
            self.batch_id = f"B{self.batch_number:03d}"
        self.set_state(following)


# --- certificates -----------------------------------------------------------------------


def write_self_signed_certificate(
    cert_path: Path,
    key_path: Path,
    *,
    application_uri: str,
    common_name: str,
    dns_names: Sequence[str] = ("localhost",),
    ip_addresses: Sequence[str] = ("127.0.0.1",),
    days: int = 3650,
) -> None:
    """Write a self-signed RSA-2048 OPC UA application certificate (DER) and its key (PEM).

    Usable for servers and clients alike (both extended key usages are set); the tests
    use it for their client certificates too.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgegw"),
        ]
    )
    alt_names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(application_uri)]
    alt_names += [x509.DNSName(dns) for dns in dict.fromkeys(dns_names)]
    alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # Backdated a day so that a peer with a slightly slow clock accepts it.
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=True,  # self-signed: the certificate signs itself
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as key_file:
        key_file.write(key_pem)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))


class _RefuseAll(PermissionRuleset):
    """Permission rules of the discovery-only None channel of a secured server."""

    def check_validity(self, user: User, action_type: ua.NodeId, body: Any) -> bool:
        return False


# --- the PLC ------------------------------------------------------------------------------


def _pick_free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class _SharedDataValue(ua.DataValue):
    """A DataValue that monitored items may share instead of deep-copying.

    asyncua deep-copies the DataValue of every write once per monitored item
    (monitored_item_service.py, MonitoredItemValues.set_current_datavalue), guarding
    against the writer mutating it later. That copy is ~28 µs, more than the rest of a
    write, and caps a subscribed bench near 10,000 writes/s. The simulator builds a new
    DataValue for every write and never touches it again, so sharing is safe.
    """

    __slots__ = ()

    def __deepcopy__(self, memo: dict[int, object]) -> _SharedDataValue:
        return self


def _data_value(
    value: object,
    vtype: ua.VariantType,
    source: dt.datetime,
    server: dt.datetime,
    status: ua.StatusCode | None = None,
) -> ua.DataValue:
    return _SharedDataValue(
        ua.Variant(value, vtype),
        StatusCode=status if status is not None else ua.StatusCode(),
        SourceTimestamp=source,
        ServerTimestamp=server,
    )


class OpcUaPlc:
    """A simulated filling-line PLC serving OPC UA; see the module docstring and README."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        security: SecurityMode = "none",
        pki_dir: Path | None = None,
        namespace_shift: int = 0,
        bench_items: int = 0,
        bench_interval: float = 1.0,
        bench_slice: int = BENCH_SLICE,
        tick: float = 0.1,
        seed: int = 0,
        operation_limits: Mapping[str, int] | None = None,
        advertise_limits: bool = True,
    ) -> None:
        if security not in SECURITY_MODES:
            raise ValueError(f"security must be 'none', 'sign_encrypt' or 'both', not {security!r}")
        if security != "none" and pki_dir is None:
            raise ValueError(f"security={security!r} needs pki_dir for the server certificate")
        limits = dict(operation_limits or {})
        for name, limit in limits.items():
            if name not in OPERATION_LIMITS:
                raise ValueError(
                    f"unknown operation limit {name!r}; known: {', '.join(OPERATION_LIMITS)}"
                )
            if not isinstance(limit, int) or limit < 1:
                raise ValueError(f"operation limit {name} must be an integer >= 1, not {limit!r}")
        if namespace_shift < 0:
            raise ValueError("namespace_shift must be >= 0")
        if not 0 <= bench_items <= MAX_BENCH_ITEMS:
            raise ValueError(f"bench_items must be within 0..{MAX_BENCH_ITEMS}")
        if bench_items and bench_interval <= 0:
            raise ValueError("bench_interval must be > 0")
        if bench_slice < 1:
            raise ValueError("bench_slice must be >= 1")
        self.host = host
        self._port = port
        self.security: SecurityMode = security
        self.pki_dir = pki_dir
        self.namespace_shift = namespace_shift
        self.bench_items = bench_items
        self.bench_interval = bench_interval
        #: Bench items written together, at one instant; the slices of a round are spread.
        self.bench_slice = bench_slice
        #: Seconds between simulation steps; <= 0 freezes the line (call step()).
        self.tick = tick
        #: OperationLimits advertised and enforced (see OPERATION_LIMITS); read at start().
        self.operation_limits: dict[str, int] = limits
        #: False: enforce operation_limits while still advertising asyncua's 10,000 (a server
        #: whose real limit is lower than it says, or that says none).
        self.advertise_limits = advertise_limits
        self.faults = OpcUaFaults()
        self.stats = OpcUaSimStats()
        #: DER file of the server certificate (created by the first start()), or None.
        self.server_certificate_path: Path | None = (
            pki_dir / SERVER_CERT_FILE if security != "none" and pki_dir else None
        )
        self._model = _FillerModel(random.Random(seed))
        # Written Types.* values survive a restart, like a PLC's retentive memory.
        self._type_values: dict[str, object] = copy.deepcopy(TYPE_VALUES)
        self._server: Server | None = None
        self._ns_index = 0
        self._published: dict[str, tuple[object, bool]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._bench_ids: list[ua.NodeId] = []
        self._bench_round = 0

    # -- addresses -------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port; with port=0 it is picked by the first start() and kept after."""
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"opc.tcp://{host}:{self._port}{ENDPOINT_PATH}"

    @property
    def namespace_index(self) -> int:
        """Index of NAMESPACE_URI in the running server (2 + namespace_shift)."""
        return self._ns_index

    @property
    def serving(self) -> bool:
        return self._server is not None

    def node_id(self, name: str) -> ua.NodeId:
        """The NodeId of a browse path like "Filler.State" in the running server."""
        return ua.NodeId(name, self._ns_index)

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Build a new asyncua server, listen, and start the simulation."""
        if self._server is not None:
            raise RuntimeError("the simulator is already running")
        _quiet_asyncua_logging()
        if self._port == 0:
            # Chosen here rather than by binding port 0: asyncua writes the endpoint URLs
            # before it binds, so they would advertise port 0.
            self._port = _pick_free_port(self.host)
        server = Server()
        try:
            await self._configure(server)
            await server.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await server.stop()
            raise
        self._server = server
        self.stats.starts += 1
        self._published.clear()
        await self._publish_filler()
        self._spawn(self._clock(), "opcua-plc-clock")
        if self.tick > 0:
            self._spawn(self._simulate(), "opcua-plc-sim")
        if self._bench_ids:
            self._spawn(self._bench(), "opcua-plc-bench")
        log.info(
            "OPC UA PLC simulator on %s (security %s, ns=%d for %s)",
            self.url,
            self.security,
            self._ns_index,
            NAMESPACE_URI,
        )

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(_log_crash)
        self._tasks.append(task)

    async def stop(self) -> None:
        """Close every session and connection and the listening socket."""
        server, self._server = self._server, None
        if server is None:
            return
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # asyncua keeps a session that has subscriptions alive after its connection
        # drops (uaprocessor.py, UaProcessor.close), waiting for the client to resume it;
        # this server object is about to be thrown away, so drop the subscriptions first
        # and every session then closes with its connection.
        subscriptions = server.iserver.subscription_service
        await subscriptions.delete_subscriptions(list(subscriptions.subscriptions))
        await server.stop()
        # connection_lost() runs on a later loop iteration and only then queues each
        # connection's cleanup task; wait for those so nothing outlives stop().
        await asyncio.sleep(0)
        if server.bserver is not None:
            closing = list(server.bserver.closing_tasks)
            server.bserver.closing_tasks.clear()
            await asyncio.gather(*closing, return_exceptions=True)
        log.info("OPC UA PLC simulator on %s stopped", self.url)

    async def restart(self, *, namespace_shift: int | None = None) -> None:
        """stop(), then start() a new server on the same port, optionally with another shift."""
        await self.stop()
        if namespace_shift is not None:
            if namespace_shift < 0:
                raise ValueError("namespace_shift must be >= 0")
            self.namespace_shift = namespace_shift
        await self.start()

    async def __aenter__(self) -> OpcUaPlc:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _configure(self, server: Server) -> None:
        # asyncua's clock task sleeps 1 s between updates and Server.stop() waits for it
        # (internal_server.py, InternalServer.stop), making every stop up to a second
        # slow; _clock() does the same job and is cancelled at once.
        server.disable_clock()
        await server.init()
        server.set_server_name("edgegw filling line simulator")
        server.product_uri = PRODUCT_URI
        await server.set_application_uri(APPLICATION_URI)
        server.set_endpoint(self.url)
        server.set_identity_tokens([ua.AnonymousIdentityToken])
        if self.security == "none":
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        else:
            await self._configure_security(server)
        for i in range(self.namespace_shift):
            await server.register_namespace(f"{DUMMY_NAMESPACE_PREFIX}{i}")
        self._ns_index = await server.register_namespace(NAMESPACE_URI)
        await self._build_address_space(server)
        await self._configure_operation_limits(server)

    async def _configure_operation_limits(self, server: Server) -> None:
        """Advertise the limits and wrap each new client session so that its requests are
        counted (stats.request_sizes) and, over a limit, refused with BadTooManyOperations.
        Per session rather than per service: the server's own internal session (the
        simulator's and asyncua's reads and writes) is neither counted nor limited."""
        iserver = server.iserver
        for name, limit in self.operation_limits.items() if self.advertise_limits else ():
            node_id = ua.NodeId(
                getattr(ua.ObjectIds, f"Server_ServerCapabilities_OperationLimits_{name}")
            )
            value = ua.DataValue(ua.Variant(limit, ua.VariantType.UInt32))
            status = await iserver.aspace.write_attribute_value(
                node_id, ua.AttributeIds.Value, value
            )
            status.check()
        real_create_session = iserver.create_session

        def create_session(*args: Any, **kwargs: Any) -> Any:
            session = real_create_session(*args, **kwargs)
            if session.external:
                self._limit_session(session)
            return session

        iserver.create_session = create_session  # type: ignore[method-assign]

    def _limit_session(self, session: Any) -> None:
        limits = {OPERATION_LIMITS[name]: n for name, n in self.operation_limits.items()}
        sizes = self.stats.request_sizes

        def guarded(service: str, call: Any, count: Callable[[Any], int]) -> Any:
            limit = limits.get(service)

            async def wrapper(params: Any) -> Any:
                size = count(params)
                sizes[service][size] += 1
                if limit is not None and size > limit:
                    self.stats.too_many_operations += 1
                    raise ua.uaerrors.BadTooManyOperations()
                return await call(params)

            return wrapper

        session.read = guarded("Read", session.read, lambda p: len(p.NodesToRead))
        session.browse = guarded("Browse", session.browse, lambda p: len(p.NodesToBrowse))
        session.translate_browsepaths_to_nodeids = guarded(
            "TranslateBrowsePathsToNodeIds", session.translate_browsepaths_to_nodeids, len
        )
        session.create_monitored_items = guarded(
            "CreateMonitoredItems", session.create_monitored_items, lambda p: len(p.ItemsToCreate)
        )

    async def _configure_security(self, server: Server) -> None:
        """sign_encrypt: the three SignAndEncrypt endpoints only; both: the None one too."""
        assert self.pki_dir is not None
        assert self.server_certificate_path is not None
        cert_path = self.server_certificate_path
        key_path = self.pki_dir / SERVER_KEY_FILE
        if not (cert_path.exists() and key_path.exists()):
            log.info("generating the server certificate in %s", self.pki_dir)
            await asyncio.to_thread(
                write_self_signed_certificate,
                cert_path,
                key_path,
                application_uri=APPLICATION_URI,
                common_name="edgegw filling line simulator",
                # The machine's host name too: asyncua warns when it is missing.
                dns_names=("localhost", socket.gethostname()),
            )
        await server.load_certificate(cert_path)
        await server.load_private_key(key_path)
        policies = [
            ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
            ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
            ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
        ]
        # No certificate validator is installed, so any client certificate is accepted:
        # this is a test server, trust management is not what it is for.
        if self.security == "both":
            # A real None endpoint beside the secure ones: a None session may read everything.
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity, *policies])
            return
        server.set_security_policy(policies)
        # asyncua accepts a None secure channel even without a None endpoint (the
        # channel starts as None and select_policy() in common/connection.py keeps it
        # when no factory matches). That channel is needed for GetEndpoints, but a
        # client could also open a session on it and read everything. This factory
        # (consulted before the ones start() adds) gives such channels a ruleset that
        # refuses every service except discovery and session setup, which asyncua
        # never subjects to permission checks.
        server._policies.append(
            SecurityPolicyFactory(
                SecurityPolicyNone, ua.MessageSecurityMode.None_, permission_ruleset=_RefuseAll()
            )
        )

    async def _build_address_space(self, server: Server) -> None:
        idx = self._ns_index
        objects = server.nodes.objects
        filler = await objects.add_object(ua.NodeId("Filler", idx), ua.QualifiedName("Filler", idx))
        for name, vtype in FILLER_VARIABLES.items():
            value = self._model.values()[name]
            await filler.add_variable(
                ua.NodeId(f"Filler.{name}", idx), ua.QualifiedName(name, idx), value, vtype
            )
        types = await objects.add_object(ua.NodeId("Types", idx), ua.QualifiedName("Types", idx))
        for name, vtype in TYPE_VARIANTS.items():
            node = await types.add_variable(
                ua.NodeId(f"Types.{name}", idx),
                ua.QualifiedName(name, idx),
                self._type_values[name],
                vtype,
            )
            if isinstance(self._type_values[name], list):
                # asyncua leaves ValueRank 0 (one or more dimensions) on arrays created
                # without Dimensions; declare a plain one-dimensional array.
                await node.write_value_rank(ua.ValueRank.OneDimension)
                await node.write_array_dimensions([0])
            await node.set_writable()
        bench = await objects.add_object(ua.NodeId("Bench", idx), ua.QualifiedName("Bench", idx))
        self._bench_ids = await self._add_bench_items(server, bench)

    async def _add_bench_items(self, server: Server, bench: Node) -> list[ua.NodeId]:
        if not self.bench_items:
            return []
        idx = self._ns_index
        # Adding a child scans all the references of its parent (address_space.py,
        # NodeManagementService._add_node and _add_unique_reference), so 10,000 children
        # of one node take ~40 s. The parent's list is swapped for an empty one while a
        # batch is added and the new references collected, keeping each scan short; the
        # children are new nodes, so the uniqueness check has nothing to find anyway.
        parent = server.iserver.aspace[bench.nodeid]
        own_refs = list(parent.references)
        child_refs: list[ua.ReferenceDescription] = []
        ids = [ua.NodeId(f"Bench.Item{i:05d}", idx) for i in range(self.bench_items)]
        try:
            for first in range(0, len(ids), BUILD_BATCH):
                # The parent's own references stay visible: the child's inverse reference
                # takes the parent's type definition from them.
                parent.references = list(own_refs)
                for i in range(first, min(first + BUILD_BATCH, len(ids))):
                    await bench.add_variable(
                        ids[i],
                        ua.QualifiedName(f"Item{i:05d}", idx),
                        self._bench_value(i),
                        ua.VariantType.Double,
                    )
                child_refs.extend(parent.references[len(own_refs) :])
        finally:
            parent.references = own_refs + child_refs
        return ids

    # -- simulation -----------------------------------------------------------------

    async def step(self) -> None:
        """Advance the line by one tick and publish (for tests with tick=0)."""
        self._model.advance(sensor_failed=self.faults.sensor_bad)
        self.stats.ticks += 1
        if self._server is not None:
            await self._publish_filler()

    async def _simulate(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            # Absolute deadlines, so that the tick does not drift with load.
            next_at += self.tick
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            await self.step()

    async def _clock(self) -> None:
        server = self._server
        assert server is not None
        status_node = server.get_node(ua.ObjectIds.Server_ServerStatus)
        time_node = server.get_node(ua.ObjectIds.Server_ServerStatus_CurrentTime)
        while True:
            # A copy: the stored object must not change behind the address space's back.
            status = copy.copy(await status_node.read_value())
            status.CurrentTime = _utcnow()
            await status_node.write_value(status)
            await time_node.write_value(status.CurrentTime)
            await asyncio.sleep(CLOCK_PERIOD)

    async def _publish_filler(self) -> None:
        """Write the Filler.* values that changed since the last publish."""
        now = _utcnow()
        sensor_bad = self.faults.sensor_bad
        for name, value in self._model.values().items():
            bad = name == "Sensor" and sensor_bad
            if self._published.get(name) == (value, bad) and name != "Temperature":
                continue
            vtype = FILLER_VARIABLES[name]
            if bad:
                dv = _data_value(
                    value, vtype, now, now, ua.StatusCode(ua.StatusCodes.BadSensorFailure)
                )
                await self._store_keeping_value(self.node_id("Filler.Sensor"), dv)
            else:
                source = now - TEMPERATURE_SOURCE_LAG if name == "Temperature" else now
                dv = _data_value(value, vtype, source, now)
                await self._write_value(self.node_id(f"Filler.{name}"), dv)
            self._published[name] = (value, bad)

    async def _write_value(self, node_id: ua.NodeId, dv: ua.DataValue) -> None:
        server = self._server
        assert server is not None
        # Through the address space rather than Server.write_attribute_value(), which
        # drops the status (internal_server.py, InternalServer.write_attribute_value),
        # and rather than Node.write_value(), which would overwrite ServerTimestamp.
        status = await server.iserver.aspace.write_attribute_value(
            node_id, ua.AttributeIds.Value, dv
        )
        status.check()
        self.stats.value_writes += 1

    async def _store_keeping_value(self, node_id: ua.NodeId, dv: ua.DataValue) -> None:
        """Store a DataValue with a bad status without losing its value.

        AddressSpace.write_attribute_value() replaces the value of any bad DataValue with
        null (address_space.py, per Part 4 §7.7.1), but the simulated PLC is meant to
        report BadSensorFailure alongside the last reading, as some real ones do. Does
        what that method does otherwise: store, then notify the monitored items.
        """
        server = self._server
        assert server is not None
        attribute = server.iserver.aspace[node_id].attributes[ua.AttributeIds.Value]
        attribute.value = dv
        attribute.value_callback = None
        for handle, callback in list(attribute.datachange_callbacks.items()):
            try:
                await callback(handle, dv)
            except Exception:
                log.exception("data change callback %s failed", handle)
        self.stats.value_writes += 1

    # -- bench ----------------------------------------------------------------------

    def _bench_value(self, item: int) -> float:
        # Distinct per item and different in every round.
        return self._bench_round + item / 100_000

    async def _bench(self) -> None:
        server = self._server
        assert server is not None
        loop = asyncio.get_running_loop()
        ids = self._bench_ids
        slices = [
            (first, ids[first : first + self.bench_slice])
            for first in range(0, len(ids), self.bench_slice)
        ]
        spacing = self.bench_interval * BENCH_SPREAD / len(slices)
        round_start = loop.time() + self.bench_interval
        last_start: float | None = None
        written_last_round = 0
        while True:
            await asyncio.sleep(max(0.0, round_start - loop.time()))
            started = loop.time()
            if last_start is not None and written_last_round:
                self.stats.bench_writes_per_s = written_last_round / (started - last_start)
            last_start = started
            self._bench_round += 1
            busy = 0.0
            written = 0
            for n, (first, slice_ids) in enumerate(slices):
                await asyncio.sleep(max(0.0, round_start + n * spacing - loop.time()))
                t0 = time.perf_counter()
                now = _utcnow()
                for offset, node_id in enumerate(slice_ids):
                    dv = _data_value(
                        self._bench_value(first + offset), ua.VariantType.Double, now, now
                    )
                    # The public fast path: no write service, no permission checks.
                    await server.write_attribute_value(node_id, dv)
                busy += time.perf_counter() - t0
                written += len(slice_ids)
                self.stats.bench_writes += len(slice_ids)
            finished = loop.time()
            written_last_round = written
            self.stats.bench_rounds += 1
            self.stats.bench_round_s = finished - started
            if busy > 0:
                self.stats.bench_write_capacity_per_s = written / busy
            round_start += self.bench_interval
            if finished > round_start:
                # Overrun: start the next round now instead of trying to catch up.
                self.stats.bench_overruns += 1
                round_start = finished
            if self.stats.bench_rounds % 10 == 0:
                log.info(
                    "bench: %d items, %.0f writes/s achieved, capacity %.0f writes/s, "
                    "round %.3f s, %d overruns",
                    len(ids),
                    self.stats.bench_writes_per_s,
                    self.stats.bench_write_capacity_per_s,
                    self.stats.bench_round_s,
                    self.stats.bench_overruns,
                )

    # -- direct access ------------------------------------------------------------------

    def filler_values(self) -> dict[str, object]:
        """The line's current Filler.* values by browse name (no OPC UA involved)."""
        return self._model.values()

    async def write(self, name: str, value: object) -> None:
        """Set a Filler.* or Types.* variable by its browse path, e.g. "Filler.Speed".

        Filler values go into the line's model, so the simulation carries on from them
        (e.g. GoodCount keeps counting from the written value). Filler.Running is
        derived from State and is re-published when the next tick changes it. Works
        while stopped too: the value is served from the next start().
        """
        group, _, leaf = name.partition(".")
        if group == "Filler" and leaf in FILLER_VARIABLES:
            self._write_filler(leaf, value)
            if self._server is None:
                return
            if leaf == "Running":
                now = _utcnow()
                dv = _data_value(value, ua.VariantType.Boolean, now, now)
                await self._write_value(self.node_id(name), dv)
                # The next publish compares the derived value with this one and
                # restores it if they differ.
                self._published["Running"] = (value, False)
            else:
                self._published.pop(leaf, None)
                await self._publish_filler()
        elif group == "Types" and leaf in TYPE_VARIANTS:
            # A copy: the served value must not change when the caller's list does.
            value = copy.copy(value)
            self._type_values[leaf] = value
            if self._server is not None:
                now = _utcnow()
                dv = _data_value(value, TYPE_VARIANTS[leaf], now, now)
                await self._write_value(self.node_id(name), dv)
        else:
            raise KeyError(f"no writable variable {name!r} (Filler.* or Types.*)")

    def _write_filler(self, leaf: str, value: object) -> None:
        model = self._model
        if leaf == "State":
            model.set_state(str(value))
        elif leaf == "StateCode":
            code = int(value)  # type: ignore[call-overload]
            if not 0 <= code < len(FILLER_STATES):
                raise ValueError(f"StateCode must be within 0..{len(FILLER_STATES) - 1}")
            model.set_state(FILLER_STATES[code])
        elif leaf == "Running":
            if not isinstance(value, bool):
                raise TypeError("Filler.Running takes a bool")
        elif leaf in ("GoodCount", "BadCount"):
            count = int(value)  # type: ignore[call-overload]
            if not 0 <= count <= 0xFFFFFFFF:
                raise ValueError(f"Filler.{leaf} is a UInt32")
            setattr(model, "good_count" if leaf == "GoodCount" else "bad_count", count)
        elif leaf == "BatchId":
            model.batch_id = str(value)
            digits = model.batch_id.lstrip("B")
            if digits.isdigit():
                model.batch_number = int(digits)  # the next batch continues from here
        else:
            attribute = {
                "Speed": "speed",
                "Temperature": "temperature",
                "Sensor": "sensor",
                "Frozen": "frozen",
            }[leaf]
            setattr(model, attribute, float(value))  # type: ignore[arg-type]


def _log_crash(task: asyncio.Task[None]) -> None:
    # stop() gathers its tasks with return_exceptions=True, so a crash would go unseen.
    if not task.cancelled() and task.exception() is not None:
        log.error("%s crashed", task.get_name(), exc_info=task.exception())


def _quiet_asyncua_logging() -> None:
    """asyncua logs every connection and request at INFO; keep it at WARNING unless the
    application chose a level for it."""
    for name in ("asyncua", "asyncua.server"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


# --- command line ------------------------------------------------------------------------


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.opcua_plc",
        description=(
            "OPC UA server simulating a bottle filling line (idle → filling → capping → done), "
            "with one variable per built-in type and optional bench items. Node map: "
            "simulators/README.md."
        ),
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=4840, help="TCP port, 0 = any free port (default %(default)s)"
    )
    parser.add_argument(
        "--security",
        choices=list(SECURITY_MODES),
        default="none",
        help=(
            "none: only the None endpoint; sign_encrypt: only Basic256Sha256, "
            "Aes128_Sha256_RsaOaep and Aes256_Sha256_RsaPss with SignAndEncrypt; both: the "
            "None endpoint and those three (default %(default)s)"
        ),
    )
    parser.add_argument(
        "--pki-dir",
        type=Path,
        metavar="DIR",
        help="where the server certificate and key live (created on first start); "
        "required with --security sign_encrypt or both",
    )
    parser.add_argument(
        "--namespace-shift",
        type=int,
        default=0,
        metavar="N",
        help=f"register N dummy namespaces before {NAMESPACE_URI}, which then gets index 2+N "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--bench-items",
        type=int,
        default=0,
        metavar="N",
        help=f"create Bench.Item00000.. Double variables, all rewritten every --bench-interval "
        f"(0..{MAX_BENCH_ITEMS}, default 0 = none)",
    )
    parser.add_argument(
        "--bench-interval",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds between bench rewrites (default %(default)s)",
    )
    parser.add_argument(
        "--bench-slice",
        type=int,
        default=BENCH_SLICE,
        metavar="N",
        help="bench items changed together at one instant; a round's slices are spread over "
        "the interval (default %(default)s; small slices make a steady flow, large ones bursts)",
    )
    parser.add_argument(
        "--tick",
        type=float,
        default=0.1,
        metavar="S",
        help="seconds between simulation steps; 0 freezes the line (default %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    parser.add_argument(
        "--operation-limit",
        action="append",
        default=[],
        metavar="NAME=N",
        help=f"advertise and enforce an OperationLimits value (repeatable; NAME one of "
        f"{', '.join(OPERATION_LIMITS)}): larger requests get BadTooManyOperations "
        "(default: none enforced, asyncua advertises 10000)",
    )
    parser.add_argument(
        "--unadvertised-limits",
        action="store_true",
        help="enforce the --operation-limit values but keep advertising 10000 (a server whose "
        "real limits are lower than it says)",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="debug logging, including asyncua's own"
    )
    args = parser.parse_args(argv)
    if args.security != "none" and args.pki_dir is None:
        parser.error(f"--security {args.security} needs --pki-dir")
    limits: dict[str, int] = {}
    for item in args.operation_limit:
        name, _, number = item.partition("=")
        if name not in OPERATION_LIMITS:
            parser.error(
                f"--operation-limit {item!r}: unknown name {name!r}; known: "
                f"{', '.join(OPERATION_LIMITS)}"
            )
        if not number.isdigit() or int(number) < 1:
            parser.error(f"--operation-limit {item!r}: N must be an integer >= 1")
        limits[name] = int(number)
    args.operation_limits = limits
    if args.namespace_shift < 0:
        parser.error("--namespace-shift must be >= 0")
    if not 0 <= args.bench_items <= MAX_BENCH_ITEMS:
        parser.error(f"--bench-items must be within 0..{MAX_BENCH_ITEMS}")
    if args.bench_interval <= 0:
        parser.error("--bench-interval must be > 0")
    if args.bench_slice < 1:
        parser.error("--bench-slice must be >= 1")
    return args


async def _run(args: argparse.Namespace) -> None:
    plc = OpcUaPlc(
        host=args.host,
        port=args.port,
        security=args.security,
        pki_dir=args.pki_dir,
        namespace_shift=args.namespace_shift,
        bench_items=args.bench_items,
        bench_interval=args.bench_interval,
        bench_slice=args.bench_slice,
        tick=args.tick,
        seed=args.seed,
        operation_limits=args.operation_limits,
        advertise_limits=not args.unadvertised_limits,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await plc.start()
    print(plc.url, flush=True)
    if plc.server_certificate_path is not None:
        print(f"server certificate: {plc.server_certificate_path}", flush=True)
    try:
        await stop.wait()
    finally:
        await plc.stop()
        if plc.stats.bench_rounds:
            print(
                f"bench: {plc.stats.bench_rounds} rounds, last {plc.stats.bench_writes_per_s:.0f} "
                f"writes/s (capacity {plc.stats.bench_write_capacity_per_s:.0f} writes/s), "
                f"{plc.stats.bench_overruns} overruns",
                flush=True,
            )


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Explicit either way: start() only quietens asyncua when no level was chosen.
    logging.getLogger("asyncua").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    asyncio.run(_run(args))


if __name__ == "__main__":
    main()
