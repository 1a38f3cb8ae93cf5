"""(e) whole-process mode: what an operator's stopwatch sees. N images of 1 MiB (default 40) from SRC to T1 + T2
on the emulator, at 0 ms and with 30 ms added to every request, each contender a process of its own, timed from
outside (launch to exit):

* ``imgmig run JOB`` (``python -m pipeline``, the job's defaults), into a fresh target project each round;
* the verifying relay (``bench.relay_proc``): the same concurrency and connections, md5 + sha512 of the stream,
  one read-back per copy, no journal and no metadata;
* imgmig's idle rerun of the same job (nothing left to do);
* the first run's time to the first byte: from launch to the first upload the targets saw (counted at the
  emulator, by project).

Rounds alternate imgmig and the relay; the figure is the best of ``reps``. Both programs' own code is byte-compiled
first, as ``pip install`` does (the container image too): a checkout run with PYTHONDONTWRITEBYTECODE would
otherwise compile imgmig's modules from source at every start (about 0.15 s here), which no installed copy does.
"""

from __future__ import annotations

import compileall
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from pipeline.config.values import DEFAULT_CONNECTIONS_PER_REGION, DEFAULT_IMAGES_IN_FLIGHT

from .common import BENCH_TENANT, Emu, admin_post, emulator
from .small import TARGETS, set_latency

MiB = 1 << 20


def _timed(args: list[str]) -> tuple[float, float, bytes]:
    """Run ``args``; its launch time (epoch), its wall time from outside, its stdout. It must exit 0."""
    env = {**os.environ, "BENCH_PW": "bench"}
    epoch, start = time.time(), time.perf_counter()
    proc = subprocess.run(args, capture_output=True, env=env, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])} exited {proc.returncode}: {proc.stderr.decode()[-2000:]}")
    return epoch, wall, proc.stdout


def _job(emu: Emu, tmp: Path, tenant: str) -> Path:
    name = f"wan-{tenant[:8]}"
    path = tmp / f"{name}.toml"
    lines = [f'name = "{name}"']
    for profile, project in (("src", BENCH_TENANT), ("dst", tenant)):
        lines += [f"[auth.{profile}]", f'identity_url = "{emu.identity_url}"', f'tenant_id = "{project}"',
                  'username = "bench"', 'password_env = "BENCH_PW"']  # fmt: skip
    lines += ["[source]", 'auth = "src"', 'region = "SRC"']
    for region in TARGETS:
        lines += ["[[targets]]", 'auth = "dst"', f'region = "{region}"']
    lines += ["[run]", f'journal_dir = "{tmp / "state" / name}"', ""]
    path.write_text("\n".join(lines))
    return path


def _first_upload(emu: Emu, tenant: str) -> float:
    with urllib.request.urlopen(f"{emu.admin}/state", timeout=60) as resp:
        stats = json.loads(resp.read())["stats"]
    return min(stats[r]["first_upload_at"][tenant] for r in TARGETS)


def imgmig_round(emu: Emu, tmp: Path, count: int, *, rerun: bool) -> dict[str, Any]:
    tenant = uuid.uuid4().hex
    job = _job(emu, tmp, tenant)
    cmd = [sys.executable, "-m", "pipeline", "run", str(job), "--no-progress", "--log-format", "json"]
    epoch, wall, _ = _timed(cmd)
    out = {"wall_s": wall, "first_byte_s": _first_upload(emu, tenant) - epoch}
    if rerun:
        out["idle_wall_s"] = _timed(cmd)[1]
    return out


def relay_round(emu: Emu, count: int) -> dict[str, Any]:
    tenant = uuid.uuid4().hex
    cfg = {"identity_url": emu.identity_url, "regions": emu.regions, "source": "SRC", "targets": list(TARGETS),
           "source_tenant": BENCH_TENANT, "target_tenant": tenant, "user": "bench", "password": "bench",
           "in_flight": DEFAULT_IMAGES_IN_FLIGHT, "connections": DEFAULT_CONNECTIONS_PER_REGION}  # fmt: skip
    epoch, wall, stdout = _timed([sys.executable, "-m", "bench.relay_proc", json.dumps(cfg)])
    done = json.loads(stdout)
    assert done == {"images": count, "verified": count * len(TARGETS)}, done
    return {"wall_s": wall, "first_byte_s": _first_upload(emu, tenant) - epoch}


def bench_wholeproc(count: int = 40, *, reps: int = 3) -> dict[str, Any]:
    out: dict[str, Any] = {"images": count, "size_mib": 1}
    root = Path(__file__).resolve().parent.parent
    for package in ("pipeline", "bench"):
        compileall.compile_dir(root / package, quiet=1)
    with tempfile.TemporaryDirectory() as tmp_name, emulator("SRC,T1,T2", Path(tmp_name) / "emu") as emu:
        tmp = Path(tmp_name)
        admin_post(emu, "regions/SRC/synthetic", {
            "owner": BENCH_TENANT, "size": MiB, "seed": "wholeproc", "count": count,
            "fields": {"name": "wan", "os_type": "linux", "disk_format": "raw", "container_format": "bare"},
        })  # fmt: skip
        for latency in (0.0, 0.030):
            set_latency(emu, latency)
            imgmig, relays = [], []
            for rep in range(reps):
                imgmig.append(imgmig_round(emu, tmp, count, rerun=rep == 0))
                relays.append(relay_round(emu, count))
            row = {
                "imgmig_s": min(r["wall_s"] for r in imgmig), "relay_s": min(r["wall_s"] for r in relays),
                "imgmig_runs_s": [r["wall_s"] for r in imgmig], "relay_runs_s": [r["wall_s"] for r in relays],
                "imgmig_first_byte_s": min(r["first_byte_s"] for r in imgmig),
                "relay_first_byte_s": min(r["first_byte_s"] for r in relays),
                "idle_rerun_s": imgmig[0]["idle_wall_s"],
            }  # fmt: skip
            row["ratio"] = row["relay_s"] / row["imgmig_s"]
            out[f"{round(latency * 1000)}ms"] = row
    return out


if __name__ == "__main__":
    print(json.dumps(bench_wholeproc(int(sys.argv[1]) if len(sys.argv) > 1 else 40), indent=2))
