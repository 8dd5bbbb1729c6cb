"""What every benchmark writes alongside its figures: where results go, and the machine."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import orjson

RESULTS = Path(__file__).resolve().parent / "results"


def save(doc: dict[str, Any], started: dt.datetime, prefix: str) -> Path:
    """Write `PREFIX-<timestamp>.json` and `PREFIX-latest.json` under bench/results."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    data = orjson.dumps(doc, option=orjson.OPT_INDENT_2)
    path = RESULTS / f"{prefix}-{stamp}.json"
    path.write_bytes(data)
    (RESULTS / f"{prefix}-latest.json").write_bytes(data)
    print(f"\nwrote {path} and {prefix}-latest.json")
    return path


def machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def git_head() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
