"""End-to-end jobs against real OpenStack Glance 33 (three regions, several tenants, behind the NHN-style
identity shim): a metadata-rich multi-image job, kill -9 and resume, and tokens expiring mid-job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .jobsetup import PASSWORD, PASSWORD_ENV, check_invariants_api, make_source, new_tenants, run_cli, write_job
from .procs import stop_process, wait_until

if TYPE_CHECKING:
    from .realglance import GlanceCluster

pytestmark = pytest.mark.real_glance
TARGETS = ("KR2", "JP1")


def setup_job(cluster: GlanceCluster, tmp_path: Path, name: str, *, extra: str = "") -> tuple:  # type: ignore[type-arg]
    tenant, partner, other = new_tenants(3)
    sources = make_source(cluster.identity_url, tenant, partner=partner, other=other)
    job = write_job(tmp_path / "job.toml", name=name, identity_url=cluster.identity_url, tenant=tenant,
                    journal=tmp_path / "state", partner=partner,
                    extra='[copy]\naccept_members_with = ["partner"]\n' + extra)  # fmt: skip
    return tenant, partner, sources, job


def test_multi_image_job_with_metadata(glance_cluster: GlanceCluster, tmp_path: Path) -> None:
    """KR1 -> KR2 + JP1 on real Glance: data, properties, tags (incl. non-ASCII), members of two tenants
    (the accepted one accepted through its profile), a protected image; the rerun moves 0 bytes."""
    tenant, partner, sources, job = setup_job(glance_cluster, tmp_path, "glance-e2e")
    first = run_cli("run", str(job), "--no-progress", "--report", str(tmp_path / "first.json"))
    assert first.returncode == 0, first.stdout + first.stderr[-3000:]
    report = json.loads((tmp_path / "first.json").read_text())
    assert report["counts"]["copied"] == len(sources) * len(TARGETS)
    check_invariants_api(glance_cluster.identity_url, "glance-e2e", sources, TARGETS, tenant=tenant,
                         member_status={partner: "accepted"})  # fmt: skip
    again = run_cli("run", str(job), "--no-progress", "--report", str(tmp_path / "again.json"))
    assert again.returncode == 0, again.stderr[-2000:]
    doc = json.loads((tmp_path / "again.json").read_text())
    assert doc["bytes_written"] == 0
    assert doc["counts"]["up_to_date"] == len(sources) * len(TARGETS)
    verify = run_cli("verify", str(job), "--deep")
    assert verify.returncode == 0, verify.stdout[-3000:]


@pytest.mark.parametrize("point", ["uploading@3", "created@2", "metadata", "journal_torn@12"])
def test_kill_9_and_resume(glance_cluster: GlanceCluster, tmp_path: Path, point: str) -> None:
    """kill -9 mid-job on real Glance; the rerun converges to one verified copy per target, nothing extra."""
    tenant, _partner, sources, job = setup_job(glance_cluster, tmp_path, "glance-crash")
    crashed = run_cli("run", str(job), "--no-progress", env={"IMGMIG_FAILPOINTS": point})
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    rerun = run_cli("run", str(job), "--no-progress")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr[-3000:]
    check_invariants_api(glance_cluster.identity_url, "glance-crash", sources, TARGETS, tenant=tenant)
    again = run_cli("run", str(job), "--no-progress", "--report", str(tmp_path / "again.json"))
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((tmp_path / "again.json").read_text())["bytes_written"] == 0


def tokens_issued(cluster: GlanceCluster, tenant: str) -> int:
    return int(cluster.state()["tokens_issued_by_tenant"].get(tenant, 0))


def test_short_token_ttl_mid_job(glance_cluster: GlanceCluster, tmp_path: Path) -> None:
    """Tokens that live 2 s during a job that takes longer: the client refreshes them in flight (the
    identity shim issues the job's tenant at least three tokens during the run) and the job completes."""
    tenant, partner, sources, job = setup_job(glance_cluster, tmp_path, "glance-ttl")
    job.write_text(job.read_text().replace('chunk_size = "1MiB"', 'chunk_size = "1MiB"\nbandwidth = "2MiB/s"'))
    before = tokens_issued(glance_cluster, tenant)
    glance_cluster.set_token_ttl(2)
    try:
        result = run_cli("run", str(job), "--no-progress", "--report", str(tmp_path / "r.json"))
    finally:
        glance_cluster.set_token_ttl(3600)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    # the first token, then refreshes at 90% of each 2 s life while 11 MiB trickle through at 2 MiB/s
    assert tokens_issued(glance_cluster, tenant) - before >= 3
    check_invariants_api(glance_cluster.identity_url, "glance-ttl", sources, TARGETS, tenant=tenant,
                         member_status={partner: "accepted"})  # fmt: skip


def test_tokens_revoked_mid_job(glance_cluster: GlanceCluster, tmp_path: Path) -> None:
    """Every token is revoked while the job runs (401 on the next call): refresh, retry, complete."""
    tenant, partner, sources, job = setup_job(glance_cluster, tmp_path, "glance-revoke")
    text = job.read_text().replace('chunk_size = "1MiB"', 'chunk_size = "1MiB"\nbandwidth = "3MiB/s"')
    job.write_text(text)
    env = {**os.environ, PASSWORD_ENV: PASSWORD}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(job), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    try:
        # revoke only once Glance is receiving uploads: the job is provably mid-transfer
        wait_until(lambda: any(glance_cluster.state()["stats"][r]["uploads_active"] for r in TARGETS), proc,
                   "uploads in flight")  # fmt: skip
        glance_cluster.expire_tokens()
        revoked_at = tokens_issued(glance_cluster, tenant)
        out, err = proc.communicate(timeout=300)
    finally:
        stop_process(proc, signal.SIGKILL)
    assert proc.returncode == 0, out + err[-3000:]
    assert tokens_issued(glance_cluster, tenant) > revoked_at  # it refreshed after the revocation
    check_invariants_api(glance_cluster.identity_url, "glance-revoke", sources, TARGETS, tenant=tenant,
                         member_status={partner: "accepted"})  # fmt: skip
