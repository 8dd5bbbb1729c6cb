"""Load the daemon's config in a forked child, so that parsing never enters the daemon's heap.

Parsing a 10,000-tag file with positions for every value peaks at about 60 MB of Python
objects (PyYAML's nodes and marks, the position map, pydantic's input); once freed, that memory
stays mapped in a long-running process (the heap is fragmented by the config objects kept),
so `edgegw run` would carry it for years. The child parses and validates, and hands back only
the validated config (pickled through a pipe) or the formatted errors.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

from edgegw.config.loader import load_config
from edgegw.config.model import GatewayConfig
from edgegw.errors import ConfigError


def load_config_isolated(path: str | os.PathLike[str]) -> GatewayConfig:
    """`load_config(path)`, parsed in a child process where fork() is available."""
    if not hasattr(os, "fork"):
        return load_config(path)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: parse, send, leave without running the parent's cleanup
        status = 1
        try:
            os.close(read_end)
            result: tuple[str, Any]
            try:
                result = ("config", load_config(path))
            except ConfigError as exc:
                result = ("issues", exc.issues)
            with os.fdopen(write_end, "wb") as out:
                out.write(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as received:
        data = received.read()
    os.waitpid(pid, 0)
    if not data:
        # The child failed in an unexpected way: parse here, where the error shows itself.
        return load_config(path)
    kind, value = pickle.loads(data)
    if kind == "issues":
        raise ConfigError(value)
    assert isinstance(value, GatewayConfig)
    return value
