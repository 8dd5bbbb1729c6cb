"""Helpers to build a gateway config for tests and to run `edgegw run` as a process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import orjson
import yaml

from edgegw.config.diagnostics import validate_document
from edgegw.config.model import GatewayConfig
from edgegw.config.yamlpos import load_yaml_text
from edgegw.service.app import Gateway


def config_dict(
    state_dir: Path, mqtt_port: int, modbus_port: int, tags: list[dict[str, Any]], **source: Any
) -> dict[str, Any]:
    return {
        "gateway": {
            "id": "test-gw",
            "site": "s",
            "area": "a",
            "line": "l",
            "state_dir": str(state_dir),
        },
        "mqtt": {
            "url": f"mqtt://127.0.0.1:{mqtt_port}",
            "qos": 1,
            "keepalive": "2s",
            "connect_timeout": "2s",
        },
        "sources": [
            {
                "name": "plc",
                "protocol": "modbus",
                "url": f"tcp://127.0.0.1:{modbus_port}",
                "poll": "100ms",
                "timeout": "500ms",
                "tags": tags,
                **source,
            }
        ],
    }


@contextlib.asynccontextmanager
async def running_gateway(data: dict[str, Any]) -> AsyncIterator[Gateway]:
    """The gateway of config `data`, run in this event loop, started; stopped cleanly after."""
    gateway = Gateway(build_config(data))
    task = asyncio.create_task(gateway.run())
    try:
        await asyncio.wait_for(gateway.started.wait(), 10)
        yield gateway
    finally:
        gateway.request_stop()
        await asyncio.wait_for(task, 20)


def bench_tags(count: int) -> list[dict[str, Any]]:
    """Tags on the simulator's bench registers, which change at every read."""
    return [
        {"name": f"r{i}", "address": f"holding:{1000 + i}", "type": "uint16"} for i in range(count)
    ]


def build_config(data: dict[str, Any]) -> GatewayConfig:
    return validate_document(GatewayConfig, load_yaml_text(yaml.safe_dump(data)))


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


class GatewayProcess:
    """`edgegw run -c FILE` as a child process, as systemd would run it. A test that fails
    before it stops its gateway leaves none behind: the `_no_gateway_left` fixture of
    tests/conftest.py kills what is still running after each test."""

    running: ClassVar[set[GatewayProcess]] = set()

    def __init__(self, config_path: Path, env: dict[str, str] | None = None) -> None:
        self.config_path = config_path
        self.env = None if env is None else {**os.environ, **env}
        self.process: asyncio.subprocess.Process | None = None
        self.stderr_path = config_path.with_suffix(f".{os.getpid()}.stderr")

    async def start(self) -> GatewayProcess:
        self._stderr = self._open_log()
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edgegw",
            "--log-format",
            "json",
            "run",
            "-c",
            str(self.config_path),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=self._stderr,
            env=self.env,
        )
        GatewayProcess.running.add(self)
        return self

    @classmethod
    async def kill_leftovers(cls) -> None:
        for gateway in list(cls.running):
            cls.running.discard(gateway)
            process = gateway.process
            if process is not None and process.returncode is None:
                process.kill()
                await process.wait()

    def _open_log(self) -> Any:
        return open(self.stderr_path, "ab")

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def wait(self, timeout: float) -> int:  # noqa: ASYNC109
        assert self.process is not None
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        finally:
            self._stderr.close()

    async def kill(self) -> None:
        self.signal(signal.SIGKILL)
        await self.wait(10)

    def log(self) -> list[dict[str, Any]]:
        lines = self.stderr_path.read_bytes().splitlines() if self.stderr_path.exists() else []
        return [orjson.loads(line) for line in lines if line.startswith(b"{")]

    def starts(self) -> int:
        """How many runs logged their start (runs of one config share the log file)."""
        return sum("gateway started" in line.get("msg", "") for line in self.log())
