"""Crash safety: ``kill -9`` of ``imgmig run`` at many exact points, then reruns.

After each crash the next run must complete with exactly one verified copy of every selected image in
every target, nothing extra in any target, a journal that loads, and a further run that moves 0 bytes.
The kills are real SIGKILLs of the real process, placed with fail points (``IMGMIG_FAILPOINTS``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.state.journal import Journal

from .jobsetup import CRASH_POINTS, check_invariants, make_source, new_tenants, run_cli, write_job
from .procs import EmulatorProcess, emulator_process

TARGETS = ("KR2", "JP1")


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorProcess]:
    """One `imgmig emulate` process for the module; each test uses its own tenants."""
    with emulator_process("--regions", "KR1,KR2,JP1") as proc:
        yield proc


def report(path: Path) -> dict:  # type: ignore[type-arg]
    return json.loads(path.read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_kill_9_then_rerun_converges(emu: EmulatorProcess, tmp_path: Path, point: str) -> None:
    """kill -9 at `point`; the rerun completes exactly once per target; the next run moves 0 bytes."""
    tenant, partner, other = new_tenants(3)
    sources = make_source(emu.identity_url, tenant, partner=partner, other=other)
    job = write_job(tmp_path / "job.toml", name="crash", identity_url=emu.identity_url, tenant=tenant,
                    journal=tmp_path / "state")  # fmt: skip

    crashed = run_cli("run", str(job), "--no-progress", env={"IMGMIG_FAILPOINTS": point})
    assert crashed.returncode == -9, f"fail point {point} was not reached: {crashed.stderr[-2000:]}"

    rerun = run_cli("run", str(job), "--no-progress", "--report", str(tmp_path / "rerun.json"))
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr[-3000:]
    check_invariants(emu.admin, "crash", sources, TARGETS, tenant=tenant)
    state = Journal.read(tmp_path / "state", "crash")
    assert {t.state for i in state.images.values() for t in i.targets.values()} == {"done"}

    again = run_cli("run", str(job), "--no-progress", "--report", str(tmp_path / "again.json"))
    assert again.returncode == 0, again.stderr[-2000:]
    doc = report(tmp_path / "again.json")
    assert doc["bytes_written"] == 0
    assert doc["counts"]["up_to_date"] == len(sources) * len(TARGETS)
    check_invariants(emu.admin, "crash", sources, TARGETS, tenant=tenant)
