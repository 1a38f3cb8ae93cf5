"""Randomized soak: seeded runs with random fault schedules and random kill -9 points, each followed by a
resume, with the invariants checked after every run. Bounded by time (IMGMIG_SOAK_SECONDS, default 240 s
in `make test`; `make chaos` gives it longer) and by IMGMIG_SOAK_RUNS; it prints its figures."""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .chaos import audit, fired, set_faults
from .jobsetup import CRASH_POINTS, make_source, new_tenants, run_cli, write_job
from .procs import EmulatorProcess, emulator_process

pytestmark = pytest.mark.chaos
TARGETS = ("KR2", "JP1")
MiB = 1 << 20
BUDGET = float(os.environ.get("IMGMIG_SOAK_SECONDS", "240"))
MAX_RUNS = int(os.environ.get("IMGMIG_SOAK_RUNS", "1000"))
SEED = int(os.environ.get("IMGMIG_SOAK_SEED", "20261130"))


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorProcess]:
    """One `imgmig emulate` for the soak."""
    with emulator_process("--regions", "KR1,KR2,JP1") as proc:
        yield proc


def random_faults(rng: random.Random) -> dict[str, dict[str, Any]]:
    """One to three faults on random regions, with random parameters."""
    faults: dict[str, dict[str, Any]] = {}
    for _ in range(rng.randint(1, 3)):
        region = rng.choice(("KR1", "KR2", "JP1"))
        knobs = faults.setdefault(region, {})
        kind = rng.choice(("drop_download", "drop_upload", "status", "429", "slow", "corrupt", "lose", "throttle"))
        if kind == "lose" and region != "KR1":
            # answers lost after the server acted: the first write of one kind per image
            op = rng.choice(("create", "upload", "patch", "members"))
            knobs.setdefault("lose_response", []).append(
                {"op": op, "count": None, "first_per_image": True, "writes_only": True}
            )
        elif kind == "throttle" and region == "KR1":
            # the stream drops, and its resume is throttled (429 with Retry-After)
            knobs["drop_download"] = [rng.randrange(1, 3 * MiB)]
            knobs.setdefault("statuses", []).append(
                {"status": 429, "op": "download", "count": 1, "retry_after": 1.0, "skip": 1}
            )
        elif kind == "drop_download" and region == "KR1":
            knobs["drop_download"] = sorted(rng.randrange(1, 5 * MiB) for _ in range(rng.randint(1, 3)))
        elif kind == "drop_upload" and region != "KR1":
            knobs["drop_upload"] = sorted(rng.randrange(1, 3 * MiB) for _ in range(rng.randint(1, 2)))
        elif kind == "corrupt" and region == "KR1":
            knobs["corrupt_download"] = [rng.randrange(0, 3 * MiB)]
        elif kind == "slow":
            knobs["bandwidth"] = rng.choice((4 * MiB, 8 * MiB))
        else:
            status = 429 if kind == "429" else rng.choice((500, 502, 503, 504))
            op = rng.choice(("any", "create", "upload", "download", "get", "patch", "list"))
            knobs.setdefault("statuses", []).append({"status": status, "op": op, "count": rng.randint(1, 3),
                                                     "retry_after": 0.1 if status == 429 else None})  # fmt: skip
    return faults


@pytest.mark.timeout(int(BUDGET) + 600)  # the budget bounds starting new runs; the last one must finish
def test_randomized_soak(emu: EmulatorProcess, tmp_path: Path) -> None:
    """Random faults and kill -9 points; after each resume: verified, no duplicates, no orphans."""
    rng = random.Random(SEED)
    figures = {"runs": 0, "faults_injected": 0, "kills": 0, "images_verified": 0, "duplicates": 0,
               "orphans": 0, "missing": 0, "data_mismatches": 0}  # fmt: skip
    failures: list[str] = []
    start = time.monotonic()
    fired_before = fired(emu.admin)
    while time.monotonic() - start < BUDGET and figures["runs"] < MAX_RUNS:
        n = figures["runs"]
        work = tmp_path / f"run-{n}"
        work.mkdir()
        tenant, partner, other = new_tenants(3)
        sizes = [rng.choice((0, 1, MiB // 2, 2 * MiB + rng.randrange(1000), 3 * MiB)) for _ in range(rng.randint(2, 4))]
        specs = [(size, {"name": f"s{n}-{i}", "tags": [f"t{i}"], "os_distro": rng.choice(("ubuntu", "debian"))}, {})
                 for i, size in enumerate(sizes)]  # fmt: skip
        sources = make_source(emu.identity_url, tenant, partner=partner, other=other, specs=specs)
        job = write_job(work / "job.toml", name=f"soak-{n}", identity_url=emu.identity_url, tenant=tenant,
                        journal=work / "state")  # fmt: skip
        faults = random_faults(rng)
        for region, knobs in faults.items():
            set_faults(emu.admin, region, knobs)
        env = {}
        if rng.random() < 0.6:
            name = rng.choice(CRASH_POINTS).split("@")[0]
            env["IMGMIG_FAILPOINTS"] = f"{name}@{rng.randint(1, 4)}"
        first = run_cli("run", str(job), "--no-progress", env=env, timeout=300)
        for region in ("KR1", *TARGETS):
            set_faults(emu.admin, region, {})
        assert first.returncode in (0, 1, -9), first.stderr[-3000:]
        assert "Traceback" not in first.stderr
        figures["kills"] += first.returncode == -9
        between = audit(emu.admin, f"soak-{n}", sources, TARGETS, tenant=tenant, journal=work / "state")
        resumed = run_cli("run", str(job), "--no-progress", timeout=300)
        if resumed.returncode != 0:
            failures.append(f"run {n} (faults {faults}, env {env}): resume exit {resumed.returncode}: "
                            f"{resumed.stderr[-1500:]}")  # fmt: skip
        after = audit(emu.admin, f"soak-{n}", sources, TARGETS, tenant=tenant, journal=work / "state")
        for key in ("duplicates", "orphans", "data_mismatches"):
            figures[key] += between[key] + after[key]
        figures["missing"] += after["missing"]
        figures["images_verified"] += after["verified"]
        bad_between = between["duplicates"] + between["orphans"] + between["data_mismatches"]
        if bad_between or any(after[k] for k in ("duplicates", "orphans", "missing", "partial", "data_mismatches")):
            failures.append(f"run {n} (faults {faults}, env {env}): between {between}, after {after}")
        figures["runs"] += 1
    figures["faults_injected"] = fired(emu.admin) - fired_before
    figures["seconds"] = round(time.monotonic() - start, 1)
    print(f"\nsoak figures (seed {SEED}): {json.dumps(figures)}")  # noqa: T201 - the soak reports its figures
    (tmp_path.parent / "soak-figures.json").write_text(json.dumps(figures))
    assert not failures, "\n".join(failures)
    assert figures["runs"] >= 3
    assert figures["images_verified"] > 0
    assert figures["duplicates"] == figures["orphans"] == figures["missing"] == figures["data_mismatches"] == 0
