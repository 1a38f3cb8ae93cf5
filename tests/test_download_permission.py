"""NHN Cloud's download permission (``nhncloud_allow_download``, current guide, Download Image): the emulator
enforces it; a gated source is known at plan time and nothing is created for it; ``[source]
enable_download = true`` switches it on for the copy and back, crash-safe; listing uses 1000-image pages."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pipeline.cloud import ImageClient, PasswordAuth, Secret, new_session
from pipeline.config import JobSpec
from pipeline.emulator import Emulator
from pipeline.errors import ForbiddenError
from pipeline.state.journal import Journal

from .chaos import state
from .jobsetup import MiB, add, job, run, run_cli
from .procs import emulator_process

TARGETS = ("KR2", "JP1")


def with_enable_download(spec: JobSpec) -> JobSpec:
    return replace(spec, source=spec.source.model_copy(update={"enable_download": True}))


def copies_of(emulator: Emulator, region: str, source_id: str) -> list[Any]:
    return [r for r in emulator.store(region).images.values() if r.properties.get("imgmig_source_id") == source_id]


async def test_emulator_serves_data_only_when_allowed(emulator: Emulator) -> None:
    """A gated image answers 403 naming nhncloud_allow_download; once PATCHed to true it downloads; an image
    without the attribute downloads; with the rule off (plain Glance) everything downloads."""
    tenant = uuid.uuid4().hex
    gated = add(emulator, tenant, "gated", nhncloud_allow_download="false")
    mine = add(emulator, tenant, "mine")
    assert "nhncloud_allow_download" not in mine.properties
    async with new_session() as session:
        client = ImageClient(session, PasswordAuth(emulator.identity_url, tenant, "u", Secret("p")), "KR1")
        with pytest.raises(ForbiddenError, match="nhncloud_allow_download"):
            async with client.open_download(gated.id):
                pass
        async with client.open_download(mine.id) as dl:
            assert dl.status == 200
        await client.update_image(gated.id, [{"op": "replace", "path": "/nhncloud_allow_download", "value": "true"}])
        async with client.open_download(gated.id) as dl:
            assert dl.status == 200
        emulator.store("KR1").download_rule = False
        other = add(emulator, tenant, "other", nhncloud_allow_download="false")
        async with client.open_download(other.id) as dl:
            assert dl.status == 200


async def test_gated_source_is_refused_at_plan_time(emulator: Emulator, tmp_path: Path) -> None:
    """Without [source] enable_download a gated source fails with the reason and the fix (exit 1) and
    nothing is created for it in any target; the allowed one is copied; the sources are not touched."""
    tenant = uuid.uuid4().hex
    allowed = add(emulator, tenant, "allowed", size=MiB)
    gated = add(emulator, tenant, "gated", size=MiB, nhncloud_allow_download="false")
    before = (gated.updated_at, dict(gated.properties))
    summary = await run(job(emulator, tmp_path, tenant))
    assert summary.exit_code == 1
    failed = {(s.image_id, s.target): s.error or "" for s in summary.steps if s.state == "failed"}
    assert set(failed) == {(gated.id, t) for t in TARGETS}
    assert all("nhncloud_allow_download" in why and "enable_download" in why for why in failed.values())
    for region in TARGETS:
        assert copies_of(emulator, region, gated.id) == []  # nothing created for it, not even queued
        assert len(copies_of(emulator, region, allowed.id)) == 1
        assert emulator.regions[region].stats.requests["create"] == 1  # the allowed image's copy only
    assert (gated.updated_at, gated.properties) == before
    assert emulator.regions["KR1"].stats.requests.get("patch", 0) == 0  # no source was modified
    assert summary.plan is not None
    blocked = next(p for p in summary.plan.images if p.image.id == gated.id)
    assert {s.action.value for s in blocked.steps} == {"blocked"}


async def test_enable_download_switches_on_and_back(emulator: Emulator, tmp_path: Path) -> None:
    """With [source] enable_download = true: every source copied and verified, each gated source ("false",
    and "False") back to its original value, the copies carry the original value (or none, like their
    source), and the next run moves 0 bytes and changes nothing on the sources."""
    tenant = uuid.uuid4().hex
    gated = add(emulator, tenant, "gated", size=2 * MiB, nhncloud_allow_download="false")
    odd = add(emulator, tenant, "odd-case", size=MiB, nhncloud_allow_download="False")
    allowed = add(emulator, tenant, "allowed", size=MiB)
    spec = with_enable_download(job(emulator, tmp_path, tenant))
    first = await run(spec)
    assert first.exit_code == 0, [s.error for s in first.steps if s.error]
    assert first.counts()["copied"] == 3 * len(TARGETS)
    assert first.plan is not None
    assert sum("switched on while it is read" in note for note in first.plan.notes) == 2
    assert gated.properties["nhncloud_allow_download"] == "false"
    assert odd.properties["nhncloud_allow_download"] == "False"
    for region in TARGETS:
        for src in (gated, odd, allowed):
            (copy,) = copies_of(emulator, region, src.id)
            assert copy.status == "active"
            assert copy.checksum == src.checksum
            assert copy.properties.get("nhncloud_allow_download") == src.properties.get("nhncloud_allow_download")
    assert Journal.read(tmp_path / "state", "meta").open_sources == {}
    patches = emulator.regions["KR1"].stats.requests["patch"]
    assert patches == 4  # each gated source: one PATCH to open, one to restore
    again = await run(spec)
    assert again.exit_code == 0
    assert again.bytes_written == 0
    assert again.counts()["up_to_date"] == 3 * len(TARGETS)
    assert emulator.regions["KR1"].stats.requests["patch"] == patches  # nothing changed on the sources


def test_kill_9_while_a_source_is_open_restores_it_first(tmp_path: Path) -> None:
    """kill -9 right after a gated source was switched on: status shows it left open; the next run restores
    it before it discovers anything (the restore record precedes that run's plan), then completes."""
    from .jobsetup import write_job

    with emulator_process("--regions", "KR1,KR2,JP1") as emu:
        tenant = uuid.uuid4().hex
        admin = emu.admin
        made = _post(admin, "regions/KR1/synthetic", {"owner": tenant, "size": 3 * MiB, "seed": "gated", "fields": {
            "name": "gated", "os_type": "linux", "nhncloud_allow_download": "false"}})  # fmt: skip
        job_path = write_job(tmp_path / "job.toml", name="gate", identity_url=emu.identity_url, tenant=tenant,
                             journal=tmp_path / "state")  # fmt: skip
        job_path.write_text(job_path.read_text().replace('region = "KR1"', 'region = "KR1"\nenable_download = true', 1))
        crashed = run_cli("run", str(job_path), "--no-progress", env={"IMGMIG_FAILPOINTS": "source_opened"})
        assert crashed.returncode == -9, crashed.stderr[-2000:]
        assert _source(admin, tenant, made["id"])["nhncloud_allow_download"] == "true"  # left open by the kill
        status = json.loads(run_cli("status", str(job_path), "--json").stdout)
        assert status["sources_open"] == [{"image_id": made["id"], "original": "false"}]
        resumed = run_cli("run", str(job_path), "--no-progress")
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert _source(admin, tenant, made["id"])["nhncloud_allow_download"] == "false"
        records = _records(tmp_path / "state")
        run_starts = [r["seq"] for r in records if r["kind"] == "run_started"]
        restored = [r["seq"] for r in records if r["kind"] == "source" and r.get("download") == "restored"]
        plans = [r["seq"] for r in records if r["kind"] == "image" and r["seq"] > run_starts[-1]]
        assert run_starts[-1] < restored[0] < min(plans)  # restored before anything else of the second run
        assert json.loads(run_cli("status", str(job_path), "--json").stdout)["sources_open"] == []
        copies = [i for r in TARGETS for i in _all(admin, r) if i.get("imgmig_source_id") == made["id"]]
        assert len(copies) == len(TARGETS)
        assert all(c["status"] == "active" and c["nhncloud_allow_download"] == "false" for c in copies)


async def test_ten_thousand_images_list_in_few_pages(emulator: Emulator) -> None:
    """10,000 images are listed 1000 to a page: 10 full pages plus the empty page Glance's pagination
    always ends a full last page with (counted at the emulator)."""
    tenant = uuid.uuid4().hex
    store = emulator.store("KR1")
    for i in range(10_000):
        store.add_synthetic(tenant, 1, f"s{i}", {"name": f"img-{i:05d}"})
    before = emulator.regions["KR1"].stats.requests.get("list", 0)
    async with new_session() as session:
        client = ImageClient(session, PasswordAuth(emulator.identity_url, tenant, "u", Secret("p")), "KR1")
        ids = {i.id async for i in client.list_images({"owner": tenant})}
    assert len(ids) == 10_000
    assert emulator.regions["KR1"].stats.requests["list"] - before == 11


def _post(admin: str, path: str, doc: dict[str, Any]) -> Any:
    from .chaos import admin_post

    return admin_post(admin, path, doc)


def _all(admin: str, region: str) -> list[dict[str, Any]]:
    from .jobsetup import admin_images

    return admin_images(admin, region)


def _source(admin: str, tenant: str, image_id: str) -> dict[str, Any]:
    return next(i for i in _all(admin, "KR1") if i["id"] == image_id)


def _records(journal_dir: Path) -> list[dict[str, Any]]:
    lines = (journal_dir / "journal.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_status_counts_are_server_side(tmp_path: Path) -> None:
    """The emulator's state endpoint carries the per-region request counts these tests rely on."""
    with emulator_process("--regions", "KR1,KR2,KR3,JP1") as emu:
        doc = state(emu.admin)
        assert set(doc["stats"]) == {"KR1", "KR2", "KR3", "JP1"}
        assert doc["stats"]["KR3"]["requests"] == {}


@pytest.mark.real_glance
def test_gated_source_on_real_glance(glance_cluster: Any, tmp_path: Path) -> None:
    """On real Glance (which has no download rule of its own; the attribute is a custom property there):
    without the option the gated source fails at plan time and nothing is created for it; with
    enable_download it is switched on for the copy and back, and its copies carry the original value."""
    import anyio

    from .jobsetup import _api_images, make_source, new_tenants, write_job

    tenant, partner, other = new_tenants(3)
    specs = [(MiB, {"name": "allowed"}, {}), (2 * MiB, {"name": "gated", "nhncloud_allow_download": "false"}, {})]
    sources = make_source(glance_cluster.identity_url, tenant, partner=partner, other=other, specs=specs)
    gated = next(s for s in sources if s.name == "gated")
    job_path = write_job(tmp_path / "job.toml", name="g-gate", identity_url=glance_cluster.identity_url,
                         tenant=tenant, journal=tmp_path / "state")  # fmt: skip
    first = run_cli("run", str(job_path), "--no-progress", "--report", str(tmp_path / "r1.json"))
    assert first.returncode == 1, first.stderr[-2000:]
    failed = [s for s in json.loads((tmp_path / "r1.json").read_text())["steps"] if s["outcome"] == "failed"]
    assert {s["image_id"] for s in failed} == {gated.id}
    assert all("nhncloud_allow_download" in s["error"] for s in failed)
    for region in TARGETS:
        images = anyio.run(_api_images, glance_cluster.identity_url, tenant, region)
        assert [i["imgmig_source_id"] for i in images] == [next(s.id for s in sources if s.name == "allowed")]
    job_path.write_text(job_path.read_text().replace('region = "KR1"', 'region = "KR1"\nenable_download = true', 1))
    second = run_cli("run", str(job_path), "--no-progress")
    assert second.returncode == 0, second.stderr[-3000:]
    (src,) = [i for i in anyio.run(_api_images, glance_cluster.identity_url, tenant, "KR1") if i["id"] == gated.id]
    assert src["nhncloud_allow_download"] == "false"
    for region in TARGETS:
        copies = [i for i in anyio.run(_api_images, glance_cluster.identity_url, tenant, region)
                  if i["imgmig_source_id"] == gated.id]  # fmt: skip
        assert len(copies) == 1
        assert copies[0]["status"] == "active"
        assert copies[0]["nhncloud_allow_download"] == "false"
