"""One gateway per state directory: an exclusive lock held for the process's life.

Two gateways on one outbox number their rows from the same `seq` and publish different values
under one seq (seen: 269 seqs twice in 10 s, then `UNIQUE constraint failed: outbox.seq`). A
`flock` on a file in the state directory (and beside the outbox, when `outbox.path` puts it
elsewhere) makes the second one stop before it opens anything. The kernel drops the lock when
the process dies, even by kill -9, so a stale lock file never blocks a restart.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import pwd
import time

from edgegw.errors import EdgeGwError

log = logging.getLogger(__name__)

LOCK_NAME = "edgegw.lock"


class StateDirError(EdgeGwError):
    """The state directory cannot be used: not writable, or held by another gateway."""


class StateLock:
    """The held locks; `release()` (or process exit) lets another gateway in."""

    def __init__(self, fds: list[int]) -> None:
        self._fds = fds

    def note_endpoint(self, url: str) -> None:
        """Write the HTTP endpoint the gateway serves beside its PID: `edgegw status` asks
        that one, even when the config file now names another port (a refused reload).
        Best effort: a gateway that cannot write it still runs; `status` then finds no
        endpoint and says so."""
        if self._fds:
            try:
                os.pwrite(self._fds[0], f"{os.getpid()}\n{url}\n".encode(), 0)
            except OSError as exc:
                log.warning("cannot note the HTTP endpoint in the lock file: %s", exc.strerror)

    def release(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)  # closing the descriptor releases its flock
        self._fds = []


def lock_paths(state_dir: str, outbox_path: str) -> list[str]:
    """The lock files: one in the state directory, one beside an outbox kept elsewhere."""
    paths = [os.path.join(os.path.abspath(state_dir), LOCK_NAME)]
    outbox_dir = os.path.dirname(os.path.abspath(outbox_path))
    if outbox_dir != os.path.dirname(paths[0]):
        paths.append(os.path.abspath(outbox_path) + ".lock")
    return paths


def acquire(state_dir: str, outbox_path: str) -> StateLock:
    """Lock the state directory (and the outbox's, if apart), or raise StateDirError naming the
    process that holds it."""
    fds: list[int] = []
    try:
        for path in lock_paths(state_dir, outbox_path):
            fds.append(_lock_one(path))  # noqa: PERF401 (kept one by one, for the release)
    except BaseException:
        StateLock(fds).release()
        raise
    return StateLock(fds)


def _lock_one(path: str) -> int:
    directory = os.path.dirname(path)
    problem = directory_problem(directory)
    if problem is not None:
        raise StateDirError(problem)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except OSError as exc:
        raise StateDirError(f"cannot create the lock file {path}: {exc.strerror}") from exc
    try:
        _flock_exclusive(fd)
    except OSError as exc:
        holder = _read_pid(fd)
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            raise StateDirError(f"cannot lock {path}: {exc.strerror}") from exc
        who = f"PID {holder}" if holder else "another process"
        if holder == os.getpid():
            who += " (this process)"
        raise StateDirError(
            f"state directory {directory} is in use by {who}: another edgegw is running on it "
            f"(lock {path}); one gateway per state directory, so stop that one or give this "
            "config its own gateway.state_dir"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:
        os.close(fd)
        raise StateDirError(f"cannot write the lock file {path}: {exc.strerror}") from exc
    return fd


LOCK_PATIENCE = 1.0
"""Seconds a starting gateway keeps trying for the lock. `edgegw status` holds it shared for
an instant to see whether a gateway runs: a gateway starting (or restarted by systemd) in that
instant must not take it for another gateway and exit 73, which systemd does not restart."""


def _flock_exclusive(fd: int) -> None:
    deadline = time.monotonic() + LOCK_PATIENCE
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES) or time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").split("\n")[0].strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def running_endpoint(state_dir: str) -> str | None:
    """The HTTP endpoint of the gateway running on `state_dir`, or None when none runs there
    (nobody holds the lock) or it serves no HTTP."""
    path = os.path.join(os.path.abspath(state_dir), LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            lines = os.pread(fd, 512, 0).decode("utf-8", "replace").split("\n")
            return (lines[1].strip() or None) if len(lines) > 1 else None
        return None  # we got the lock: no gateway holds it
    finally:
        os.close(fd)


def directory_problem(directory: str) -> str | None:
    """Why the gateway could not keep its files in `directory`, or None. It is created when
    missing (its parent must allow that)."""
    if os.path.isdir(directory):
        if os.access(directory, os.W_OK | os.X_OK):
            return None
        return f"the state directory {directory} is not writable by {_user()}"
    if os.path.exists(directory):
        return f"the state directory {directory} is not a directory"
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        return f"cannot create the state directory {directory}: {exc.strerror} (as {_user()})"
    return None


def check_problem(directory: str) -> str | None:
    """`edgegw check`: like `directory_problem`, without creating anything."""
    path = os.path.abspath(directory)
    existing = path
    while not os.path.exists(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    if existing != path:
        if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
            return (
                f"the state directory {path} does not exist and {_user()} cannot create it "
                f"in {existing} (create it, or let systemd's StateDirectory= do it)"
            )
        return None
    if not os.path.isdir(path):
        return f"the state directory {path} is not a directory"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"the state directory {path} is not writable by {_user()}"
    return None


def _user() -> str:
    uid = os.geteuid()
    try:
        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"
