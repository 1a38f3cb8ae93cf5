"""Fatal means fatal: a dead credential stops the job cleanly with exit 4 and names the profile, whatever
layer sees it, and nothing is retried against it. Each scenario is proven at the server: the 401s it
answered, the authentications it refused, the uploads in progress when the credential died."""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pipeline import errors
from pipeline.errors import ApiError, ImgmigError, TransferError

from .chaos import admin_post, set_faults
from .jobsetup import PASSWORD, PASSWORD_ENV, check_invariants, make_source, new_tenants, run_cli, write_job
from .procs import EmulatorProcess, emulator_process, stop_process, wait_until

if TYPE_CHECKING:
    from .realglance import GlanceCluster

TARGETS = ("KR2", "JP1")


@pytest.fixture
def emu() -> Iterator[EmulatorProcess]:
    """An emulator of this test's own: these tests change passwords and token lifetimes."""
    with emulator_process("--regions", "KR1,KR2,JP1") as proc:
        yield proc


def state(admin: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{admin}/state", timeout=10) as resp:
        doc: dict[str, Any] = json.loads(resp.read())
        return doc


def start_run(job: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full = {**os.environ, PASSWORD_ENV: PASSWORD, **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(job), "--no-progress", "--report",
                             str(job.parent / "report.json")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=full)  # fmt: skip


def slow_job(identity_url: str, tmp_path: Path, name: str) -> tuple[str, list[Any], Path]:
    tenant, partner, other = new_tenants(3)
    sources = make_source(identity_url, tenant, partner=partner, other=other)
    job = write_job(tmp_path / "job.toml", name=name, identity_url=identity_url, tenant=tenant,
                    journal=tmp_path / "state")  # fmt: skip
    job.write_text(job.read_text().replace('chunk_size = "1MiB"', 'chunk_size = "1MiB"\nbandwidth = "2MiB/s"'))
    return tenant, sources, job


def uploads_active(admin: str) -> bool:
    stats = state(admin)["stats"]
    return any(stats[r]["uploads_active"] > 0 for r in TARGETS)


# === the exception tree


def test_no_fatal_error_derives_from_what_per_image_handlers_catch() -> None:
    """Every fatal error class (exit codes 2, 3, 4, journal) stands outside ApiError and TransferError, so
    no ``except ApiError`` (client, engine, source, metadata, discovery, runner) can swallow it."""
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, ImgmigError)]
    fatal = [c for c in classes if c.fatal]
    assert {c.__name__ for c in fatal} >= {"AuthenticationError", "JournalError", "UsageError", "LockHeldError"}
    for cls in fatal:
        assert not issubclass(cls, ApiError | TransferError), cls
    for cls in classes:
        if issubclass(cls, ApiError | TransferError):
            assert not cls.fatal, cls


# === a 401 that persists after a fresh token, on every kind of request


