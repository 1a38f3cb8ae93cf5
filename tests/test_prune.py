"""``[prune]`` for mirrors, against the emulator: copies whose source is gone or deselected are deleted, within
``max_delete``; an empty or shrunken selection refuses; other jobs' copies and images without provenance are
never touched; protected copies follow ``prune_protected``; plan shows every deletion; shards prune only
their own partition. Every deletion is checked on the emulator's store."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import JobSpec, Shard, override, parse_job
from pipeline.emulator import Emulator
from pipeline.emulator.store import Caller, ImageRecord
from pipeline.errors import JobSpecError
from pipeline.run.runner import plan_only

from .jobsetup import TARGETS, MiB, add, copies, run
from .jobsetup import job as metadata_job


def job(emu: Emulator, tmp_path: Path, tenant: str, *, names: list[str] | None = None, allow_empty: bool = False,
        **prune: Any) -> JobSpec:  # fmt: skip
    """test_metadata's job (named "meta": its ``copies`` reads this job's copies) with prune on."""
    sections: dict[str, Any] = {"prune": {"enabled": True, "max_delete": 100, **prune}}
    if names is not None or allow_empty:
        sections["select"] = {**({"names": names} if names is not None else {}), "allow_empty": allow_empty}
    return metadata_job(emu, tmp_path, tenant, sections=sections)


def _sources(emu: Emulator, tenant: str, n: int) -> list[ImageRecord]:
    return [add(emu, tenant, f"mirror-{i}", size=MiB // 4 + i) for i in range(n)]


def _gone(emu: Emulator, tenant: str, *sources: ImageRecord) -> None:
    for src in sources:
        emu.store("KR1").delete(src.id, Caller(tenant))


def _copy_ids(emu: Emulator, tenant: str) -> dict[str, set[str]]:
    return {r: set(copies(emu, r, tenant)) for r in TARGETS}


async def test_prune_deletes_copies_of_gone_and_deselected_sources(emulator: Emulator, tmp_path: Path) -> None:
    """One source deleted, one deselected: their copies go in both targets (4 deletions), the plan and the
    summary list them, the rest stays; the next run deletes nothing."""
    tenant = uuid.uuid4().hex
    srcs = _sources(emulator, tenant, 4)
    assert (await run(job(emulator, tmp_path, tenant))).exit_code == 0
    _gone(emulator, tenant, srcs[0])
    spec = job(emulator, tmp_path, tenant, names=["mirror-2", "mirror-3"])  # mirror-1 deselected
    plan, _ = await plan_only(spec)
    assert plan.prune is not None
    assert plan.prune.refused is None
    assert sorted((d.target, d.source_id) for d in plan.prune.deletions) == sorted(
        (r, s.id) for r in TARGETS for s in srcs[:2])  # fmt: skip
    summary = await run(spec)
    assert summary.exit_code == 0
    assert sorted((p["target"], p["source_id"]) for p in summary.pruned) == sorted(
        (r, s.id) for r in TARGETS for s in srcs[:2])  # fmt: skip
    assert _copy_ids(emulator, tenant) == {r: {srcs[2].id, srcs[3].id} for r in TARGETS}
    again = await run(spec)
    assert (again.exit_code, again.pruned) == (0, [])


async def test_over_max_delete_deletes_nothing(emulator: Emulator, tmp_path: Path) -> None:
    tenant = uuid.uuid4().hex
    srcs = _sources(emulator, tenant, 4)
    assert (await run(job(emulator, tmp_path, tenant))).exit_code == 0
    _gone(emulator, tenant, *srcs[:2])  # 2 sources x 2 targets = 4 deletions planned
    summary = await run(job(emulator, tmp_path, tenant, max_delete=3))
    assert summary.exit_code == 1
    assert summary.pruned == []
    assert summary.prune_refused is not None
    assert "4 copies would be deleted, more than [prune] max_delete = 3" in summary.prune_refused
    assert "PRUNE REFUSED" in summary.render()
    assert _copy_ids(emulator, tenant) == {r: {s.id for s in srcs} for r in TARGETS}


async def test_an_empty_selection_refuses(emulator: Emulator, tmp_path: Path) -> None:
    """Every source gone: even a mirror that may be empty (``[select] allow_empty = true``, so the run itself is
    not failed for it) does not prune an empty selection: it refuses, exit 1, and every copy stays."""
    tenant = uuid.uuid4().hex
    srcs = _sources(emulator, tenant, 2)
    assert (await run(job(emulator, tmp_path, tenant))).exit_code == 0
    _gone(emulator, tenant, *srcs)
    summary = await run(job(emulator, tmp_path, tenant, allow_empty=True))
    assert summary.exit_code == 1
    assert summary.prune_refused is not None
    assert "selection is empty" in summary.prune_refused
    assert _copy_ids(emulator, tenant) == {r: {s.id for s in srcs} for r in TARGETS}


async def test_a_shrink_over_max_shrink_refuses(emulator: Emulator, tmp_path: Path) -> None:
    """4 selected last run, 1 now (75% less): refused at the default 50%, again on the next run (a refused
    selection never becomes the baseline), and allowed once max_shrink = 80%."""
    tenant = uuid.uuid4().hex
    srcs = _sources(emulator, tenant, 4)
    assert (await run(job(emulator, tmp_path, tenant))).exit_code == 0
    _gone(emulator, tenant, *srcs[1:])
    refused = await run(job(emulator, tmp_path, tenant))
    assert refused.exit_code == 1
    assert refused.prune_refused is not None
    assert "shrank from 4 to 1 images (75%), more than [prune] max_shrink = 50%" in refused.prune_refused
    assert _copy_ids(emulator, tenant) == {r: {s.id for s in srcs} for r in TARGETS}
    still = await run(job(emulator, tmp_path, tenant))
    assert still.prune_refused is not None
    assert "shrank from 4 to 1" in still.prune_refused
    allowed = await run(job(emulator, tmp_path, tenant, max_shrink="80%"))
    assert allowed.exit_code == 0
    assert _copy_ids(emulator, tenant) == {r: {srcs[0].id} for r in TARGETS}


async def test_other_jobs_and_unmarked_images_are_never_pruned(emulator: Emulator, tmp_path: Path) -> None:
    """In the target: another job's copy of a gone source, and an image without provenance naming it; only
    this job's copy goes."""
    tenant = uuid.uuid4().hex
    srcs = _sources(emulator, tenant, 2)
    assert (await run(job(emulator, tmp_path, tenant))).exit_code == 0
    kr2 = emulator.store("KR2")
    fields = {"disk_format": "raw", "container_format": "bare", "os_type": "linux"}
    other = kr2.add_bytes(tenant, b"o" * 10, {"name": "other-job", **fields, "imgmig_job": "someone-else",
                                              "imgmig_source_id": srcs[0].id})  # fmt: skip
    bare = kr2.add_bytes(tenant, b"b" * 10, {"name": "unmarked", **fields, "imgmig_source_id": srcs[0].id})
    _gone(emulator, tenant, srcs[0])
    summary = await run(job(emulator, tmp_path, tenant))
    assert summary.exit_code == 0
    assert sorted(p["target"] for p in summary.pruned) == sorted(TARGETS)
    assert other.id in kr2.images
    assert bare.id in kr2.images
    assert _copy_ids(emulator, tenant) == {r: {srcs[1].id} for r in TARGETS}


