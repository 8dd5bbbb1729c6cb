"""MQTT 5 reason codes in words, for log lines and errors."""

from __future__ import annotations

# MQTT 5 reason codes in words (MQTT 5.0 spec, 2.4). Texts are lower case: they are embedded in
# sentences. Codes below 0x80 are successes.
_REASON_WORDS: dict[int, str] = {
    0x00: "success",
    0x04: "disconnect with will message",
    0x10: "no matching subscribers",
    0x80: "unspecified error",
    0x81: "malformed packet",
    0x82: "protocol error",
    0x83: "implementation specific error",
    0x84: "unsupported protocol version",
    0x85: "client id not valid",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x88: "server unavailable",
    0x89: "server busy",
    0x8A: "banned",
    0x8B: "server shutting down",
    0x8C: "bad authentication method",
    0x8D: "keep-alive timeout",
    0x8E: (
        "session taken over: another client connected with the same client id; "
        "client ids must be unique per gateway"
    ),
    0x8F: "topic filter invalid",
    0x90: "topic name invalid",
    0x93: "receive maximum exceeded",
    0x94: "topic alias invalid",
    0x95: "packet too large",
    0x96: "message rate too high",
    0x97: "quota exceeded",
    0x98: "administrative action",
    0x99: "payload format invalid",
    0x9A: "retain not supported",
    0x9B: "QoS not supported",
    0x9C: "use another server",
    0x9D: "server moved",
    0x9E: "shared subscriptions not supported",
    0x9F: "connection rate exceeded",
    0xA0: "maximum connect time",
    0xA1: "subscription identifiers not supported",
    0xA2: "wildcard subscriptions not supported",
}

SESSION_TAKEN_OVER = 0x8E
KEEPALIVE_TIMEOUT = 0x8D


def reason_text(code: int) -> str:
    """An MQTT 5 reason code in words, e.g. ``reason_text(0x87) == "not authorized (0x87)"``."""
    return f"{_REASON_WORDS.get(code, 'reason code unknown to edgegw')} (0x{code:02X})"
