"""Shared bench plumbing: an emulator subprocess, its admin knobs, synthetic images, clients."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["BENCH_TENANT", "Emu", "admin_post", "emulator", "peak_rss_mib"]

BENCH_TENANT = "be0c4b1e9d1f4a7e8c2b5d6f7a8b9c0d"


@dataclass
class Emu:
    proc: subprocess.Popen[str]
    identity_url: str
    regions: dict[str, str]

    @property
    def admin(self) -> str:
        return self.identity_url.rsplit("/v2.0", 1)[0] + "/_admin"


def admin_post(emu: Emu, path: str, doc: dict[str, Any]) -> Any:
    req = urllib.request.Request(f"{emu.admin}/{path}", data=json.dumps(doc).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=600) as resp:
        return json.loads(resp.read())


@contextmanager
def emulator(regions: str, data_dir: Path) -> Iterator[Emu]:
    """`imgmig emulate` in its own process (so the bench process measures only the client side)."""
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "emulate", "--regions", regions,
                             "--data-dir", str(data_dir)], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        yield Emu(proc, info["identity_url"], info["regions"])
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()


def peak_rss_mib() -> float:
    """This process's peak resident set size, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed() -> float:
    return time.perf_counter()
