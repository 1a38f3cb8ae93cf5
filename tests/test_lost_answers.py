"""Answers lost after the server acted: every first create, upload, PATCH, tag and member call of each image
takes effect, then its connection drops before the answer. One run must still end with exit 0, exactly one
verified copy per image and target, nothing extra and no problem reported, all checked right after that
run; the rerun then moves 0 bytes. Properties and tags travel in the create, so the first run PATCHes only
the copies that become shared or protected after verification; a second phase changes a property of every
source and loses the answer of every copy's PATCH. Proven against the emulator and against real Glance (the
shim loses the answers there), with the lost answers counted at the server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .chaos import set_faults, state
from .jobsetup import (
    admin_images,
    api_images,
    check_invariants,
    check_invariants_api,
    drift_sources,
    make_source,
    new_tenants,
    run_cli,
    write_job,
)
from .procs import EmulatorProcess, emulator_process

if TYPE_CHECKING:
    from .realglance import GlanceCluster

TARGETS = ("KR2", "JP1")
#: The first write of each kind per image loses its answer (members: the owner's POST and the
#: member's PUT that accepts, each once per image).
LOSE_FIRST = [{"op": op, "count": None, "first_per_image": True, "writes_only": True}
              for op in ("create", "upload", "patch", "tags", "members")]  # fmt: skip


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorProcess]:
    """One `imgmig emulate` for the module; each test uses its own tenants and clears its faults."""
    with emulator_process("--regions", "KR1,KR2,JP1") as proc:
        yield proc


def _job(identity_url: str, tmp_path: Path, name: str) -> tuple[str, str, list[Any], Path]:
    tenant, partner, other = new_tenants(3)
    sources = make_source(identity_url, tenant, partner=partner, other=other)
    job = write_job(tmp_path / "job.toml", name=name, identity_url=identity_url, tenant=tenant,
                    journal=tmp_path / "state", partner=partner,
                    extra='[copy]\naccept_members_with = ["partner"]\n')  # fmt: skip
    return tenant, partner, sources, job


def _assert_clean_run(tmp_path: Path, result: Any, sources: list[Any]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    report = json.loads((tmp_path / "first.json").read_text())
    assert report["counts"]["copied"] == len(sources) * len(TARGETS)
    problems = [(s["name"], s["target"], s.get("problems")) for s in report["steps"] if s.get("problems")]
    assert problems == [], problems
    assert report["orphans_deleted"] == 0  # nothing extra was ever made, so nothing had to be swept


def _patched_after_data(images: list[dict[str, Any]], sources: list[Any]) -> int:
    """Source images whose copies need a PATCH after their data: shared ones (visibility) and protected ones,
    judged on the images as the server shows them (Glance makes an image shared unless told otherwise)."""
    ids = {s.id for s in sources}
    return sum(1 for i in images if i["id"] in ids and (i["visibility"] == "shared" or i["protected"]))


def _assert_drift_synced(result: Any, report: Path, sources: list[Any]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    doc = json.loads(report.read_text())
    assert doc["counts"]["metadata"] == len(sources) * len(TARGETS)
    assert doc["bytes_written"] == 0
    problems = [(s["name"], s["target"], s.get("problems")) for s in doc["steps"] if s.get("problems")]
    assert problems == [], problems


def _assert_rerun_idle(job: Path, tmp_path: Path, sources: list[Any]) -> None:
    again = run_cli("run", str(job), "--no-progress", "--report", str(tmp_path / "again.json"))
    assert again.returncode == 0, again.stderr[-2000:]
    doc = json.loads((tmp_path / "again.json").read_text())
    assert doc["bytes_written"] == 0
    assert doc["counts"]["up_to_date"] == len(sources) * len(TARGETS)


def _run_losing_on_emulator(emu: EmulatorProcess, job: Path, report: Path, knobs: dict[str, Any]) -> tuple[Any, Any]:
    """``imgmig run`` with ``knobs`` set in every target; the answers lost per target region and op, as the
    emulator counted them."""
    for region in TARGETS:
        set_faults(emu.admin, region, knobs)
    try:
        before = state(emu.admin)["faults_fired"]
        result = run_cli("run", str(job), "--no-progress", "--report", str(report))
        fired = state(emu.admin)["faults_fired"]
    finally:
        for region in TARGETS:
            set_faults(emu.admin, region, {})
    prefix = "lose_response_"
    lost = {region: {k.removeprefix(prefix): v - before[region].get(k, 0) for k, v in fired[region].items()
                     if k.startswith(prefix)} for region in TARGETS}  # fmt: skip
    return result, lost


def _run_losing_on_glance(cluster: GlanceCluster, job: Path, report: Path) -> tuple[Any, Any]:
    """``imgmig run`` with LOSE_FIRST in every target; the answers lost per target region and op, as the
    shim in front of real Glance counted them."""
    before = cluster.state()["lost_by_op"]
    for region in TARGETS:
        cluster.lose_responses(region, LOSE_FIRST)
    try:
        result = run_cli("run", str(job), "--no-progress", "--report", str(report))
        after = cluster.state()["lost_by_op"]
    finally:
        for region in TARGETS:
            cluster.lose_responses(region, [])
    lost = {region: {k: v - before[region].get(k, 0) for k, v in after[region].items()} for region in TARGETS}
    return result, lost


@pytest.mark.parametrize("client_ids", ["accepted", "refused"])
def test_one_run_through_lost_answers(emu: EmulatorProcess, tmp_path: Path, client_ids: str) -> None:
    """Every first create/upload/PATCH/tag/member write per image is lost after it took effect: exit 0,
    one verified copy each, nothing extra, no problem, right after that one run. With client-chosen ids
    refused, creates fall back to finding the copy by its provenance before each POST."""
    name = f"lost-{client_ids}"
    tenant, _partner, sources, job = _job(emu.identity_url, tmp_path, name)
    knobs: dict[str, Any] = {"lose_response": LOSE_FIRST, "refuse_client_ids": client_ids == "refused"}
    result, lost_by_region = _run_losing_on_emulator(emu, job, tmp_path / "first.json", knobs)
    for region, lost in lost_by_region.items():
        # the scenario happened: every image's create and upload answer was lost, and PATCH and member writes
        assert lost.get("create") == len(sources), (region, lost)
        assert lost.get("upload") == len(sources), (region, lost)
        patched = _patched_after_data(admin_images(emu.admin, "KR1"), sources)
        assert lost.get("patch", 0) == patched, (region, lost)
        assert lost.get("members", 0) >= 2, (region, lost)  # the owner's add, the partner's accept
    _assert_clean_run(tmp_path, result, sources)
    check_invariants(emu.admin, name, sources, TARGETS, tenant=tenant)
    _assert_rerun_idle(job, tmp_path, sources)
    # every copy drifts; each copy's PATCH answer is lost after it took effect
    drift_sources(emu.identity_url, tenant, sources, "lost_answer_drift", "1")
    drift, lost_by_region = _run_losing_on_emulator(emu, job, tmp_path / "drift.json", knobs)
    for region, lost in lost_by_region.items():
        assert lost.get("patch", 0) == len(sources), (region, lost)
    _assert_drift_synced(drift, tmp_path / "drift.json", sources)
    sources = [replace(s, fields={**s.fields, "lost_answer_drift": "1"}) for s in sources]
    check_invariants(emu.admin, name, sources, TARGETS, tenant=tenant)


@pytest.mark.real_glance
def test_one_run_through_lost_answers_on_real_glance(glance_cluster: GlanceCluster, tmp_path: Path) -> None:
    """The same lost answers on real Glance 33 (the shim lets each request reach Glance, then drops the
    connection): exit 0, one verified copy each, nothing extra, no problem; the rerun moves 0 bytes."""
    tenant, partner, sources, job = _job(glance_cluster.identity_url, tmp_path, "glance-lost")
    result, lost_by_region = _run_losing_on_glance(glance_cluster, job, tmp_path / "first.json")
    shown = api_images(glance_cluster.identity_url, tenant, "KR1")
    for region, lost in lost_by_region.items():
        assert lost.get("create") == len(sources), (region, lost)
        assert lost.get("upload") == len(sources), (region, lost)
        assert lost.get("patch", 0) == _patched_after_data(shown, sources), (region, lost)
        assert lost.get("members", 0) >= 2, (region, lost)
    _assert_clean_run(tmp_path, result, sources)
    check_invariants_api(glance_cluster.identity_url, "glance-lost", sources, TARGETS, tenant=tenant,
                         member_status={partner: "accepted"})  # fmt: skip
    _assert_rerun_idle(job, tmp_path, sources)
    drift_sources(glance_cluster.identity_url, tenant, sources, "lost_answer_drift", "1")
    drift, lost_by_region = _run_losing_on_glance(glance_cluster, job, tmp_path / "drift.json")
    for region, lost in lost_by_region.items():
        assert lost.get("patch", 0) == len(sources), (region, lost)
    _assert_drift_synced(drift, tmp_path / "drift.json", sources)
    sources = [replace(s, fields={**s.fields, "lost_answer_drift": "1"}) for s in sources]
    check_invariants_api(glance_cluster.identity_url, "glance-lost", sources, TARGETS, tenant=tenant,
                         member_status={partner: "accepted"})  # fmt: skip
