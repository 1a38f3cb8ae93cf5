"""The target's own rules, before any byte moves, and failures that stay small: a full quota stops that target
once; a required property the source lacks is defaulted or blocks the step; a format the target does not list
blocks it; a volume-backed snapshot is not portable; an answer a retry would only get again is not retried.
Every scenario is counted at the emulator."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline.config import JobSpec
from pipeline.emulator import Emulator, StatusFault
from pipeline.plan.planner import Action
from pipeline.run.runner import plan_only

from . import images
from .jobsetup import TARGETS, MiB, add, copies, job, run


def one_at_a_time(spec: JobSpec) -> JobSpec:
    """The job with one image in flight: the order of requests at a target is then the images' order."""
    return replace(spec, transfer=spec.transfer.model_copy(update={"images_in_flight": 1}))


def requests(emulator: Emulator, region: str) -> dict[str, int]:
    return dict(emulator.regions[region].stats.requests)


async def test_a_full_image_count_quota_stops_that_target_once(emulator: Emulator, tmp_path: Path) -> None:
    """KR2 allows this project one image. The first image is copied there; the second image's create gets the
    quota 413 (no fallback body, no retry); the other three send KR2 nothing at all: two creates in all. JP1 gets
    every copy. The summary says QUOTA FULL once, with the server's words, and one FAILED line for the four
    images; exit 1; KR2 holds exactly one copy."""
    tenant = uuid.uuid4().hex
    sources = [add(emulator, tenant, f"img-{i}", size=MiB) for i in range(5)]
    emulator.store("KR2").limits = {"image_count_total": 1}
    summary = await run(one_at_a_time(job(emulator, tmp_path, tenant)))
    assert summary.exit_code == 1
    assert requests(emulator, "KR2")["create"] == 2
    assert emulator.regions["KR2"].stats.quota_refusals == {"image_count_total": 1}
    outcomes = {(s.image_id, s.target): s.outcome for s in summary.steps}
    assert all(outcomes[(s.id, "JP1")] == "copied" for s in sources)
    assert sorted(outcomes[(s.id, "KR2")] for s in sources) == ["copied"] + ["failed"] * 4
    assert list(summary.quota_full) == ["KR2"]
    assert "image_count_total" in summary.quota_full["KR2"]
    assert "over a limit for" in summary.quota_full["KR2"]  # the server's own words
    text = summary.render()
    assert text.count("QUOTA FULL") == 1
    assert [line for line in text.splitlines() if "FAILED" in line] == [
        "  FAILED 4 image(s) -> KR2: target KR2 is over its image_count_total quota: nothing more is sent to it in "
        "this run"]  # fmt: skip
    assert len(copies(emulator, "KR2", tenant)) == 1
    assert summary.to_json()["quota_full_targets"] == summary.quota_full
    # the journal keeps the condition: status and the HTML report show it, once
    from pipeline.run.htmlreport import build_report
    from pipeline.state.journal import Journal

    spec = job(emulator, tmp_path, tenant)
    (entry,) = Journal.read(spec.run.journal_dir, spec.name).runs
    assert entry.conditions == {"quota_full": summary.quota_full}
    assert build_report(spec.run.journal_dir, spec.name).count("QUOTA FULL") == 1


async def test_a_quota_refused_upload_leaves_no_queued_copy(emulator: Emulator, tmp_path: Path) -> None:
    """KR2 allows 1 MiB of image data; a 2 MiB image's upload gets the quota 413. No retry (one upload), the queued
    copy is deleted, KR2 is full for the rest of the run (the second image sends it nothing), JP1 is complete."""
    tenant = uuid.uuid4().hex
    sources = [add(emulator, tenant, f"big-{i}", size=2 * MiB) for i in range(2)]
    emulator.store("KR2").limits = {"image_size_total": 1}
    summary = await run(one_at_a_time(job(emulator, tmp_path, tenant)))
    assert summary.exit_code == 1
    kr2 = requests(emulator, "KR2")
    assert (kr2["create"], kr2["upload"], kr2["delete"]) == (1, 1, 1)
    assert copies(emulator, "KR2", tenant) == {}
    assert set(copies(emulator, "JP1", tenant)) == {s.id for s in sources}
    assert "image_size_total" in summary.quota_full["KR2"]


def _without_os_type(emulator: Emulator, tenant: str) -> Any:
    """A source image as another OpenStack cloud has it: no ``os_type``."""
    rec = add(emulator, tenant, "from-openstack", size=MiB, os_distro="ubuntu")
    rec.properties.pop("os_type", None)
    return rec