async def test_protected_copies_follow_prune_protected(emulator: Emulator, tmp_path: Path) -> None:
    """A protected copy of a gone source is kept (and listed as kept) unless prune_protected = true, which
    unprotects and deletes it."""
    tenant = uuid.uuid4().hex
    srcs = _sources(emulator, tenant, 3)
    srcs[0].protected = True
    assert (await run(job(emulator, tmp_path, tenant))).exit_code == 0
    assert all(copies(emulator, r, tenant)[srcs[0].id].protected for r in TARGETS)
    srcs[0].protected = False
    _gone(emulator, tenant, srcs[0])
    kept = await run(job(emulator, tmp_path, tenant))
    assert kept.exit_code == 0
    assert kept.pruned == []
    assert kept.plan is not None
    plan_doc = kept.plan.to_json()["prune"]
    assert sorted(k["target"] for k in plan_doc["kept_protected"]) == sorted(TARGETS)
    assert all(srcs[0].id in copies(emulator, r, tenant) for r in TARGETS)
    deleted = await run(job(emulator, tmp_path, tenant, prune_protected=True))
    assert deleted.exit_code == 0
    assert sorted(p["target"] for p in deleted.pruned) == sorted(TARGETS)
    assert _copy_ids(emulator, tenant) == {r: {srcs[1].id, srcs[2].id} for r in TARGETS}


async def test_a_shard_prunes_only_its_partition(emulator: Emulator, tmp_path: Path) -> None:
    """Two sources gone, owned by different shards of 2 (each shard owns three or more, so neither selection
    is empty): each shard deletes only the copies of its own."""
    tenant = uuid.uuid4().hex
    srcs = _sources(emulator, tenant, 6)
    for extra in range(20):  # ids are random: add images until each shard owns three (bounded)
        if min(sum(Shard(i, 2).owns(s.id) for s in srcs) for i in (0, 1)) >= 3:
            break
        srcs.append(add(emulator, tenant, f"mirror-extra-{extra}", size=MiB // 4))
    assert (await run(job(emulator, tmp_path, tenant))).exit_code == 0
    owner = {s.id: 0 if Shard(0, 2).owns(s.id) else 1 for s in srcs}
    gone = [next(s for s in srcs if owner[s.id] == i) for i in (0, 1)]
    _gone(emulator, tenant, *gone)
    first = await run(override(job(emulator, tmp_path, tenant), shard=Shard(0, 2)))
    assert first.exit_code == 0
    assert {p["source_id"] for p in first.pruned} == {gone[0].id}
    assert all(gone[1].id in copies(emulator, r, tenant) for r in TARGETS)
    second = await run(override(job(emulator, tmp_path, tenant), shard=Shard(1, 2)))
    assert second.exit_code == 0
    assert {p["source_id"] for p in second.pruned} == {gone[1].id}
    assert _copy_ids(emulator, tenant) == {r: {s.id for s in srcs} - {g.id for g in gone} for r in TARGETS}


@pytest.mark.parametrize(
    ("prune", "expected"),
    [
        ({"enabled": True}, "prune.max_delete: required when prune.enabled = true"),
        ({"enabled": True, "max_delete": 5, "max_shrink": "150%"}, "prune.max_shrink: must be between 0% and 100%"),
        ({"enabled": True, "max_delete": -1}, "prune.max_delete: must be between 0 and"),
        ({"enabled": True, "max_delete": 5, "dry": True}, "prune.dry: unknown key"),
    ],
)
def test_bad_prune_settings_are_job_file_errors(prune: dict[str, Any], expected: str) -> None:
    doc: dict[str, Any] = {
        "name": "p", "auth": {"a": {"tenant_id": "t", "username": "u", "password_env": "PW"}},
        "source": {"auth": "a", "region": "KR1"}, "targets": [{"auth": "a", "region": "KR2"}], "prune": prune,
    }  # fmt: skip
    with pytest.raises(JobSpecError) as caught:
        parse_job(doc, "test", {"PW": "pw"})
    assert expected in str(caught.value)
