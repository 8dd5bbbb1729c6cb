"""`edgegw ...` as a user runs it: a child process of this Python, its output as text."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path


def run_edgegw(
    *args: str,
    timeout: float = 60.0,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m edgegw ARGS`; `env` adds to this process's environment."""
    return subprocess.run(
        [sys.executable, "-m", "edgegw", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else {**os.environ, **env},
        cwd=cwd,
        check=check,
    )
