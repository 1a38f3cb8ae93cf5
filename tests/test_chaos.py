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

from pipeline.journal import Journal

from .chaos import admin_post, invariants, no_duplicates, set_faults, small_disk
from .jobsetup import make_source, new_tenants, run_cli, write_job
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


def _scenario(emu: EmulatorProcess, tmp_path: Path, name: str, faults: dict[str, dict[str, Any]], *,
              transfer: str = "", during: Any = None) -> dict[str, Any]:  # fmt: skip
    """Run with faults, check no duplicates and done-means-verified, resume without faults, check all."""
    tenant, sources, job = _job(emu, tmp_path, name, transfer)
    for region, knobs in faults.items():
        set_faults(emu.admin, region, knobs)
    timer = threading.Timer(1.0, during) if during else None
    if timer:
        timer.start()
    try:
        first = run_cli("run", str(job), "--no-progress", "--report", str(tmp_path / "first.json"), timeout=300)
    finally:
        if timer:
            timer.cancel()
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
    """Tokens live 2 s and are all revoked mid-job: 401s are answered by refreshing; the job completes."""
    admin_post(clean.admin, "token-ttl", {"seconds": 2})
    report = _scenario(clean, tmp_path, "c-token", {"KR1": {"bandwidth": 4 * MiB}},
                       during=lambda: admin_post(clean.admin, "expire-tokens", {}))  # fmt: skip
    assert report["exit_code"] == 0


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
    """The spool's disk fills up: the copy goes on without the spool (retries re-read the source)."""
    tenant, sources, job = _job(clean, tmp_path, "c-sfull")
    set_faults(clean.admin, "JP1", {"statuses": [{"status": 503, "op": "upload", "count": 3}]})
    with small_disk(tmp_path / "spool", 2 * MiB) as disk:
        popen = disk.popen if disk.mounted else {}  # a file-size limit would also hit the journal: tmpfs only
        result = run_cli("run", str(job), "--no-progress", "--spool-dir", str(tmp_path / "spool"), **popen)
        assert result.returncode == 0, result.stderr[-2000:]
        assert list((tmp_path / "spool").iterdir()) == []
    invariants(clean.admin, "c-sfull", sources, TARGETS, tenant=tenant, journal=tmp_path / "state")
