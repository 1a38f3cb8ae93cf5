"""Bench (f): K = 1, 2, 4 shard processes (``imgmig run --shard I/K``), each limited to the same source
bandwidth (standing in for one host's network card), copying the same 16 images to 2 targets: the aggregate
throughput, and its ratio to K x the single-shard figure.

The 16 image ids are chosen (client-chosen ids, as Glance accepts) so that the stable partition gives every
shard of K = 4 (and so of K = 2) the same number of images: with 16 images a random draw is lopsided often
enough to measure the partition's luck instead of the scaling. The wall time runs from launching the K
processes to the last one's exit, so process start-up counts against the sharded runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.config.shard import partition

from .common import BENCH_TENANT, admin_post, emulator

MiB = 1 << 20
IMAGES = 16
SHARDS = (1, 2, 4)
PASSWORD_ENV = "IMGMIG_BENCH_PASSWORD"


def _balanced_ids(count: int, shards: int) -> list[str]:
    """``count`` fresh ids, ``count / shards`` of them in each shard (drawn until the buckets fill)."""
    per, buckets = count // shards, Counter[int]()
    chosen: list[str] = []
    while len(chosen) < count:
        image_id = str(uuid.uuid4())
        bucket = partition(image_id, shards)
        if buckets[bucket] < per:
            buckets[bucket] += 1
            chosen.append(image_id)
    return chosen


def _job(path: Path, emu: Any, name: str, ids: list[str], bandwidth_mib: int) -> Path:
    lines = [f'name = "{name}"', "[auth.main]", f'identity_url = "{emu.identity_url}"',
             f'tenant_id = "{BENCH_TENANT}"', 'username = "bench"', f'password_env = "{PASSWORD_ENV}"',
             "[source]", 'auth = "main"', 'region = "SRC"']  # fmt: skip
    for region in ("T1", "T2"):
        lines += ["[[targets]]", 'auth = "main"', f'region = "{region}"']
    lines += ["[select]", "ids = [" + ", ".join(f'"{i}"' for i in ids) + "]",
              "[transfer]", f'bandwidth = "{bandwidth_mib}MiB/s"', "images_in_flight = 4",
              "[run]", f'journal_dir = "{path.parent / ("state-" + name)}"']  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


def _run_sharded(job: Path, shards: int, workdir: Path) -> dict[str, Any]:
    env = {**os.environ, PASSWORD_ENV: "bench"}
    start = time.perf_counter()
    procs = []
    for index in range(shards):
        argv = [sys.executable, "-m", "pipeline", "run", str(job), "--no-progress", "--log-level", "error",
                "--report", str(workdir / f"{job.stem}-{index}.json")]  # fmt: skip
        if shards > 1:
            argv += ["--shard", f"{index}/{shards}"]
        procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"a shard of {job.stem} exited {proc.returncode}: {err[-2000:]}")
    wall = time.perf_counter() - start
    reports = [json.loads((workdir / f"{job.stem}-{i}.json").read_text()) for i in range(shards)]
    read = sum(r["bytes_read"] for r in reports)
    copied = sum(r["counts"]["copied"] for r in reports)
    per_shard = [round(r["duration_seconds"], 2) for r in reports]
    return {"shards": shards, "wall_s": wall, "bytes_read": read, "copied": copied,
            "read_mib_s": read / MiB / wall, "per_shard_s": per_shard}  # fmt: skip


def bench_shards(size_mib: int = 16, bandwidth_mib: int = 4) -> dict[str, Any]:
    """K = 1, 2, 4 processes, each limited to ``bandwidth_mib`` MiB/s from the source, 16 images of
    ``size_mib`` MiB to 2 targets; the aggregate read throughput and its ratio to K x the K = 1 figure."""
    with tempfile.TemporaryDirectory(prefix="imgmig-bench-f-") as tmp:
        workdir = Path(tmp)
        with emulator("SRC,T1,T2", workdir / "emu") as emu:
            for region in ("T1", "T2"):  # digests kept, bytes not: the targets still verify every copy
                admin_post(emu, f"faults/{region}", {"discard_uploads": True})
            ids = _balanced_ids(IMAGES, max(SHARDS))
            for i, image_id in enumerate(ids):
                admin_post(emu, "regions/SRC/synthetic", {"owner": BENCH_TENANT, "size": size_mib * MiB,
                           "seed": f"shards-{i}", "fields": {"id": image_id, "name": f"shards-{i:02d}"}})  # fmt: skip
            rows = {}
            for shards in SHARDS:
                job = _job(workdir / f"k{shards}.toml", emu, f"bench-shards-k{shards}", ids, bandwidth_mib)
                rows[shards] = _run_sharded(job, shards, workdir)
                if rows[shards]["copied"] != IMAGES * 2:
                    raise RuntimeError(f"K = {shards} copied {rows[shards]['copied']} of {IMAGES * 2}")
    single = rows[1]["read_mib_s"]
    for row in rows.values():
        row["speedup"] = row["read_mib_s"] / single
        row["efficiency"] = row["speedup"] / row["shards"]
    return {"images": IMAGES, "size_mib": size_mib, "bandwidth_mib_s": bandwidth_mib,
            "rows": {str(k): v for k, v in rows.items()}}  # fmt: skip