async def test_a_required_property_the_source_lacks_blocks_the_step(emulator: Emulator, tmp_path: Path) -> None:
    """NHN targets require os_type on create. A source without it is blocked in the plan with a reason that names
    the field and the key to set; the run sends no create to either target and exits 1."""
    tenant = uuid.uuid4().hex
    source = _without_os_type(emulator, tenant)
    spec = job(emulator, tmp_path, tenant)
    plan, _ = await plan_only(spec)
    steps = {s.target: s for _, s in plan.steps()}
    assert {s.action for s in steps.values()} == {Action.BLOCKED}
    assert "requires os_type" in steps["KR2"].reason
    assert "[copy] defaults = { os_type" in steps["KR2"].reason
    before = {r: requests(emulator, r).get("create", 0) for r in TARGETS}
    summary = await run(spec)
    assert summary.exit_code == 1
    assert {r: requests(emulator, r).get("create", 0) for r in TARGETS} == before
    assert {(s.image_id, s.state) for s in summary.steps} == {(source.id, "failed")}


async def test_a_default_fills_a_required_property_and_stays(emulator: Emulator, tmp_path: Path) -> None:
    """With ``[copy] defaults = { os_type = "linux" }`` (and a target default for JP1 that wins), the copies
    arrive with os_type and name it in imgmig_defaulted; the next run finds them up to date (the default is not
    drift) and sends nothing."""
    tenant = uuid.uuid4().hex
    source = _without_os_type(emulator, tenant)
    spec = job(emulator, tmp_path, tenant, copy={"defaults": {"os_type": "linux"}})
    spec = replace(
        spec, targets=(spec.targets[0], spec.targets[1].model_copy(update={"defaults": {"os_type": "windows"}}))
    )
    summary = await run(spec)
    assert summary.exit_code == 0, summary.render()
    for region, os_type in (("KR2", "linux"), ("JP1", "windows")):
        copy = copies(emulator, region, tenant)[source.id]
        assert (copy.properties["os_type"], copy.properties["imgmig_defaulted"]) == (os_type, "os_type"), region
    again = await run(spec)
    assert {s.outcome for s in again.steps} == {"up_to_date"}


async def test_a_format_the_target_does_not_list_is_blocked_there(emulator: Emulator, tmp_path: Path) -> None:
    """KR2's schema lists only raw: a qcow2 source is blocked for KR2 with the reason (no create reaches it),
    and copied to JP1."""
    tenant = uuid.uuid4().hex
    source = add(emulator, tenant, "q", disk_format="qcow2", data=images.qcow2())
    emulator.store("KR2").disk_formats = ("raw",)
    summary = await run(job(emulator, tmp_path, tenant))
    assert summary.exit_code == 1
    steps = {s.target: s for s in summary.steps}
    assert steps["JP1"].outcome == "copied"
    assert steps["KR2"].outcome == "failed"
    assert "does not accept disk_format 'qcow2'" in (steps["KR2"].error or "")
    assert requests(emulator, "KR2").get("create", 0) == 0
    assert source.id in copies(emulator, "JP1", tenant)


def _volume_snapshot(emulator: Emulator, tenant: str) -> Any:
    """What Nova makes of a volume-backed instance: an active image with no data, whose block_device_mapping
    names a block-storage snapshot of the source region."""
    bdm = [{"source_type": "snapshot", "destination_type": "volume", "snapshot_id": str(uuid.uuid4()),
            "volume_size": 20, "boot_index": 0, "device_name": "/dev/vda", "delete_on_termination": True}]  # fmt: skip
    return add(emulator, tenant, "app-server-snap", size=0, disk_format="raw", bdm_v2="True",
               root_device_name="/dev/vda", block_device_mapping=json.dumps(bdm))  # fmt: skip


async def test_a_volume_backed_snapshot_is_not_portable(emulator: Emulator, tmp_path: Path) -> None:
    """A volume-backed snapshot gets no copy in any target: plan says not_portable with a reason naming
    block_device_mapping and what to do instead; the run creates nothing anywhere and exits 1, its outcome
    not_portable. With ``[select] volume_backed = "skip"`` it is listed as skipped and the run exits 0."""
    tenant = uuid.uuid4().hex
    _volume_snapshot(emulator, tenant)
    spec = job(emulator, tmp_path, tenant)
    plan, _ = await plan_only(spec)
    (image_plan,) = plan.images
    assert {s.action for s in image_plan.steps} == {Action.NOT_PORTABLE}
    assert "block_device_mapping" in image_plan.steps[0].reason
    assert "Copy the volume instead" in image_plan.steps[0].reason
    summary = await run(spec)
    assert summary.exit_code == 1
    assert {s.outcome for s in summary.steps} == {"not_portable"}
    assert summary.counts()["not_portable"] == 2
    assert all(requests(emulator, r).get("create", 0) == 0 for r in TARGETS)
    skipping = job(emulator, tmp_path / "skip", tenant, sections={"select": {"volume_backed": "skip"}})
    skipped = await run(skipping)
    assert skipped.exit_code == 0
    assert {s.outcome for s in skipped.steps} == {"skipped"}
    assert "volume_backed" in skipped.steps[0].reason
    assert all(requests(emulator, r).get("create", 0) == 0 for r in TARGETS)


