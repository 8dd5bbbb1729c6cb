"""Modbus RTU line: what one silent device costs the others, at two baud rates.

Three unit ids on one simulated RS-485 line (a pseudo-terminal served by
`simulators.modbus_rtu`, pacing bytes at the baud rate), each polled every 1 ms (as fast as
the line allows: the scheduler gives every device its turn in order) or every 100 ms. For each
baud rate and run: the reads per second of each device with all three answering, then with
unit 2 silent (after its breaker opened). The figure that matters is the ratio of the two for
units 1 and 3, in the same run; the issue asks for at least 0.8.

    python -m bench.rtu_line [--runs 3] [--window 10] [--bauds 19200,115200]

Prints a table; writes bench/results/rtu-line-<timestamp>.json and rtu-line-latest.json with
the core count.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import sys
import time
from typing import Any

from bench.common import git_head, machine, save
from edgegw.sources.modbus.config import ModbusSourceConfig
from edgegw.sources.modbus.line import ModbusLine
from simulators.modbus_plc import BENCH_BASE
from simulators.modbus_rtu import RtuLine

UNITS = (1, 2, 3)


def line_config(
    path: str, baud: int, *, poll: str, timeout: float, retry: float
) -> ModbusSourceConfig:
    tags = [
        {"name": f"r{i}", "address": f"holding:{BENCH_BASE + i}", "type": "uint16"}
        for i in range(4)
    ]
    return ModbusSourceConfig.model_validate(
        {
            "name": "rs485",
            "protocol": "modbus",
            "url": f"rtu://{path}?baudrate={baud}",
            "timeout": f"{int(timeout * 1000)}ms",
            "breaker": {"failures": 3, "retry": f"{retry:g}s"},
            "devices": [
                {"unit": unit, "name": f"u{unit}", "poll": poll, "tags": tags} for unit in UNITS
            ],
        }
    )


async def rates(source: ModbusLine, window: float) -> dict[str, float]:
    """Reads per second of every device over `window` seconds."""
    before = {s.name: s.reads for s in source.device_statuses}
    started = time.monotonic()
    await asyncio.sleep(window)
    elapsed = time.monotonic() - started
    return {s.name: (s.reads - before[s.name]) / elapsed for s in source.device_statuses}


async def run_once(
    baud: int,
    poll: str,
    window: float,
    reply_timeout: float,
    retry: float,
) -> dict[str, Any]:
    line = RtuLine.with_units(UNITS, bench_registers=4, tick=0, baudrate=baud)
    await line.start()
    assert line.path is not None
    source = ModbusLine(line_config(line.path, baud, poll=poll, timeout=reply_timeout, retry=retry))

    async def consume() -> None:
        async for _ in source.batches():
            pass

    task = asyncio.create_task(consume())
    try:
        await asyncio.sleep(1.0)  # warm-up: the line open and every device polled
        healthy = await rates(source, window)
        line.faults[2].silent = True
        silent = source.device_statuses[1]
        deadline = time.monotonic() + 30
        while not silent.breaker_open:
            if time.monotonic() > deadline:
                raise RuntimeError("the silent unit's breaker never opened")
            await asyncio.sleep(0.05)
        with_silent = await rates(source, window)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await line.stop()
    return {
        "healthy": healthy,
        "one_silent": with_silent,
        "ratio": {name: with_silent[name] / healthy[name] for name in ("u1", "u3")},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per baud rate (default 3)")
    parser.add_argument("--window", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--bauds", default="19200,115200", help="comma-separated baud rates")
    parser.add_argument(
        "--polls",
        default="1ms,100ms",
        help="device poll intervals: 1ms saturates the line, 100ms leaves it room",
    )
    parser.add_argument("--timeout", type=float, default=0.2, help="reply timeout, seconds")
    parser.add_argument("--retry", type=float, default=5.0, help="breaker retry, seconds")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results")
    args = parser.parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    results: list[dict[str, Any]] = []
    header = ("poll", "baud", "run", "u1 healthy", "u1 silent2", "ratio u1", "ratio u3")
    print("{:>6} {:>7} {:>3} {:>11} {:>11} {:>9} {:>9}".format(*header))
    scenarios = [(poll, int(b)) for poll in args.polls.split(",") for b in args.bauds.split(",")]
    for poll, baud in scenarios:
        runs = []
        for index in range(args.runs):
            run = asyncio.run(run_once(baud, poll, args.window, args.timeout, args.retry))
            runs.append(run)
            print(
                f"{poll:>6} {baud:>7} {index + 1:>3} {run['healthy']['u1']:>11.1f} "
                f"{run['one_silent']['u1']:>11.1f} {run['ratio']['u1']:>9.3f} "
                f"{run['ratio']['u3']:>9.3f}",
                flush=True,
            )
        results.append(
            {
                "poll": poll,
                "baud": baud,
                "runs": runs,
                "median_reads_per_s_healthy_u1": statistics.median(
                    r["healthy"]["u1"] for r in runs
                ),
                "median_ratio_u1": statistics.median(r["ratio"]["u1"] for r in runs),
                "median_ratio_u3": statistics.median(r["ratio"]["u3"] for r in runs),
            }
        )
    print()
    for result in results:
        print(
            f"poll {result['poll']:>5}, {result['baud']:>6} baud: u1 "
            f"{result['median_reads_per_s_healthy_u1']:.1f} reads/s "
            f"healthy; with unit 2 silent u1 x{result['median_ratio_u1']:.3f}, "
            f"u3 x{result['median_ratio_u3']:.3f} (medians of {args.runs})"
        )
    if not args.no_save:
        save(
            {
                "benchmark": "modbus rtu line: one silent unit of three",
                "started_utc": started.isoformat(timespec="seconds"),
                "command": " ".join(["python", "-m", "bench.rtu_line", *sys.argv[1:]]),
                "machine": machine(),
                "code": git_head(),
                "settings": vars(args),
                "results": results,
            },
            started,
            "rtu-line",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
