"""Start and stop subprocesses for tests: ``imgmig emulate`` in its own process, always stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["EmulatorProcess", "emulator_process", "rss_peak_kib", "stop_process"]


@dataclass
class EmulatorProcess:
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
def emulator_process(*args: str, cwd: Path | None = None) -> Iterator[EmulatorProcess]:
    """Run ``imgmig emulate ARGS`` and yield its first-line info; it is stopped on exit, always."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "emulate", *args],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=cwd,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"imgmig emulate exited with {proc.wait(10)} before printing its address")
        yield EmulatorProcess(proc, json.loads(line))
    finally:
        stop_process(proc)
        if proc.stdout is not None:
            proc.stdout.close()


def rss_peak_kib(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of a live process in KiB, from /proc/PID/status."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]
