"""The runner's retry budget end to end: ``[transfer] retries = 0`` means exactly one attempt of every
request of every image x target, counted at the emulator."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

from pipeline.emulator import Emulator, StatusFault
from pipeline.emulator.store import MemberRecord

from .jobsetup import MiB, add, assert_same, copies, job, run


async def test_retries_zero_gives_one_attempt(emulator: Emulator, tmp_path: Path) -> None:
    """With retries = 0 a single 503 fails that image x target for good: JP1 received exactly one upload
    per image, KR2 exactly one create per image; the other targets' copies complete."""
    tenant = uuid.uuid4().hex
    sources = [add(emulator, tenant, f"img-{i}", size=2 * MiB) for i in range(3)]
    emulator.faults("JP1").statuses.append(StatusFault(503, op="upload", count=1))
    emulator.faults("KR2").statuses.append(StatusFault(503, op="create", count=1))
    spec = job(emulator, tmp_path, tenant)
    spec = replace(spec, transfer=spec.transfer.model_copy(update={"retries": 0}))
    summary = await run(spec)
    assert summary.exit_code == 1
    failed = sorted(s.target for s in summary.steps if s.state == "failed")
    assert failed == ["JP1", "KR2"]  # one image x target each: the one that met the 503
    assert emulator.regions["JP1"].stats.requests["upload"] == len(sources)  # one try each, no retry
    assert emulator.regions["KR2"].stats.requests["create"] == len(sources)
    assert summary.retries == 0


async def test_request_counts_match_the_server(emulator: Emulator, tmp_path: Path) -> None:
    """The run summary counts every Image API request by kind and region, and the counts equal what each
    emulated region received (the emulator counts them on its side)."""
    tenant = uuid.uuid4().hex
    for i in range(3):
        add(emulator, tenant, f"img-{i}", size=MiB, tags=["t"], os_distro="ubuntu")
    summary = await run(job(emulator, tmp_path, tenant))
    assert summary.exit_code == 0
    counted = summary.requests.by_region()
    for region in ("KR1", "KR2", "JP1"):
        assert counted[region] == emulator.regions[region].stats.requests, region
    assert counted["KR2"]["upload"] == counted["JP1"]["upload"] == 3
    assert summary.to_json()["requests"] == counted


async def test_a_private_copy_costs_three_requests_per_target(emulator: Emulator, tmp_path: Path) -> None:
    """A private, unprotected image with properties and tags costs create + upload + verification read in each
    target, counted at the emulator: the properties and tags travel in the create, and the metadata step
    starts from the verification read. The copies carry every field of their source."""
    tenant = uuid.uuid4().hex
    sources = [add(emulator, tenant, f"img-{i}", size=MiB, tags=["golden", f"n{i}"], os_distro="ubuntu",
                   hw_disk_bus="virtio", min_disk=3, min_ram=512) for i in range(4)]  # fmt: skip
    summary = await run(job(emulator, tmp_path, tenant))
    assert summary.exit_code == 0
    for region in ("KR2", "JP1"):
        per_image = {k: v for k, v in emulator.regions[region].stats.requests.items() if k not in ("list", "schemas")}
        assert per_image == {"create": 4, "upload": 4, "get": 4}, region
        made = copies(emulator, region, tenant)
        for src in sources:
            assert_same(src, made[src.id])


async def test_an_idle_rerun_costs_listings_and_member_lists_only(emulator: Emulator, tmp_path: Path) -> None:
    """1,000 images x 2 targets, 10 of them shared: once copied, a rerun with nothing to do makes no
    per-image request but the member lists of shared images (source and copies), counted at the emulator:
    each region's listing at limit=1000 (two pages for 1,000 images, as Glance ends a full page with an
    empty one, plus the hidden-image listing), the shared images' member lists, and nothing else; the
    target schemas the first run read are journalled and not read again."""
    tenant, member = uuid.uuid4().hex, uuid.uuid4().hex
    store = emulator.store("KR1")
    shared = set()
    for i in range(1000):
        fields = {"name": f"img-{i:04d}", "os_type": "linux", "disk_format": "raw", "container_format": "bare"}
        rec = store.add_synthetic(tenant, 1 + i % 7, f"idle-{i}", {**fields, "visibility": "private"})
        if i % 100 == 0:
            rec.visibility = "shared"
            rec.members[member] = MemberRecord(member, "accepted", rec.created_at, rec.created_at)
            shared.add(rec.id)
    spec = job(emulator, tmp_path, tenant)
    spec = replace(spec, transfer=spec.transfer.model_copy(update={"images_in_flight": 16}))
    first = await run(spec)
    assert first.exit_code == 0
    assert first.counts()["copied"] == 2000
    for region in ("KR1", "KR2", "JP1"):
        emulator.regions[region].stats.requests.clear()
    again = await run(spec)
    assert again.exit_code == 0
    assert again.counts()["up_to_date"] == 2000
    assert again.bytes_written == 0
    for region in ("KR1", "KR2", "JP1"):
        assert emulator.regions[region].stats.requests == {"list": 3, "members": len(shared)}, region


async def test_a_refused_create_body_falls_back_and_reports(emulator: Emulator, tmp_path: Path) -> None:
    """A tag NHN refuses makes the full create body fail (400): the copy is created with the minimal body
    instead (two creates, counted at the emulator, one image), the properties and the accepted tag follow
    in the metadata step, and the refused tag is reported, not lost silently."""
    tenant = uuid.uuid4().hex
    src = add(emulator, tenant, "refused-tag", size=MiB, tags=["golden", "_internal"], os_distro="ubuntu")
    summary = await run(job(emulator, tmp_path, tenant))
    assert summary.exit_code == 0
    for region in ("KR2", "JP1"):
        assert emulator.regions[region].stats.requests["create"] == 2, region  # refused, then the minimal body
        made = [r for r in emulator.store(region).images.values() if r.owner == tenant]
        assert len(made) == 1, region
        assert made[0].properties["os_distro"] == "ubuntu"
        assert made[0].tags == ["golden"]
    problems = [p for step in summary.steps for p in step.problems]
    assert len(problems) == 2  # the refused tag, once per target
    assert all("'_internal' refused" in p for p in problems), problems
    assert src.tags == ["golden", "_internal"]
