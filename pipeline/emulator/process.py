"""``imgmig emulate`` as a child process: start it, read its first line, and always stop it.

Used by ``make demo``, the bench and the tests, so that the emulator runs beside (not inside) the
process being measured or exercised.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["EmulatorProcess", "emulator_process", "stop_process"]


@dataclass
class EmulatorProcess:
    """A running ``imgmig emulate`` child and what it printed first."""

    proc: subprocess.Popen[str]
    info: dict[str, Any]

    @property
    def identity_url(self) -> str:
        return str(self.info["identity_url"])

    @property
    def regions(self) -> dict[str, str]:
        return dict(self.info["regions"])

    @property
    def admin(self) -> str:
        """The admin endpoints' base URL (``.../_admin``)."""
        return self.identity_url.rsplit("/v2.0", 1)[0] + "/_admin"


def stop_process(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 15) -> int:
    """Signal ``proc`` and wait; kill it if it does not stop in time. Returns its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    return proc.returncode


@contextmanager
def emulator_process(args: Sequence[str] = (), *, cwd: Path | None = None) -> Iterator[EmulatorProcess]:
    """Run ``imgmig emulate ARGS`` and yield its first-line info; it is stopped on exit, always."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "emulate", *args],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=cwd,
    )  # fmt: skip
    try:
        line = proc.stdout.readline() if proc.stdout is not None else ""
        if not line:
            raise RuntimeError(f"imgmig emulate exited with {proc.wait(10)} before printing its address")
        yield EmulatorProcess(proc, json.loads(line))
    finally:
        stop_process(proc)
        if proc.stdout is not None:
            proc.stdout.close()
