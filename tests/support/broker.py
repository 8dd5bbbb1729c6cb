"""A throwaway Mosquitto broker for tests: one process, one loopback port, no persistence.

`start()` picks a free port the first time and keeps it, so `stop()` then `start()` simulates a
broker outage and its return on the same address (what a gateway sees when the broker restarts).

With `tls=BrokerTls(...)` the one listener speaks MQTT over TLS (TLS 1.2 minimum, client
certificates required by default), like a plant broker; with `password_file=` anonymous clients
are refused. `tests/support/tls.py` makes the certificates and the password file.

With `acl=` the text is written to an `acl_file`: rules before the first `user` line apply to
anonymous clients, e.g. "topic readwrite s/#" then "topic deny s/a/l/plc/secret". Measured on
Mosquitto 2.0.11: a denied QoS 1 PUBLISH is answered with PUBACK 0x87 "not authorized" to an
MQTT 5 client and with a plain (successful) PUBACK to an MQTT 3.1.1 client, which cannot be told;
the message goes to no subscriber either way. Change `acl`, then `reload()` (SIGHUP; clients
stay connected) or `stop()` and `start()` (clients reconnect).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

_FALLBACK_BINARY = "/usr/sbin/mosquitto"
_READY_TIMEOUT = 10.0  # seconds for the broker to accept connections
_POLL = 0.02  # seconds between readiness probes
_QUEUE_WITH_ACL = 10_000_000
"""max_queued_messages with an acl_file: as good as no limit for a test. Not 0 (no limit):
Mosquitto 2.0.11 with `max_queued_messages 0` drops an MQTT 5 client's connection right after
answering a denied publish with PUBACK 0x87 (measured with plain paho: the next PUBACK never
comes, the client gets DISCONNECT "unspecified error"; with 100 or with no such line the
connection stays up)."""


@dataclass(frozen=True, slots=True)
class BrokerTls:
    """TLS settings of the broker's listener (PEM files)."""

    cafile: Path  # CA that signs the client certificates the broker accepts
    certfile: Path  # the broker's certificate
    keyfile: Path  # its private key
    require_certificate: bool = True  # mutual TLS: refuse clients without a valid certificate


