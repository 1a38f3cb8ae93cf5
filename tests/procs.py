"""Subprocess helpers for tests: ``imgmig emulate`` in its own process (always stopped), and RSS readings."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from pipeline.emulator import process
from pipeline.emulator.process import EmulatorProcess, stop_process

__all__ = ["EmulatorProcess", "emulator_process", "eventually", "rss_peak_kib", "stop_process", "wait_until"]


@contextmanager
def emulator_process(*args: str, cwd: Path | None = None) -> Iterator[EmulatorProcess]:
    """Run ``imgmig emulate ARGS`` and yield its first-line info; it is stopped on exit, always."""
    with process.emulator_process(args, cwd=cwd) as proc:
        yield proc


def rss_peak_kib(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of a live process in KiB, from /proc/PID/status."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


def wait_until(check: Callable[[], bool], proc: subprocess.Popen[Any], what: str, timeout: float = 60) -> None:
    """Poll a server until ``check()`` holds (the scenario is really under way), or fail the test; also
    fails if ``proc`` (the run under test) ends first."""
    deadline = time.monotonic() + timeout
    while not check():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def eventually(check: Callable[[], bool], what: str, timeout: float = 15) -> None:
    """Poll a server until ``check()`` holds (it notices some things, like a client gone, a moment later)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)
