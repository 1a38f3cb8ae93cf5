"""References follow the copy: an AMI-style machine image names its kernel and ramdisk (``kernel_id``,
``ramdisk_id``); in each target its copy names the copies of that kernel and ramdisk in the same target. The
referenced images are included (and copied first) when only the machine image is selected; a sharded job gives the
whole group to one shard; a reference that cannot be resolved blocks the image; drift follows; verify compares
through the mapping. Counted at the emulator."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import anyio

from pipeline.config import Shard, override
from pipeline.emulator import Emulator
from pipeline.plan.planner import Action
from pipeline.run.runner import plan_only
from pipeline.run.verify import verify_job

from . import images
from .jobsetup import TARGETS, MiB, add, copies, job, run


def ami_set(emulator: Emulator, tenant: str, *, name: str = "boot-machine") -> dict[str, Any]:
    """A kernel, a ramdisk and a machine image that names both, in KR1."""
    kernel = add(emulator, tenant, f"{name}-kernel", size=MiB // 4, disk_format="aki", container_format="aki")
    ramdisk = add(emulator, tenant, f"{name}-ramdisk", size=MiB // 4, disk_format="ari", container_format="ari")
    machine = add(emulator, tenant, name, size=MiB, disk_format="ami", container_format="ami",
                  kernel_id=kernel.id, ramdisk_id=ramdisk.id, tags=["dr"])  # fmt: skip
    return {"kernel": kernel, "ramdisk": ramdisk, "machine": machine}


def assert_references_follow(emulator: Emulator, tenant: str, images: dict[str, Any]) -> None:
    """In each target, the machine image's copy names that target's copies of the kernel and the ramdisk."""
    for region in TARGETS:
        made = copies(emulator, region, tenant)
        machine = made[images["machine"].id]
        assert machine.properties["kernel_id"] == made[images["kernel"].id].id, region
        assert machine.properties["ramdisk_id"] == made[images["ramdisk"].id].id, region
        assert machine.properties["kernel_id"] not in emulator.store("KR1").images  # never the source's id


async def test_a_machine_image_brings_its_kernel_and_ramdisk(emulator: Emulator, tmp_path: Path) -> None:
    """Only the machine image is selected (by name): the plan includes its kernel and ramdisk and says why; the
    run copies all three, referenced ones first, and the machine image's copies name the copies in their own
    target. A rerun sends no bytes, and verify finds every reference in line."""
    tenant = uuid.uuid4().hex
    images = ami_set(emulator, tenant)
    spec = job(emulator, tmp_path, tenant, sections={"select": {"names": ["boot-machine"]}})
    plan, _ = await plan_only(spec)
    assert [p.image.id for p in plan.images][-1] == images["machine"].id  # referenced images first
    assert {p.image.id for p in plan.images} == {i.id for i in images.values()}
    assert f"source image {images['kernel'].id} is included: kernel of boot-machine" in plan.notes
    assert f"source image {images['ramdisk'].id} is included: ramdisk of boot-machine" in plan.notes
    summary = await run(spec)
    assert summary.exit_code == 0, summary.render()
    assert {s.outcome for s in summary.steps} == {"copied"}
    assert len(summary.steps) == 3 * len(TARGETS)
    assert_references_follow(emulator, tenant, images)
    again = await run(spec)
    assert again.bytes_written == 0
    assert {s.outcome for s in again.steps} == {"up_to_date"}
    report = await verify_job(spec)
    assert report.ok, [f.to_json() for f in report.findings if f.status != "ok"]


async def test_a_sharded_job_gives_the_group_to_one_shard(emulator: Emulator, tmp_path: Path) -> None:
    """``--shards 3``: the machine image, its kernel and its ramdisk are one group, owned by the shard of the
    smallest of their ids. That shard copies all three (references following); the two others copy none of them.
    Each image is created once per target in all."""
    tenant = uuid.uuid4().hex
    images = ami_set(emulator, tenant)
    spec = job(emulator, tmp_path, tenant, sections={"select": {"names": ["boot-machine"]}})
    owner = Shard(0, 3)
    root = min(i.id for i in images.values())
    copied_by: dict[int, int] = {}
    for index in range(3):
        shard = Shard(index, 3)
        if shard.owns(root):
            owner = shard
        summary = await run(override(spec, shard=shard))
        assert summary.exit_code == 0, summary.render()
        copied_by[index] = sum(1 for s in summary.steps if s.outcome == "copied")
    assert copied_by == {i: (3 * len(TARGETS) if i == owner.index else 0) for i in range(3)}
    for region in TARGETS:
        assert emulator.regions[region].stats.requests["create"] == 3
    assert_references_follow(emulator, tenant, images)


async def test_a_reference_that_cannot_be_resolved_blocks_the_image(emulator: Emulator, tmp_path: Path) -> None:
    """A machine image whose kernel does not exist (any more) is blocked with the reason, and nothing is created
    for it; its ramdisk, included, is copied all the same."""
    tenant = uuid.uuid4().hex
    ramdisk = add(emulator, tenant, "rd", size=MiB // 4, disk_format="ari", container_format="ari")
    gone = str(uuid.uuid4())
    machine = add(emulator, tenant, "orphan-machine", size=MiB, disk_format="ami", container_format="ami",
                  kernel_id=gone, ramdisk_id=ramdisk.id)  # fmt: skip
    spec = job(emulator, tmp_path, tenant, sections={"select": {"names": ["orphan-machine"]}})
    plan, _ = await plan_only(spec)
    steps = {(p.image.id, s.target): s for p, s in plan.steps()}
    assert {steps[(machine.id, t)].action for t in TARGETS} == {Action.BLOCKED}
    assert f"its kernel_id names image {gone}, which cannot be copied" in steps[(machine.id, "KR2")].reason
    summary = await run(spec)
    assert summary.exit_code == 1
    for region in TARGETS:
        assert set(copies(emulator, region, tenant)) == {ramdisk.id}
        assert emulator.regions[region].stats.requests["create"] == 1


async def test_a_changed_reference_follows_on_the_next_run(emulator: Emulator, tmp_path: Path) -> None:
    """The source machine image is given a new kernel: the next run includes and copies the new kernel, and the
    machine image's copies (their bytes unchanged) are updated to name its copies."""
    tenant = uuid.uuid4().hex
    images = ami_set(emulator, tenant)
    spec = job(emulator, tmp_path, tenant, sections={"select": {"names": ["boot-machine"]}})
    assert (await run(spec)).exit_code == 0
    newer = add(emulator, tenant, "boot-machine-kernel-2", size=MiB // 4, disk_format="aki", container_format="aki")
    emulator.store("KR1").images[images["machine"].id].properties["kernel_id"] = newer.id
    summary = await run(spec)
    assert summary.exit_code == 0, summary.render()
    outcomes = {(s.image_id, s.target): s.outcome for s in summary.steps}
    assert {outcomes[(newer.id, t)] for t in TARGETS} == {"copied"}
    assert {outcomes[(images["machine"].id, t)] for t in TARGETS} == {"metadata"}
    assert_references_follow(emulator, tenant, {**images, "kernel": newer})


async def test_references_that_loop_block_and_never_hang(emulator: Emulator, tmp_path: Path) -> None:
    """An image that names itself, and two images that name each other: each is blocked with the loop as its
    reason, nothing is created for them, and the run ends (exit 1) instead of waiting on itself for ever."""
    tenant = uuid.uuid4().hex
    own = add(emulator, tenant, "self-loop", size=MiB, disk_format="ami", container_format="ami")
    emulator.store("KR1").images[own.id].properties["kernel_id"] = own.id
    first = add(emulator, tenant, "pair-a", size=MiB, disk_format="ami", container_format="ami")
    second = add(emulator, tenant, "pair-b", size=MiB, disk_format="ami", container_format="ami", kernel_id=first.id)
    emulator.store("KR1").images[first.id].properties["kernel_id"] = second.id
    with anyio.fail_after(60):  # a hang fails the test instead of stalling the suite
        summary = await run(job(emulator, tmp_path, tenant))
    assert summary.exit_code == 1
    assert {s.state for s in summary.steps} == {"failed"}
    assert all("loop" in (s.error or "") for s in summary.steps)
    assert all(emulator.regions[r].stats.requests.get("create", 0) == 0 for r in TARGETS)


async def test_a_chain_is_decided_link_by_link(emulator: Emulator, tmp_path: Path) -> None:
    """A machine image names a kernel that names an image KR2 refuses (a format its schema does not list): the
    kernel is blocked for KR2, and so is the machine image, already in the plan; both go to JP1."""
    tenant = uuid.uuid4().hex
    base = add(emulator, tenant, "base", disk_format="vhd", data=images.vhd(MiB // 2))
    kernel = add(emulator, tenant, "kernel", size=MiB // 4, disk_format="aki", container_format="aki",
                 kernel_id=base.id)  # fmt: skip
    machine = add(emulator, tenant, "machine", size=MiB, disk_format="ami", container_format="ami",
                  kernel_id=kernel.id)  # fmt: skip
    emulator.store("KR2").disk_formats = ("raw", "qcow2", "aki", "ari", "ami")
    spec = job(emulator, tmp_path, tenant, sections={"select": {"names": ["machine"]}})
    plan, _ = await plan_only(spec)
    actions = {(p.image.id, s.target): s.action for p, s in plan.steps()}
    assert [actions[(i.id, "KR2")] for i in (base, kernel, machine)] == [Action.BLOCKED] * 3
    assert [actions[(i.id, "JP1")] for i in (base, kernel, machine)] == [Action.COPY] * 3
    summary = await run(spec)
    assert summary.exit_code == 1
    assert emulator.regions["KR2"].stats.requests.get("create", 0) == 0
    assert set(copies(emulator, "JP1", tenant)) == {base.id, kernel.id, machine.id}