async def test_an_upload_refused_for_its_format_is_not_retried(emulator: Emulator, tmp_path: Path) -> None:
    """KR2 inspects uploads (Glance 33): raw bytes labelled qcow2 get 415. That is not retried (one upload), and the
    queued copy is deleted at once (Glance 33 would answer 500 to any later upload into it); JP1, which does not
    inspect, takes the copy. (imgmig's own inspection would refuse the image before any upload:
    ``allow_format_mismatch`` lets it through to the target's.)"""
    tenant = uuid.uuid4().hex
    add(emulator, tenant, "liar", size=MiB, disk_format="qcow2")
    emulator.store("KR2").require_format_match = True
    summary = await run(job(emulator, tmp_path, tenant, copy={"allow_format_mismatch": True}))
    assert summary.exit_code == 1
    kr2 = requests(emulator, "KR2")
    assert (kr2["create"], kr2["upload"], kr2["delete"]) == (1, 1, 1)
    assert copies(emulator, "KR2", tenant) == {}
    assert {s.target: s.outcome for s in summary.steps} == {"KR2": "failed", "JP1": "copied"}


async def test_a_full_quota_with_images_in_flight_costs_at_most_two_creates_each(emulator: Emulator,
                                                                                 tmp_path: Path) -> None:  # fmt: skip
    """Six images in flight at once, KR2 full after one: whatever the interleaving, KR2 receives at most two creates
    per image (the quota 413 gets no fallback body and no retry), keeps exactly one copy, and JP1 gets all."""
    tenant = uuid.uuid4().hex
    sources = [add(emulator, tenant, f"img-{i}", size=MiB) for i in range(6)]
    emulator.store("KR2").limits = {"image_count_total": 1}
    spec = job(emulator, tmp_path, tenant)
    spec = replace(spec, transfer=spec.transfer.model_copy(update={"images_in_flight": 6}))
    summary = await run(spec)
    assert summary.exit_code == 1
    assert requests(emulator, "KR2")["create"] <= 2 * len(sources)
    assert requests(emulator, "KR2").get("upload", 0) == 1
    assert len(copies(emulator, "KR2", tenant)) == 1
    assert set(copies(emulator, "JP1", tenant)) == {s.id for s in sources}
    assert summary.render().count("QUOTA FULL") == 1


async def test_a_create_refused_as_invalid_is_not_retried(emulator: Emulator, tmp_path: Path) -> None:
    """KR2 answers every create with 400: the full body, then the minimal one (two creates), and that copy ends
    failed with no further pass, though the retry budget allows five. JP1 takes the copy."""
    tenant = uuid.uuid4().hex
    add(emulator, tenant, "refused", size=MiB)
    emulator.faults("KR2").statuses.append(StatusFault(400, op="create", count=None, rate=1.0))
    summary = await run(job(emulator, tmp_path, tenant))
    assert summary.exit_code == 1
    assert requests(emulator, "KR2")["create"] == 2
    assert {s.target: s.outcome for s in summary.steps} == {"KR2": "failed", "JP1": "copied"}
    assert summary.retries == 0


async def test_an_upload_refused_with_403_is_not_retried(emulator: Emulator, tmp_path: Path) -> None:
    """KR2 answers the upload with 403: one upload, no further pass, and the queued copy is deleted."""
    tenant = uuid.uuid4().hex
    add(emulator, tenant, "forbidden", size=MiB)
    emulator.faults("KR2").statuses.append(StatusFault(403, op="upload", count=None, rate=1.0))
    summary = await run(job(emulator, tmp_path, tenant))
    assert summary.exit_code == 1
    kr2 = requests(emulator, "KR2")
    assert (kr2["create"], kr2["upload"], kr2["delete"]) == (1, 1, 1)
    assert copies(emulator, "KR2", tenant) == {}
