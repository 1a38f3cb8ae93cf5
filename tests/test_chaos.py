"""Chaos scenarios: every fault a WAN link and a cloud API can produce, between imgmig and the regions.

Each scenario runs a job against `imgmig emulate` with faults set through its admin endpoint, then checks
the four invariants: no image is marked done without verification, no duplicates, no orphans, and the
resumed run (faults cleared) completes. `make test` runs this bounded form; `make chaos` runs it too,
together with a longer soak.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.state.journal import Journal

from .chaos import admin_post, invariants, no_duplicates, set_faults, small_disk, state
from .jobsetup import DEFAULT_SET, make_source, new_tenants, run_cli, write_job
from .procs import EmulatorProcess, emulator_process

pytestmark = pytest.mark.chaos
TARGETS = ("KR2", "JP1")
MiB = 1 << 20


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorProcess]:
    """One `imgmig emulate` for the module; every scenario uses its own tenants and clears the faults."""
    with emulator_process("--regions", "KR1,KR2,JP1") as proc:
        yield proc


@pytest.fixture
def clean(emu: EmulatorProcess) -> Iterator[EmulatorProcess]:
    """Faults cleared before and after each scenario; tokens back to their normal lifetime."""
    for region in ("KR1", *TARGETS):
        set_faults(emu.admin, region, {})
    yield emu
    for region in ("KR1", *TARGETS):
        set_faults(emu.admin, region, {})
    admin_post(emu.admin, "token-ttl", {"seconds": 3600})


def _job(emu: EmulatorProcess, tmp_path: Path, name: str, transfer: str = "") -> tuple[Any, ...]:
    tenant, partner, other = new_tenants(3)
    sources = make_source(emu.identity_url, tenant, partner=partner, other=other)
    job = write_job(tmp_path / "job.toml", name=name, identity_url=emu.identity_url, tenant=tenant,
                    journal=tmp_path / "state")  # fmt: skip
    if transfer:
        job.write_text(job.read_text().replace('read_timeout = "20s"', transfer))
    return tenant, sources, job


class MidTransfer(threading.Thread):
    """Calls ``action`` once the emulator reports an upload in progress (the job is mid-transfer), so a
    fault meant for the middle of a job provably lands there; ``fired`` tells whether it did."""

    def __init__(self, admin: str, action: Any) -> None:
        super().__init__(daemon=True)
        self.admin, self.action = admin, action
        self.fired = False
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.02):
            stats = state(self.admin)["stats"]
            if any(stats[r]["uploads_active"] for r in TARGETS):
                self.action()
                self.fired = True
                return


def _scenario(emu: EmulatorProcess, tmp_path: Path, name: str, faults: dict[str, dict[str, Any]], *,
              transfer: str = "", during: Any = None) -> dict[str, Any]:  # fmt: skip
    """Run with faults, check no duplicates and done-means-verified, resume without faults, check all.
    ``during`` is called once the job is mid-transfer (and the scenario fails if it never was)."""
    tenant, sources, job = _job(emu, tmp_path, name, transfer)
    for region, knobs in faults.items():
        set_faults(emu.admin, region, knobs)
    watcher = MidTransfer(emu.admin, during) if during else None
    if watcher:
        watcher.start()
    try:
        first = run_cli("run", str(job), "--no-progress", "--report", str(tmp_path / "first.json"), timeout=300)
    finally:
        if watcher:
            watcher.stop.set()
            watcher.join()
    assert watcher is None or watcher.fired, "the mid-job fault never landed: the job was never mid-transfer"
    assert first.returncode in (0, 1), first.stderr[-3000:]
    assert "Traceback" not in first.stderr
    no_duplicates(emu.admin, name, tenant, TARGETS)
    for region in faults:
        set_faults(emu.admin, region, {})
    resumed = run_cli("run", str(job), "--no-progress", timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr[-3000:]
    invariants(emu.admin, name, sources, TARGETS, tenant=tenant, journal=tmp_path / "state")
    return json.loads((tmp_path / "first.json").read_text())


def test_connection_resets_mid_download(clean: EmulatorProcess, tmp_path: Path) -> None:
    """Source connections drop mid-image, several times: Range resumes; every copy verified."""
    report = _scenario(clean, tmp_path, "c-dl-reset", {"KR1": {"drop_download": [MiB, 2 * MiB + 5, 3 * MiB]}})
    assert report["exit_code"] == 0
    assert report["source_resumes"] >= 2


def test_connection_resets_mid_upload(clean: EmulatorProcess, tmp_path: Path) -> None:
    """Target connections drop mid-upload: that target retries alone, reusing its queued image."""
    report = _scenario(clean, tmp_path, "c-ul-reset", {"KR2": {"drop_upload": [MiB // 2, MiB + 7]}})
    assert report["exit_code"] == 0
    assert report["retries"] >= 2


def test_stalls_hit_the_read_timeout(clean: EmulatorProcess, tmp_path: Path) -> None:
    """A stalled download and a stalled upload: the idle timeout fires, the work is retried or resumed."""
    report = _scenario(clean, tmp_path, "c-stall",
                       {"KR1": {"stall_download": [MiB]}, "JP1": {"stall_upload": [MiB]}},
                       transfer='read_timeout = "2s"')  # fmt: skip
    assert report["exit_code"] == 0
    assert report["source_resumes"] + report["retries"] >= 2


def test_5xx_bursts(clean: EmulatorProcess, tmp_path: Path) -> None:
    """Bursts of 500, 502, 503 and 504 on listing, creation, upload, download and reads: retried."""
    faults = {
        "KR1": {"statuses": [{"status": 503, "op": "list", "count": 2}, {"status": 502, "op": "download", "count": 2},
                             {"status": 500, "op": "members", "count": 1}]},
        "KR2": {"statuses": [{"status": 504, "op": "create", "count": 2}, {"status": 503, "op": "upload", "count": 2}]},
        "JP1": {"statuses": [{"status": 500, "op": "get", "count": 3}, {"status": 502, "op": "patch", "count": 2}]},
    }  # fmt: skip
    report = _scenario(clean, tmp_path, "c-5xx", faults)
    assert report["exit_code"] == 0


def test_429_with_retry_after(clean: EmulatorProcess, tmp_path: Path) -> None:
    """429 with Retry-After on every kind of call: honoured, then the job completes."""
    rule = {"status": 429, "op": "any", "count": 4, "retry_after": 0.3}
    report = _scenario(clean, tmp_path, "c-429", {"KR1": {"statuses": [rule]}, "KR2": {"statuses": [rule]}})
    assert report["exit_code"] == 0


def test_slow_target(clean: EmulatorProcess, tmp_path: Path) -> None:
    """One slow target (2 MiB/s with 50 ms latency) sets the pace; nothing fails."""
    report = _scenario(clean, tmp_path, "c-slow", {"JP1": {"bandwidth": 2 * MiB, "latency": 0.05}})
    assert report["exit_code"] == 0
    assert report["retries"] == 0


def test_token_expires_mid_stream(clean: EmulatorProcess, tmp_path: Path) -> None:
    """Tokens live 2 s and are all revoked while uploads are in flight: 401s are answered by refreshing
    (new tokens are issued after the revocation, counted at the identity service); the job completes."""
    admin_post(clean.admin, "token-ttl", {"seconds": 2})
    issued: list[int] = []

    def revoke() -> None:
        admin_post(clean.admin, "expire-tokens", {})
        issued.append(state(clean.admin)["tokens_issued"])

    report = _scenario(clean, tmp_path, "c-token", {"KR1": {"bandwidth": 4 * MiB}}, during=revoke)
    assert report["exit_code"] == 0
    assert state(clean.admin)["tokens_issued"] > issued[0]  # the run refreshed after its tokens died


def test_throttled_source_blames_no_target(clean: EmulatorProcess, tmp_path: Path) -> None:
    """The source drops mid-image and its resume is throttled (429, Retry-After 3 s) for longer than the
    stall timeout (2 s): no target is blamed, cancelled or retried, and no upload restarts."""
    before = state(clean.admin)["stats"]
    faults = {
        "KR1": {
            "drop_download": [MiB],
            "statuses": [{"status": 429, "op": "download", "count": 1, "retry_after": 3, "skip": 1}],
        }
    }
    report = _scenario(clean, tmp_path, "c-throttle", faults, transfer='read_timeout = "2s"')
    assert report["exit_code"] == 0
    assert report["retries"] == 0
    assert report["source_resumes"] >= 1
    after = state(clean.admin)["stats"]
    for region in TARGETS:  # one upload per image: the first run's, nothing restarted (the resume uploads none)
        started = after[region]["uploads_started"] - before[region]["uploads_started"]
        assert started == len(DEFAULT_SET), (region, started)


def test_lost_answers(clean: EmulatorProcess, tmp_path: Path) -> None:
    """Answers lost after the server acted (first create, upload, PATCH and member write of each image, in
    both targets): the run itself ends with exit 0 and nothing extra (see also test_lost_answers.py)."""
    rules = [{"op": op, "count": None, "first_per_image": True, "writes_only": True}
             for op in ("create", "upload", "patch", "members")]  # fmt: skip
    report = _scenario(clean, tmp_path, "c-lost", {r: {"lose_response": rules} for r in TARGETS})
    assert report["exit_code"] == 0
    assert report["orphans_deleted"] == 0


def test_one_region_cannot_connect(clean: EmulatorProcess, tmp_path: Path) -> None:
    """A target region that refuses connections: the others complete, exit 1, and that region is named."""
    tenant, sources, job = _job(clean, tmp_path, "c-down")
    job.write_text(job.read_text() + '\n[auth.dead]\nendpoint = "http://127.0.0.1:9"\ntoken_env = "DEAD"\n'
                   '[[targets]]\nauth = "dead"\nregion = "XX1"\n')  # fmt: skip
    result = run_cli("run", str(job), "--no-progress", "--report", str(tmp_path / "r.json"), env={"DEAD": "tok-1"})
    assert result.returncode == 1
    report = json.loads((tmp_path / "r.json").read_text())
    assert list(report["unavailable_targets"]) == ["XX1"]
    assert "XX1" in result.stdout
    invariants(clean.admin, "c-down", sources, TARGETS, tenant=tenant, journal=tmp_path / "state")


def test_journal_disk_fills_up(clean: EmulatorProcess, tmp_path: Path) -> None:
    """The journal's disk fills up mid-run: a clean fatal error (no traceback), the journal loads, and
    once there is room the resumed run completes."""
    tenant, sources, job = _job(clean, tmp_path, "c-jfull")
    with small_disk(tmp_path / "state", 12 * 1024) as disk:
        first = run_cli("run", str(job), "--no-progress", **disk.popen)
        assert first.returncode == 1, first.stderr[-2000:]
        assert "cannot write the journal" in first.stderr
        assert "Traceback" not in first.stderr
        state = Journal.read(tmp_path / "state", "c-jfull")  # intact: loads, torn tail ignored
        assert state.images
        no_duplicates(clean.admin, "c-jfull", tenant, TARGETS)
        disk.grow()
        resumed = run_cli("run", str(job), "--no-progress", **disk.popen)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        invariants(clean.admin, "c-jfull", sources, TARGETS, tenant=tenant, journal=tmp_path / "state")


def test_spool_disk_fills_up(clean: EmulatorProcess, tmp_path: Path) -> None:
    """Spool writes fail mid-image (a 2 MiB file-size limit on the run: the spool passed its free-space
    check, then a write fails with EFBIG, as on a disk that filled up meanwhile; the small journal never
    reaches the limit): the copy goes on without the spool, and the retries re-read the source, which the
    source region's byte count shows."""
    tenant, sources, job = _job(clean, tmp_path, "c-sfull")
    set_faults(clean.admin, "JP1", {"statuses": [{"status": 503, "op": "upload", "count": 3}]})
    sent_before = state(clean.admin)["stats"]["KR1"]["bytes_sent"]
    # not a tmpfs: the spool is only used where the image plus a 64 MiB reserve fits, so a tiny disk would
    # never be written to at all, and the scenario would pass without happening
    with small_disk(tmp_path / "spool", 2 * MiB, mount=False) as disk:
        result = run_cli("run", str(job), "--no-progress", "--spool-dir", str(tmp_path / "spool"), **disk.popen)
        assert result.returncode == 0, result.stderr[-2000:]
        assert list((tmp_path / "spool").iterdir()) == []
    assert "spool_failed" in result.stderr  # the limit was hit: a spool write failed
    read = state(clean.admin)["stats"]["KR1"]["bytes_sent"] - sent_before
    assert read > sum(s.size for s in sources)  # retries had to read the source again: no spool served them
    invariants(clean.admin, "c-sfull", sources, TARGETS, tenant=tenant, journal=tmp_path / "state")


