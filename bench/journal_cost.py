"""(d) Journal overhead: a real job of N tiny images x 3 targets against the emulator, at N = 1,000 and
10,000. The job's non-transfer time is its whole wall time (the images are 1 KiB, so nearly all of it is
listing, planning, API calls and bookkeeping); journal time is measured inside the journal itself."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from pipeline.config import parse_job
from pipeline.run.runner import RunControls, run_job

from .common import BENCH_TENANT, admin_post, emulator


def bench_journal(counts: list[int], *, image_size: int = 1024) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in counts:
        with tempfile.TemporaryDirectory() as tmp, emulator("SRC,T1,T2,T3", Path(tmp) / "emu") as emu:
            for region in ("T1", "T2", "T3"):
                admin_post(emu, f"faults/{region}", {"discard_uploads": True})
            admin_post(emu, "regions/SRC/synthetic", {"owner": BENCH_TENANT, "size": image_size, "seed": "journal",
                                                      "count": n, "fields": {"name": "tiny"}})  # fmt: skip
            doc = {
                "name": f"journal-{n}",
                "auth": {"b": {"identity_url": emu.identity_url, "tenant_id": BENCH_TENANT, "username": "bench",
                               "password_env": "PW"}},
                "source": {"auth": "b", "region": "SRC"},
                "targets": [{"auth": "b", "region": r} for r in ("T1", "T2", "T3")],
                "transfer": {"images_in_flight": 16, "connections_per_region": 32},
                "run": {"journal_dir": str(Path(tmp) / "state")},
            }  # fmt: skip
            spec = parse_job(doc, "bench", {"PW": "bench"})
            start = time.perf_counter()
            summary = anyio.run(lambda spec=spec: run_job(spec, RunControls(signals=())))
            wall = time.perf_counter() - start
            assert summary.exit_code == 0, summary.render()
            assert summary.counts()["copied"] == 3 * n
            out[str(n)] = {
                "images": n, "steps": 3 * n, "wall_s": wall, "journal_records": summary.journal_records,
                "journal_s": summary.journal_seconds,
                "us_per_record": 1e6 * summary.journal_seconds / max(summary.journal_records, 1),
                "journal_share": summary.journal_seconds / wall,
            }  # fmt: skip
    return out