def find_mosquitto() -> str:
    """Path of the mosquitto binary, or a RuntimeError that says how to install it."""
    found = shutil.which("mosquitto")
    if found:
        return found
    if os.access(_FALLBACK_BINARY, os.X_OK):
        return _FALLBACK_BINARY
    raise RuntimeError(
        "mosquitto not found on PATH nor at /usr/sbin/mosquitto; the integration tests need a "
        "real broker: install it with `apt-get install mosquitto` (Debian/Ubuntu) or "
        "`brew install mosquitto` (macOS). It does not need to run as a service."
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Mosquitto:
    """A Mosquitto process on 127.0.0.1, started and stopped by the test."""

    def __init__(
        self,
        *,
        allow_anonymous: bool | None = None,
        extra_config: str = "",
        tls: BrokerTls | None = None,
        password_file: Path | None = None,
        acl: str | None = None,
    ) -> None:
        """`allow_anonymous` defaults to true, or to false when a `password_file` is given.
        `acl`: the text of an acl_file (Mosquitto's format), read at every `start()`."""
        self._binary = find_mosquitto()
        self._dir = Path(tempfile.mkdtemp(prefix="edgegw-mosquitto-"))
        if allow_anonymous is None:
            allow_anonymous = password_file is None
        self._allow_anonymous = allow_anonymous
        self._extra_config = extra_config
        self._tls = tls
        self._password_file = password_file
        self.acl = acl
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path = self._dir / "mosquitto.log"

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("broker was never started: no port yet")
        return self._port

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def tls(self) -> BrokerTls | None:
        return self._tls

    @property
    def url(self) -> str:
        scheme = "mqtts" if self._tls is not None else "mqtt"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log(self) -> str:
        """The broker's output so far (for assertion messages)."""
        try:
            return self._log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> None:
        """Start the broker (on the same port as before if it ran already); return once it
        accepts TCP connections."""
        if self.running:
            return
        if self._port is not None:
            self._launch(self._port)
            return
        # First start: a free port can be taken between the probe and mosquitto's bind; retry.
        last_error: Exception | None = None
        for _ in range(5):
            port = _free_port()
            try:
                self._launch(port)
            except RuntimeError as exc:
                last_error = exc
                continue
            self._port = port
            return
        raise RuntimeError(f"mosquitto did not start on any free port: {last_error}")

    def _tls_config(self) -> str:
        tls = self._tls
        if tls is None:
            return ""
        return (
            f"cafile {tls.cafile}\n"
            f"certfile {tls.certfile}\n"
            f"keyfile {tls.keyfile}\n"
            f"require_certificate {'true' if tls.require_certificate else 'false'}\n"
            # Since Mosquitto 2.0 this is the minimum version (1.6 and earlier: the only one).
            "tls_version tlsv1.2\n"
            "use_identity_as_username false\n"
        )

    def _auth_config(self) -> str:
        lines = f"allow_anonymous {'true' if self._allow_anonymous else 'false'}\n"
        if self._password_file is not None:
            lines += f"password_file {self._password_file}\n"
        if self.acl is not None:
            acl_file = self._dir / "acl"
            acl_file.write_text(self.acl if self.acl.endswith("\n") else self.acl + "\n")
            lines += f"acl_file {acl_file}\n"
        files = self._tls is not None or self._password_file is not None or self.acl is not None
        if files and os.geteuid() == 0:
            # Started as root, Mosquitto 2.0 switches to the `mosquitto` user before it loads the
            # certificates, the password and the acl file, and the test's files in a 0700
            # temporary directory are unreadable to it: stay root ("root" = no switch; ignored
            # if not root).
            lines += "user root\n"
        return lines

    def _write_config(self, port: int) -> Path:
        config = self._dir / "mosquitto.conf"
        config.write_text(
            f"listener {port} 127.0.0.1\n"
            f"{self._tls_config()}"
            f"{self._auth_config()}"
            "persistence false\n"
            # Tests publish thousands of QoS 1 messages to one subscriber: never drop them.
            f"max_queued_messages {_QUEUE_WITH_ACL if self.acl is not None else 0}\n"
            f"{self._extra_config}\n"
        )
        return config

    def reload(self, timeout: float = _READY_TIMEOUT) -> None:
        """Write the config again (with the current `acl`) and SIGHUP the broker, as an
        operator does; return once it logged the reload. Connections stay up. Mosquitto reads
        the new rules in the same turn of its (single-threaded) loop that logs "Reloading
        config.", so every packet it handles after that line is judged by them."""
        if self._proc is None or self._port is None:
            raise RuntimeError("broker is not running: nothing to reload")
        marker = "Reloading config."
        before = self.log().count(marker)
        self._write_config(self._port)
        self._proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while self.log().count(marker) <= before:
            if time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not reload within {timeout} s:\n{self.log()}")
            time.sleep(_POLL)

    def _launch(self, port: int) -> None:
        config = self._write_config(port)
        log = self._log_path.open("ab")
        try:
            self._proc = subprocess.Popen(
                [self._binary, "-c", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()
        deadline = time.monotonic() + _READY_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                raise RuntimeError(
                    f"mosquitto exited at start on port {port}; its output:\n{self.log()}"
                )
            if _accepts(port):
                return
            time.sleep(_POLL)
        self.stop()
        raise RuntimeError(
            f"mosquitto did not accept connections on port {port} within {_READY_TIMEOUT} s; "
            f"its output:\n{self.log()}"
        )

    def pause(self) -> None:
        """SIGSTOP the broker: its sockets stay open but nothing answers (a hung broker)."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after `pause()`."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL after 5 s) and wait for it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a paused broker would not act on SIGTERM
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL the broker: no DISCONNECT, no clean socket shutdown by the broker."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)

    def cleanup(self) -> None:
        """Stop the broker and remove its temporary directory."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


@contextmanager
def running_mosquitto(*, acl: str | None = None) -> Iterator[Mosquitto]:
    """A fresh Mosquitto on a free 127.0.0.1 port (with an acl_file if `acl` is given),
    stopped and removed on the way out."""
    broker = Mosquitto(acl=acl)
    broker.start()
    try:
        yield broker
    finally:
        broker.cleanup()
