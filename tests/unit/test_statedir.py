"""The state directory lock: one gateway per directory, released with the process."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

import pytest

from edgegw.service.statedir import (
    LOCK_PATIENCE,
    StateDirError,
    acquire,
    check_problem,
    lock_paths,
    running_endpoint,
)


def test_a_second_lock_names_the_holder_and_release_lets_it_in(tmp_path: Path) -> None:
    outbox = str(tmp_path / "outbox.sqlite3")
    held = acquire(str(tmp_path), outbox)
    with pytest.raises(StateDirError) as refused:
        acquire(str(tmp_path), outbox)
    assert f"is in use by PID {os.getpid()} (this process)" in str(refused.value)
    held.release()
    acquire(str(tmp_path), outbox).release()


def test_an_outbox_elsewhere_is_locked_too(tmp_path: Path) -> None:
    state, elsewhere = tmp_path / "state", tmp_path / "disk2"
    outbox = str(elsewhere / "outbox.sqlite3")
    assert lock_paths(str(state), outbox) == [str(state / "edgegw.lock"), outbox + ".lock"]
    held = acquire(str(state), outbox)
    # Another state dir, same outbox file: refused on the outbox's lock.
    with pytest.raises(StateDirError, match="disk2 is in use by PID"):
        acquire(str(tmp_path / "other"), outbox)
    held.release()


def test_check_creates_nothing_and_names_the_problem(tmp_path: Path) -> None:
    missing = tmp_path / "new" / "state"
    assert check_problem(str(missing)) is None
    assert not missing.exists()
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert check_problem(str(blocker)) == f"the state directory {blocker} is not a directory"
    problem = check_problem(str(blocker / "state"))
    assert problem is not None
    assert problem.startswith(f"the state directory {blocker}/state does not exist and ")


def test_a_status_probe_at_the_moment_of_a_start_does_not_stop_the_start(tmp_path: Path) -> None:
    # `edgegw status` holds the lock shared for an instant; a gateway starting then (systemd
    # restarting it after a crash) must wait for it, not exit 73 (which is never restarted).
    lock_file = tmp_path / "edgegw.lock"
    lock_file.write_text("4242\n")  # left by a gateway that died
    probe = os.open(lock_file, os.O_RDONLY)
    fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
    releaser = threading.Timer(0.3, os.close, (probe,))
    releaser.start()
    try:
        acquire(str(tmp_path), str(tmp_path / "outbox.sqlite3")).release()
    finally:
        releaser.join()
    assert running_endpoint(str(tmp_path)) is None


def test_a_lock_held_longer_than_a_probe_is_another_gateway(tmp_path: Path) -> None:
    outbox = str(tmp_path / "outbox.sqlite3")
    held = acquire(str(tmp_path), outbox)
    started = time.monotonic()
    with pytest.raises(StateDirError, match="is in use by PID"):
        acquire(str(tmp_path), outbox)
    assert time.monotonic() - started >= LOCK_PATIENCE
    held.release()
