"""One run per job at a time: an flock on ``journal_dir/lock``, and the one probe of who holds it."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import LockHeldError

__all__ = ["LOCK", "JobLock", "lock_holder", "secure_dir"]

LOCK = "lock"


def secure_dir(path: Path) -> Path:
    """Create ``path`` (and parents) with mode 0700; tighten it if it already exists."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o700)
    return path


class JobLock:
    """One run per job at a time: an flock on ``journal_dir/lock``, released by the OS if we die.

    A second run gets ``LockHeldError`` (exit 3) naming the holder's PID and start time. A lock whose
    holder has died is simply taken over: the kernel drops an flock with its process.
    """

    def __init__(self, directory: Path, job: str) -> None:
        self.path = secure_dir(directory) / LOCK
        self.job = job
        self._fd = -1

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise LockHeldError(self.job, holder.get("pid"), holder.get("started"), str(self.path)) from None
        except OSError:
            os.close(fd)
            raise
        info = {"pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "host": socket.gethostname()}  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1

    @contextlib.contextmanager
    def held(self) -> Iterator[JobLock]:
        self.acquire()
        try:
            yield self
        finally:
            self.release()


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        doc = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def lock_holder(directory: Path) -> dict[str, Any] | None:
    """Who holds the job's lock right now (its pid, start time and host, as far as recorded), or None when no
    run holds it. Probes with a shared flock, so it never takes the lock from a run."""
    try:
        fd = os.open(directory / LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