@pytest.mark.parametrize(
    ("region", "op"),
    [("KR1", "list"), ("KR1", "members"), ("KR1", "download"), ("KR2", "list"), ("KR2", "schemas"),
     ("KR2", "create"), ("KR2", "upload+get"), ("KR2", "get"), ("KR2", "patch"), ("JP1", "members"),
     ("KR2", "delete")],
    ids=lambda v: v,
)  # fmt: skip
def test_persistent_401_on_any_call_stops_the_job_with_exit_4(
    emu: EmulatorProcess, tmp_path: Path, region: str, op: str
) -> None:
    """Every kind of call that can see a 401 (discovery, members, schemas, create, upload, download,
    verification read, metadata PATCH, member writes, the orphan sweep's delete) passes a credential
    refusal up as fatal: exit 4 naming the profile, no traceback, no retry storm, journal intact; the
    next run completes. An upload, which cannot be replayed, tests its credential at once with a read
    (``upload+get``: both refused) instead of starting another pass."""
    tenant, partner, other = new_tenants(3)
    sources = make_source(emu.identity_url, tenant, partner=partner, other=other)
    name = f"auth-{op.replace('+', '-')}"
    job = write_job(tmp_path / "job.toml", name=name, identity_url=emu.identity_url, tenant=tenant,
                    journal=tmp_path / "state")  # fmt: skip
    if op == "delete":  # the sweep needs something to delete: a leftover copy next to a good one
        assert run_cli("run", str(job), "--no-progress").returncode == 0
        admin_post(emu.admin, "regions/KR2/synthetic", {"owner": tenant, "size": 1, "seed": "left", "fields": {
            "name": "leftover", "imgmig_job": "auth-delete", "imgmig_source_id": sources[0].id}})  # fmt: skip
    rules = [{"status": 401, "op": kind, "count": None, "rate": 1.0} for kind in op.split("+")]
    set_faults(emu.admin, region, {"statuses": rules})
    before = state(emu.admin)["stats"][region]["unauthorized"]
    result = run_cli("run", str(job), "--no-progress", "--report", str(tmp_path / "r.json"))
    refused = state(emu.admin)["stats"][region]["unauthorized"] - before
    set_faults(emu.admin, region, {})
    assert result.returncode == 4, result.stdout + result.stderr[-3000:]
    assert "auth profile 'main'" in result.stderr
    assert "Traceback" not in result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["exit_code"] == 4
    assert report["retries"] == 0  # nothing is retried once a fresh token is refused too
    # the injected 401s are what the emulator counts as unauthorized here; each request in flight met one
    # once, got a fresh token, met it again and gave up: two per request at most
    injected = state(emu.admin)["faults_fired"][region]["status_401"]
    assert 1 <= injected <= 2 * 8, injected
    assert refused == 0  # the tokens themselves were fine: the 401s were the injected ones
    resumed = run_cli("run", str(job), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    check_invariants(emu.admin, name, sources, TARGETS, tenant=tenant)


# === credentials that die in the middle of a run


def test_password_changed_mid_run_exits_4_within_a_token_lifetime(emu: EmulatorProcess, tmp_path: Path) -> None:
    """The password stops working while uploads are in flight (tokens live 3 s): the next refresh is
    refused once, the job stops with exit 4 naming the profile, and a run with the new password completes."""
    tenant, sources, job = slow_job(emu.identity_url, tmp_path, "pw-change")
    admin_post(emu.admin, "token-ttl", {"seconds": 3})
    proc = start_run(job)
    try:
        wait_until(lambda: uploads_active(emu.admin), proc, "uploads in flight")
        admin_post(emu.admin, "password", {"username": "owner", "password": "the-new-password"})
        changed_at = time.monotonic()
        out, err = proc.communicate(timeout=120)
        ended = time.monotonic() - changed_at
    finally:
        stop_process(proc, signal.SIGKILL)
    assert proc.returncode == 4, out + err[-3000:]
    assert "auth profile 'main'" in err
    assert "refused user 'owner'" in err
    assert "Traceback" not in err
    assert ended < 3 + 10  # within one token lifetime (plus the time to stop cleanly)
    assert state(emu.admin)["authentications_refused"] == {"owner": 1}  # asked once, never hammered
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["bytes_written"] < sum(s.size for s in sources) * len(TARGETS)  # it was stopped mid-job
    resumed = run_cli("run", str(job), "--no-progress", env={PASSWORD_ENV: "the-new-password"})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    check_invariants(emu.admin, "pw-change", sources, TARGETS, tenant=tenant)


def _token(identity_url: str, tenant: str) -> str:
    body = json.dumps({"auth": {"tenantId": tenant, "passwordCredentials": {"username": "owner",
                                                                           "password": PASSWORD}}})  # fmt: skip
    req = urllib.request.Request(f"{identity_url}/tokens", data=body.encode(),
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=10) as resp:
        return str(json.loads(resp.read())["access"]["token"]["id"])


def _revoke(identity_url: str, token: str) -> None:
    req = urllib.request.Request(f"{identity_url}/tokens/{token}", method="DELETE")
    with urllib.request.urlopen(req, timeout=10):
        pass


def fixed_token_job(identity_url: str, regions: dict[str, str], tmp_path: Path, name: str) -> tuple[str, Any, Path]:
    """A job whose every profile is a fixed endpoint + token (``token_env``), slowed to 2 MiB/s."""
    tenant, partner, other = new_tenants(3)
    sources = make_source(identity_url, tenant, partner=partner, other=other)
    lines = [f'name = "{name}"']
    for region in ("KR1", *TARGETS):
        lines += [f"[auth.{region.lower()}]", f'endpoint = "{regions[region]}"', 'token_env = "IMGMIG_TEST_TOKEN"',
                  f'tenant_id = "{tenant}"']  # fmt: skip
    lines += ["[source]", 'auth = "kr1"', 'region = "KR1"']
    for region in TARGETS:
        lines += ["[[targets]]", f'auth = "{region.lower()}"', f'region = "{region}"']
    lines += ["[transfer]", 'chunk_size = "1MiB"', 'bandwidth = "2MiB/s"', "[run]",
              f'journal_dir = "{tmp_path / "state"}"']  # fmt: skip
    job = tmp_path / "job.toml"
    job.write_text("\n".join(lines) + "\n")
    return tenant, sources, job


def test_fixed_token_revoked_mid_run_exits_4_within_seconds(emu: EmulatorProcess, tmp_path: Path) -> None:
    """A fixed token (token_env) is revoked while uploads are in flight: exit 4 naming the profile within
    seconds, with one 401 per request in flight and no retry; a run with a new token completes."""
    tenant, sources, job = fixed_token_job(emu.identity_url, emu.regions, tmp_path, "tok-revoked")
    token = _token(emu.identity_url, tenant)
    proc = start_run(job, {"IMGMIG_TEST_TOKEN": token})
    try:
        wait_until(lambda: uploads_active(emu.admin), proc, "uploads in flight")
        before = sum(s["unauthorized"] for s in state(emu.admin)["stats"].values())
        _revoke(emu.identity_url, token)
        revoked_at = time.monotonic()
        out, err = proc.communicate(timeout=120)
        ended = time.monotonic() - revoked_at
    finally:
        stop_process(proc, signal.SIGKILL)
    assert proc.returncode == 4, out + err[-3000:]
    assert "refused the fixed token" in err
    assert "auth profile" in err
    assert "Traceback" not in err
    assert ended < 10
    refusals = sum(s["unauthorized"] for s in state(emu.admin)["stats"].values()) - before
    assert 1 <= refusals <= 8, refusals  # the requests in flight, once each: nothing retried
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["retries"] == 0
    resumed = run_cli("run", str(job), "--no-progress", env={"IMGMIG_TEST_TOKEN": _token(emu.identity_url, tenant)})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    check_invariants(emu.admin, "tok-revoked", sources, TARGETS, tenant=tenant)


@pytest.mark.real_glance
def test_fixed_token_revoked_mid_run_on_real_glance(glance_cluster: GlanceCluster, tmp_path: Path) -> None:
    """On real Glance: the fixed token revoked while uploads run gives exit 4 within seconds (it used to
    give 15 retries and exit 1 after 24 s); a new token completes the job."""
    from .jobsetup import check_invariants_api

    tenant, sources, job = fixed_token_job(glance_cluster.identity_url, glance_cluster.regions, tmp_path, "g-tok")
    token = _token(glance_cluster.identity_url, tenant)
    proc = start_run(job, {"IMGMIG_TEST_TOKEN": token})
    try:
        wait_until(lambda: any(glance_cluster.state()["stats"][r]["uploads_active"] for r in TARGETS), proc,
                   "uploads in flight")  # fmt: skip
        _revoke(glance_cluster.identity_url, token)
        revoked_at = time.monotonic()
        out, err = proc.communicate(timeout=120)
        ended = time.monotonic() - revoked_at
    finally:
        stop_process(proc, signal.SIGKILL)
    assert proc.returncode == 4, out + err[-3000:]
    assert "refused the fixed token" in err
    assert ended < 10
    assert json.loads((tmp_path / "report.json").read_text())["retries"] == 0
    resumed = run_cli("run", str(job), "--no-progress",
                      env={"IMGMIG_TEST_TOKEN": _token(glance_cluster.identity_url, tenant)})  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    check_invariants_api(glance_cluster.identity_url, "g-tok", sources, TARGETS, tenant=tenant)
