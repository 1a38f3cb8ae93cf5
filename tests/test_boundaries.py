"""Error boundaries that tell the truth: a bug in an upload is a bug (one attempt, exit 1, its traceback), not a
retried target failure; max_runtime during a slow listing parks (exit 10) before planning; a journal that cannot
record the run's end or make it durable fails the run (exit 1, naming the journal); a metadata 5xx that outlasts
its retries fails that image x target's metadata step. Each scenario is counted at the emulator."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.emulator import Emulator, StatusFault
from pipeline.state.journal import Journal

from .chaos import set_faults, state
from .jobsetup import MiB, add, check_invariants, copies, job, make_source, new_tenants, run, run_cli, write_job
from .procs import EmulatorProcess, emulator_process

ONE_IMAGE = [(3 * MiB, {"name": "only", "tags": ["t"]}, {})]


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorProcess]:
    """One ``imgmig emulate`` process for the module; each test uses its own tenant and counts deltas."""
    with emulator_process("--regions", "KR1,KR2,JP1") as proc:
        yield proc


def requests(emu: EmulatorProcess, region: str) -> dict[str, int]:
    """What ``region`` of the emulator received so far, by request kind."""
    counts: dict[str, int] = state(emu.admin)["stats"][region]["requests"]
    return counts


def test_a_bug_in_an_upload_stops_the_run_after_one_attempt(emu: EmulatorProcess, tmp_path: Path) -> None:
    """A TypeError raised while the upload's body is sent (fail point ``uploading=bug``) is not a target failure:
    the run stops with exit 1 and the TypeError's traceback, and KR2 received exactly one upload (no retry, though
    the retry budget allows five). The next run, without the bug, converges to exactly one verified copy."""
    tenant, partner, other = new_tenants(3)
    sources = make_source(emu.identity_url, tenant, partner=partner, other=other, specs=ONE_IMAGE)
    path = write_job(tmp_path / "job.toml", name="bug", identity_url=emu.identity_url, tenant=tenant,
                     journal=tmp_path / "state", targets=("KR2",))  # fmt: skip
    before = requests(emu, "KR2").get("upload", 0)
    crashed = run_cli("run", str(path), "--no-progress", env={"IMGMIG_FAILPOINTS": "uploading=bug"})
    assert crashed.returncode == 1, crashed.stderr[-3000:]
    assert "Traceback" in crashed.stderr
    assert "TypeError: a deliberate programming error (fail point uploading)" in crashed.stderr
    assert requests(emu, "KR2").get("upload", 0) - before == 1  # one attempt, never retried
    rerun = run_cli("run", str(path), "--no-progress")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    check_invariants(emu.admin, "bug", sources, ("KR2",), tenant=tenant)


def test_max_runtime_during_a_slow_listing_parks_before_planning(emu: EmulatorProcess, tmp_path: Path) -> None:
    """Every source request takes 1.5 s and ``--max-runtime 1s``: the deadline falls inside discovery. The run
    parks with exit 10 and says so ("parked before planning"), no traceback; no target received a create or an
    upload. The next run, with the source fast again, copies everything."""
    tenant, partner, other = new_tenants(3)
    sources = make_source(emu.identity_url, tenant, partner=partner, other=other, specs=ONE_IMAGE)
    path = write_job(tmp_path / "job.toml", name="slow", identity_url=emu.identity_url, tenant=tenant,
                     journal=tmp_path / "state")  # fmt: skip
    before = {r: dict(requests(emu, r)) for r in ("KR1", "KR2", "JP1")}
    set_faults(emu.admin, "KR1", {"latency": 1.5})
    try:
        parked = run_cli("run", str(path), "--no-progress", "--max-runtime", "1s", "--report", str(tmp_path / "r.json"))
    finally:
        set_faults(emu.admin, "KR1", {"latency": 0})
    assert parked.returncode == 10, parked.stdout + parked.stderr[-3000:]
    assert "Traceback" not in parked.stderr
    assert "parked before planning" in parked.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["outcome"], report["exit_code"], report["plan"]) == ("parked", 10, None)
    assert requests(emu, "KR1").get("list", 0) > before["KR1"].get("list", 0)  # the listing had begun
    for region in ("KR2", "JP1"):
        now = requests(emu, region)
        assert (now.get("create", 0), now.get("upload", 0)) == (
            before[region].get("create", 0), before[region].get("upload", 0)), region  # fmt: skip
    runs = Journal.read(tmp_path / "state", "slow").runs
    assert [(r.outcome, r.exit_code) for r in runs] == [("parked", 10)]
    again = run_cli("run", str(path), "--no-progress")
    assert again.returncode == 0, again.stderr[-3000:]
    check_invariants(emu.admin, "slow", sources, ("KR2", "JP1"), tenant=tenant)


@pytest.mark.parametrize(
    ("point", "says"),
    [
        ("record:run_finished=enospc", "cannot write the journal in"),
        ("journal_sync=enospc", "cannot sync the journal in"),
    ],
    ids=["run_finished-record", "final-fsync"],
)
def test_a_run_whose_end_cannot_be_journalled_exits_1(emu: EmulatorProcess, tmp_path: Path, point: str,
                                                       says: str) -> None:  # fmt: skip
    """The copies succeed, but the journal cannot take the ``run_finished`` record (a full disk), or cannot make the
    log durable at the end: the run exits 1 with one paragraph naming the journal, no traceback, and the report
    says fatal. The copies themselves are verified, and the next run loads the journal and moves 0 bytes."""
    tenant, partner, other = new_tenants(3)
    sources = make_source(emu.identity_url, tenant, partner=partner, other=other, specs=ONE_IMAGE)
    path = write_job(tmp_path / "job.toml", name="end", identity_url=emu.identity_url, tenant=tenant,
                     journal=tmp_path / "state")  # fmt: skip
    failed = run_cli("run", str(path), "--no-progress", "--report", str(tmp_path / "r1.json"),
                     env={"IMGMIG_FAILPOINTS": point})  # fmt: skip
    assert failed.returncode == 1, failed.stdout + failed.stderr[-3000:]
    assert "Traceback" not in failed.stderr
    assert f"imgmig: error: {says} {tmp_path / 'state'}" in failed.stderr
    report = json.loads((tmp_path / "r1.json").read_text())
    assert (report["outcome"], report["exit_code"], report["counts"]["copied"]) == ("fatal", 1, 2)
    # the journal never says that this run ended well: no end at all (the record failed), or its fatal end
    (run,) = Journal.read(tmp_path / "state", "end").runs
    assert (run.outcome, run.exit_code) == ((None, None) if point.startswith("record:") else ("fatal", 1))
    check_invariants(emu.admin, "end", sources, ("KR2", "JP1"), tenant=tenant)
    again = run_cli("run", str(path), "--no-progress", "--report", str(tmp_path / "r2.json"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "r2.json").read_text())["bytes_written"] == 0


async def test_a_metadata_503_that_persists_fails_the_step(emulator: Emulator, tmp_path: Path) -> None:
    """A shared image whose copy in KR2 cannot get its member list or members (503 on every member request): the
    copy's bytes are verified, the member requests are retried within the image x target's budget (counted at
    KR2), and the step ends failed with a metadata error (exit 1), not done with a per-item problem. JP1 is done."""
    tenant, partner = uuid.uuid4().hex, uuid.uuid4().hex
    add(emulator, tenant, "shared-img", size=MiB, visibility="shared", members={partner: "pending"})
    emulator.faults("KR2").statuses.append(StatusFault(503, op="members", count=None, rate=1.0))
    summary = await run(job(emulator, tmp_path, tenant))
    assert summary.exit_code == 1
    steps = {s.target: s for s in summary.steps}
    assert steps["JP1"].state == "done"
    assert steps["KR2"].state == "failed"
    assert steps["KR2"].error is not None
    assert steps["KR2"].error.startswith("metadata: ")
    assert steps["KR2"].problems == ()
    assert emulator.regions["KR2"].stats.requests["members"] == 6  # retries = 5: the budget's six attempts
    (kept,) = copies(emulator, "KR2", tenant).values()
    assert kept.status == "active"  # the verified bytes stay; the next run brings the metadata in line
