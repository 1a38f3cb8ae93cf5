"""(g) Catalogue scale: N synthetic 4 KiB images x 2 targets on the emulator, each step its own process, measured
from outside: ``plan``, the first ``run``, an idle rerun and ``status`` (wall time and peak RSS from ``wait4``),
journal bytes per image x target after the first run and after 10 idle reruns, the longest event-loop stall of
each run (a probe task that sleeps 50 ms and records how late it wakes, from the run's start to its end), and the
slope of RSS per 1,000 images between the sizes.

A run is ``python -m bench.catalogue run JOB``: ``run_job`` exactly as ``imgmig run`` calls it, plus the probe in
the same event loop; ``plan`` and ``status`` are the real ``imgmig`` command lines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import BENCH_TENANT, admin_post, emulator

PROBE_SLEEP = 0.05


def catalogue_job(emu: Any, tmp: Path, n: int) -> Path:
    path = tmp / "job.toml"
    path.write_text("\n".join([
        f'name = "catalogue-{n}"',
        "[auth.b]", f'identity_url = "{emu.identity_url}"', f'tenant_id = "{BENCH_TENANT}"', 'username = "bench"',
        'password_env = "BENCH_PW"',
        "[source]", 'auth = "b"', 'region = "SRC"',
        "[[targets]]", 'auth = "b"', 'region = "T1"', "[[targets]]", 'auth = "b"', 'region = "T2"',
        "[transfer]", "images_in_flight = 16", "connections_per_region = 32",
        "[run]", f'journal_dir = "{tmp / "state"}"', "",
    ]))  # fmt: skip
    return path


def measured(args: list[str]) -> dict[str, Any]:
    """Run ``args`` as a child process; its wall time, its own peak RSS (wait4's ru_maxrss) and its stdout."""
    env = {**os.environ, "BENCH_PW": "bench"}
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    out = b""
    if proc.stdout is not None:
        with proc.stdout:
            out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(args[:4])} exited {proc.returncode}")
    return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024, "stdout": out, "exit": proc.returncode}


def _journal_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def bench_catalogue(sizes: list[int], *, idle_reruns: int = 10) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp_name, emulator("SRC,T1,T2", Path(tmp_name) / "emu") as emu:
            tmp = Path(tmp_name)
            admin_post(emu, "regions/SRC/synthetic", {"owner": BENCH_TENANT, "size": 4096, "seed": "catalogue",
                                                      "count": n, "fields": {"name": "tiny"}})  # fmt: skip
            job = catalogue_job(emu, tmp, n)
            cli = [sys.executable, "-m", "pipeline"]
            runner = [sys.executable, "-m", "bench.catalogue", "run", str(job)]
            row: dict[str, Any] = {}
            row["plan"] = measured([*cli, "plan", str(job), "--json"])
            first = measured(runner)
            row["first_run"] = first
            pairs = 2 * n
            row["journal_bytes_per_pair_first"] = _journal_bytes(tmp / "state") / pairs
            idle = [measured(runner) for _ in range(idle_reruns)]
            row["idle_rerun"] = idle[0]
            row["idle_rerun_worst_rss_mib"] = max(r["peak_rss_mib"] for r in idle)
            row["journal_bytes_per_pair"] = _journal_bytes(tmp / "state") / pairs
            row["status"] = measured([*cli, "status", str(job), "--json"])
            for key in ("first_run", "idle_rerun"):
                doc = json.loads(row[key]["stdout"])
                row[key].update(max_stall_ms=doc["max_stall_ms"], copied=doc["copied"], up_to_date=doc["up_to_date"])
            for step in ("plan", "first_run", "idle_rerun", "status"):
                row[step].pop("stdout", None)
            out[str(n)] = row
    if len(sizes) >= 2:
        small, big = str(min(sizes)), str(max(sizes))
        per_k = (max(sizes) - min(sizes)) / 1000
        out["slope_mib_per_1000"] = {
            step: (out[big][step]["peak_rss_mib"] - out[small][step]["peak_rss_mib"]) / per_k
            for step in ("plan", "first_run", "idle_rerun", "status")
        }
    return out


def _run_with_probe(job: Path) -> None:
    """``run_job`` as ``imgmig run`` calls it, with the loop-lag probe beside it; prints one JSON line."""
    import anyio

    from pipeline.config import load_job
    from pipeline.report.logs import configure_logging
    from pipeline.run.runner import RunControls, run_job

    configure_logging("json", level="warning", stream=sys.stderr)  # stdout carries the one result line
    spec = load_job(job)
    worst = 0.0

    async def main() -> Any:
        nonlocal worst

        async def probe() -> None:
            nonlocal worst
            while True:
                start = anyio.current_time()
                await anyio.sleep(PROBE_SLEEP)
                worst = max(worst, anyio.current_time() - start - PROBE_SLEEP)

        async with anyio.create_task_group() as tg:
            tg.start_soon(probe)
            summary = await run_job(spec, RunControls(signals=()))
            tg.cancel_scope.cancel()
        return summary

    summary = anyio.run(main)
    counts = summary.counts()
    print(json.dumps({"max_stall_ms": round(worst * 1000, 1), "copied": counts["copied"],
                      "up_to_date": counts["up_to_date"], "exit": summary.exit_code}))  # fmt: skip


if __name__ == "__main__":
    if sys.argv[1:2] == ["run"]:
        _run_with_probe(Path(sys.argv[2]))
    else:
        print(json.dumps(bench_catalogue([int(x) for x in sys.argv[1:]] or [1000, 10000]), indent=2))