def test_journal_write_fails_mid_run(clean: EmulatorProcess, tmp_path: Path) -> None:
    """The 9th journal write fails half-way (ENOSPC) while the disk has room again for later writes: the
    log is cut back to its last complete record, nothing more is written, the run stops with the journal
    error (no traceback); the journal loads cleanly and the resumed run completes."""
    tenant, sources, job = _job(clean, tmp_path, "c-jfail")
    first = run_cli("run", str(job), "--no-progress", env={"IMGMIG_FAILPOINTS": "journal_enospc@9"})
    assert first.returncode == 1, first.stderr[-2000:]
    assert "cannot write the journal" in first.stderr
    assert "No space left" in first.stderr
    assert "Traceback" not in first.stderr
    log = (tmp_path / "state" / "journal.jsonl").read_bytes()
    assert log.endswith(b"\n")  # no partial line, and none written after one
    state_after = Journal.read(tmp_path / "state", "c-jfail")
    assert state_after.seq == 8  # exactly the records before the failed one
    Journal.open(tmp_path / "state", "c-jfail").close()  # opens for writing without repair
    no_duplicates(clean.admin, "c-jfail", tenant, TARGETS)
    resumed = run_cli("run", str(job), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    invariants(clean.admin, "c-jfail", sources, TARGETS, tenant=tenant, journal=tmp_path / "state")
