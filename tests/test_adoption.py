"""Taking over what is already in a target, against the emulator: ``[copy] adopt = "exact"`` adopts an identical
image without provenance (no byte uploaded, counted at the server; its metadata only added to), a near miss and a
second candidate are reported and left alone; ``[run] previous_names`` takes over a renamed job's copies; a lost
answer on the adopting PATCH ends in the same state. Every outcome is checked on the emulator's store."""

from __future__ import annotations

import uuid
from pathlib import Path

from pipeline.emulator import Emulator
from pipeline.emulator.faults import LostAnswer
from pipeline.emulator.store import ImageRecord
from pipeline.run.runner import plan_only

from .jobsetup import TARGETS, add, copies, job, run

PROV = ("imgmig_job", "imgmig_source_id", "imgmig_source_region", "imgmig_source_checksum")


def _data(name: str, size: int) -> bytes:
    """The bytes ``jobsetup.add`` gives an image of that name and size."""
    return (name.encode() * (size // len(name.encode()) + 1))[:size]


def twin(emu: Emulator, region: str, tenant: str, name: str, *, size: int = 64 * 1024, data: bytes | None = None,
         created_at: str | None = None, **fields: str) -> ImageRecord:  # fmt: skip
    """An image made without imgmig in ``region`` (by hand, a script, a console copy)."""
    rec = emu.store(region).add_bytes(tenant, data if data is not None else _data(name, size), {"name": name, **fields})
    if created_at is not None:
        rec.created_at = created_at
    return rec


def _received(emu: Emulator) -> dict[str, int]:
    return {r: emu.regions[r].stats.bytes_received for r in TARGETS}


def _images(emu: Emulator, region: str, tenant: str) -> list[ImageRecord]:
    return [r for r in emu.store(region).images.values() if r.owner == tenant]


async def test_an_identical_image_is_adopted_with_nothing_uploaded(emulator: Emulator, tmp_path: Path) -> None:
    """Both targets hold an identical image, made by hand, with a tag and a property of its own: it is adopted (the
    plan says so), 0 bytes reach either target, one image per source remains, provenance and imgmig_adopted are
    written, the source's metadata is added and nothing the image had is removed. The rerun is up to date."""
    tenant = uuid.uuid4().hex
    src = add(emulator, tenant, "golden", tags=["base"], os_distro="ubuntu")
    twins = {r: twin(emulator, r, tenant, "golden", owner_note="ops") for r in TARGETS}
    for rec in twins.values():
        rec.tags = ["hand-made"]
    spec = job(emulator, tmp_path, tenant, copy={"adopt": "exact"})
    plan, _ = await plan_only(spec)
    assert [(s.target, s.action.value, s.existing.id if s.existing else None) for _, s in plan.steps()] == [
        (r, "adopt", twins[r].id) for r in TARGETS]  # fmt: skip
    before = _received(emulator)
    summary = await run(spec)
    assert summary.exit_code == 0, summary.render()
    assert summary.outcomes["adopted"] == 2
    assert _received(emulator) == before  # not a byte uploaded
    for region in TARGETS:
        assert [r.id for r in _images(emulator, region, tenant)] == [twins[region].id]
        adopted = emulator.store(region).images[twins[region].id]
        assert {k: adopted.properties[k] for k in PROV} == {
            "imgmig_job": "meta", "imgmig_source_id": src.id, "imgmig_source_region": "KR1",
            "imgmig_source_checksum": src.checksum}  # fmt: skip
        assert adopted.properties["imgmig_adopted"] == "true"
        assert adopted.properties["os_distro"] == "ubuntu"  # the source's, added
        assert adopted.properties["owner_note"] == "ops"  # its own, kept
        assert set(adopted.tags) == {"base", "hand-made"}  # added to, never taken from
    again = await run(spec)
    assert (again.exit_code, again.outcomes["up_to_date"], again.bytes_written) == (0, 2, 0)


async def test_without_adopt_an_identical_image_is_left_alone(emulator: Emulator, tmp_path: Path) -> None:
    """The default (adopt = "none"): the identical image is not touched, and a copy is made next to it."""
    tenant = uuid.uuid4().hex
    add(emulator, tenant, "golden")
    hand = twin(emulator, "KR2", tenant, "golden")
    props = dict(hand.properties)
    summary = await run(job(emulator, tmp_path, tenant))
    assert (summary.exit_code, summary.outcomes["copied"], summary.outcomes["adopted"]) == (0, 2, 0)
    assert len(_images(emulator, "KR2", tenant)) == 2
    assert emulator.store("KR2").images[hand.id].properties == props


async def test_a_near_miss_is_reported_and_not_adopted(emulator: Emulator, tmp_path: Path) -> None:
    """Same name, other bytes: not adopted, the plan says why, a copy is uploaded next to it, and it is untouched."""
    tenant = uuid.uuid4().hex
    src = add(emulator, tenant, "golden")
    other = twin(emulator, "KR2", tenant, "golden", data=b"something else")
    spec = job(emulator, tmp_path, tenant, copy={"adopt": "exact"})
    plan, _ = await plan_only(spec)
    assert [s.action.value for _, s in plan.steps()] == ["copy", "copy"]
    notes = [n for n in plan.notes if "not adopted" in n]
    assert len(notes) == 1
    assert f"KR2: not adopted for source image {src.id}" in notes[0]
    assert f"image {other.id} has its name but not its data" in notes[0]
    assert "checksum" in notes[0]
    summary = await run(spec)
    assert (summary.exit_code, summary.outcomes["copied"]) == (0, 2)
    assert "imgmig_job" not in emulator.store("KR2").images[other.id].properties
    assert copies(emulator, "KR2", tenant)[src.id].id != other.id


async def test_of_two_candidates_the_oldest_is_adopted_and_the_other_reported(
    emulator: Emulator, tmp_path: Path
) -> None:
    tenant = uuid.uuid4().hex
    src = add(emulator, tenant, "golden")
    newer = twin(emulator, "KR2", tenant, "golden", created_at="2026-03-01T00:00:00Z")
    older = twin(emulator, "KR2", tenant, "golden", created_at="2025-03-01T00:00:00Z")
    spec = job(emulator, tmp_path, tenant, copy={"adopt": "exact"})
    plan, _ = await plan_only(spec)
    assert any(f"image {newer.id} is also identical to source image {src.id}" in n for n in plan.notes), plan.notes
    summary = await run(spec)
    assert summary.exit_code == 0
    assert copies(emulator, "KR2", tenant)[src.id].id == older.id
    assert "imgmig_job" not in emulator.store("KR2").images[newer.id].properties  # not ours: never deleted either
    assert newer.id in emulator.store("KR2").images


async def test_a_lost_answer_on_the_adopting_patch_ends_the_same(emulator: Emulator, tmp_path: Path) -> None:
    """The adopting PATCH takes effect and its answer is lost (counted at the server): the one run still ends with
    the image adopted, exit 0, nothing uploaded, one image per target; the rerun is up to date."""
    tenant = uuid.uuid4().hex
    src = add(emulator, tenant, "golden")
    twins = {r: twin(emulator, r, tenant, "golden") for r in TARGETS}
    for region in TARGETS:
        emulator.faults(region).lose_response = [LostAnswer(op="patch", count=None, first_per_image=True)]
    before = _received(emulator)
    try:
        summary = await run(job(emulator, tmp_path, tenant, copy={"adopt": "exact"}))
        lost = {r: emulator.faults(r).fired.get("lose_response_patch", 0) for r in TARGETS}
    finally:
        for region in TARGETS:
            emulator.faults(region).reset()
    assert lost == dict.fromkeys(TARGETS, 1)
    assert summary.exit_code == 0, summary.render()
    assert _received(emulator) == before
    for region in TARGETS:
        assert [r.id for r in _images(emulator, region, tenant)] == [twins[region].id]
        assert copies(emulator, region, tenant)[src.id].properties["imgmig_adopted"] == "true"
    again = await run(job(emulator, tmp_path, tenant, copy={"adopt": "exact"}))
    assert (again.exit_code, again.outcomes["up_to_date"]) == (0, 2)


async def test_a_renamed_job_takes_over_its_copies(emulator: Emulator, tmp_path: Path) -> None:
    """Job "meta" copies two images; renamed "meta-dr" with previous_names = ["meta"], it moves 0 bytes, rewrites
    every copy's imgmig_job, and no image keeps the old name's provenance. Without previous_names, a renamed job
    would copy everything again: the plan of such a job shows copies."""
    tenant = uuid.uuid4().hex
    srcs = [add(emulator, tenant, f"img-{i}") for i in range(2)]
    assert (await run(job(emulator, tmp_path, tenant))).exit_code == 0
    first = {r: {c.id for c in copies(emulator, r, tenant).values()} for r in TARGETS}
    renamed = job(emulator, tmp_path / "renamed", tenant, sections={"name": "meta-dr"})
    plan, _ = await plan_only(renamed)
    assert plan.counts()["copy"] == 4  # without previous_names: copied again
    spec = job(emulator, tmp_path / "renamed", tenant, sections={"name": "meta-dr", "run": {
        "journal_dir": str(tmp_path / "renamed" / "state"), "previous_names": ["meta"]}})  # fmt: skip
    plan, _ = await plan_only(spec)
    assert plan.counts()["adopt"] == 4
    before = _received(emulator)
    summary = await run(spec)
    assert summary.exit_code == 0, summary.render()
    assert (summary.outcomes["adopted"], summary.bytes_written) == (4, 0)
    assert _received(emulator) == before
    for region in TARGETS:
        mine = {r.id: r for r in _images(emulator, region, tenant)}
        assert set(mine) == first[region]
        assert {r.properties["imgmig_job"] for r in mine.values()} == {"meta-dr"}
        assert {r.properties["imgmig_source_id"] for r in mine.values()} == {s.id for s in srcs}
    again = await run(spec)
    assert (again.exit_code, again.outcomes["up_to_date"]) == (0, 4)


async def test_prune_keeps_adopted_copies_unless_told(emulator: Emulator, tmp_path: Path) -> None:
    """An adopted copy whose source is deselected is kept by prune (listed as kept); with [prune] adopted = true
    it goes like any other copy."""
    tenant = uuid.uuid4().hex
    add(emulator, tenant, "golden")
    keep = add(emulator, tenant, "other")
    twins = {r: twin(emulator, r, tenant, "golden") for r in TARGETS}
    prune = {"enabled": True, "max_delete": 10}
    assert (await run(job(emulator, tmp_path, tenant, copy={"adopt": "exact"}))).exit_code == 0

    def deselected(**more: object) -> object:
        return job(emulator, tmp_path, tenant, copy={"adopt": "exact"},
                   sections={"select": {"names": ["other"]}, "prune": {**prune, **more}})  # fmt: skip

    plan, _ = await plan_only(deselected())  # type: ignore[arg-type]
    assert plan.prune is not None
    assert sorted(d.copy.id for d in plan.prune.kept_adopted) == sorted(t.id for t in twins.values())
    assert plan.prune.deletions == ()
    assert (await run(deselected())).exit_code == 0  # type: ignore[arg-type]
    assert all(twins[r].id in emulator.store(r).images for r in TARGETS)
    summary = await run(deselected(adopted=True))  # type: ignore[arg-type]
    assert summary.exit_code == 0
    assert sorted(p["target_id"] for p in summary.pruned) == sorted(t.id for t in twins.values())
    assert {r: set(copies(emulator, r, tenant)) for r in TARGETS} == {r: {keep.id} for r in TARGETS}
