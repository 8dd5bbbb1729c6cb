"""What one MQTT connection needs: broker, identity, credentials, TLS."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from edgegw.sinks.mqtt.tls import TlsSettings


@dataclass(frozen=True, slots=True)
class MqttSettings:
    host: str
    port: int
    client_id: str
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive: int = 30  # seconds
    connect_timeout: float = 10.0  # seconds, TCP connect and CONNACK together
    status_topic: str | None = None  # retained birth "online" on connect, last will "offline"
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a log line
    tls: TlsSettings | None = None  # mqtts://; the handshake runs in the connect worker

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"
