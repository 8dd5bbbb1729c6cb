"""Logging: readable lines on a terminal, one JSON object per line for journald otherwise."""

from __future__ import annotations

import logging
import sys
import time

import orjson

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def setup_logging(level: str = "info", json_lines: bool | None = None) -> None:
    """Configure the root logger once; `json_lines=None` picks JSON when stderr is no terminal."""
    use_json = (not sys.stderr.isatty()) if json_lines is None else json_lines
    handler = logging.StreamHandler(sys.stderr)
    if use_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pymodbus logs every timeout at ERROR; our sources report device faults themselves.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    # asyncua logs each session step at INFO and a closed socket as an ERROR with a traceback
    # from its publish loop; the OPC UA source reports connection loss itself, in one line.
    logging.getLogger("asyncua").setLevel(logging.WARNING)
    logging.getLogger("asyncua.client.ua_session").setLevel(logging.CRITICAL)
    logging.getLogger("asyncua.client.ua_client").setLevel(logging.ERROR)
