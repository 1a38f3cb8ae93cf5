"""Shared bench plumbing: an emulator subprocess, its admin knobs, synthetic images, clients."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.emulator.process import EmulatorProcess, emulator_process

__all__ = ["BENCH_TENANT", "Emu", "admin_post", "emulator", "peak_rss_mib"]

BENCH_TENANT = "be0c4b1e9d1f4a7e8c2b5d6f7a8b9c0d"


Emu = EmulatorProcess


def admin_post(emu: Emu, path: str, doc: dict[str, Any]) -> Any:
    req = urllib.request.Request(f"{emu.admin}/{path}", data=json.dumps(doc).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=600) as resp:
        return json.loads(resp.read())


@contextmanager
def emulator(regions: str, data_dir: Path) -> Iterator[Emu]:
    """`imgmig emulate` in its own process (so the bench process measures only the client side)."""
    with emulator_process(("--regions", regions, "--data-dir", str(data_dir))) as emu:
        yield emu


def peak_rss_mib() -> float:
    """This process's peak resident set size (VmHWM), in MiB. Not getrusage's ru_maxrss: Linux carries
    that across fork and exec, so a child would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def timed() -> float:
    return time.perf_counter()
