"""A source deleted during a run: reported ``vanished`` (not a failure), never retried against its 404, and nothing
of it left in any target; and the leftovers a crash leaves of such a source (queued copies with this job's
provenance) deleted by the next run, without prune. Counted at the emulator."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline.emulator import Emulator
from pipeline.emulator.store import Caller
from pipeline.report.events import PlanReady
from pipeline.run.runner import RunControls, run_job
from pipeline.state.journal import Journal

from .jobsetup import TARGETS, MiB, add, copies, job, run


class _DeleteOnPlan:
    """A reporter that deletes one source image from the emulator the moment the plan is ready: after planning,
    before any step of the run starts (no timer)."""

    def __init__(self, emulator: Emulator, image_id: str) -> None:
        self.emulator, self.image_id, self.deleted = emulator, image_id, False

    def emit(self, event: Any) -> None:
        if isinstance(event, PlanReady) and not self.deleted:
            store = self.emulator.store("KR1")
            store.delete(self.image_id, Caller(store.images[self.image_id].owner))
            self.deleted = True


async def test_a_source_deleted_after_planning_is_vanished_and_leaves_nothing(emulator: Emulator,
                                                                              tmp_path: Path) -> None:  # fmt: skip
    """Two images planned; one is deleted before its step runs. Its step in each target is ``vanished`` with no
    retries (KR1 answered one download and one GET for it), no image of it is left in any target, the other image
    is copied, and the run exits 0: the selection changed under the run, nothing failed."""
    tenant = uuid.uuid4().hex
    gone = add(emulator, tenant, "gone", size=2 * MiB)
    kept = add(emulator, tenant, "kept", size=2 * MiB)
    spec = job(emulator, tmp_path, tenant)
    spec = replace(spec, transfer=spec.transfer.model_copy(update={"images_in_flight": 1}))
    deleter = _DeleteOnPlan(emulator, gone.id)
    before = dict(emulator.regions["KR1"].stats.requests)
    summary = await run_job(spec, RunControls(reporter=deleter, signals=()))
    assert deleter.deleted
    order = [s.image_id for s in summary.steps]
    assert order.index(kept.id) < order.index(gone.id)  # the vanished image's step was queued behind the other
    assert summary.exit_code == 0, summary.render()
    outcomes = {(s.image_id, s.target): s.outcome for s in summary.steps}
    assert outcomes == {**{(kept.id, t): "copied" for t in TARGETS}, **{(gone.id, t): "vanished" for t in TARGETS}}
    kr1 = {k: v - before.get(k, 0) for k, v in emulator.regions["KR1"].stats.requests.items()}
    assert kr1["download"] == 2  # one per image: the vanished one's 404 was not retried
    assert kr1.get("get", 0) == 1  # the one GET that confirmed the 404
    for region in TARGETS:
        left = copies(emulator, region, tenant)
        assert set(left) == {kept.id}, region  # nothing of the vanished source
        assert left[kept.id].status == "active"
        # its queued copy was created (before its download met the 404) and deleted at once
        requests = emulator.regions[region].stats.requests
        assert (requests["create"], requests["delete"]) == (2, 1), region
    assert summary.counts()["vanished"] == 2
    assert "vanished" in summary.render()
    state = Journal.read(spec.run.journal_dir, spec.name)
    assert {state.target(gone.id, t).state for t in TARGETS} == {"vanished"}  # type: ignore[union-attr]


async def test_leftovers_of_a_vanished_source_are_swept_without_prune(emulator: Emulator, tmp_path: Path) -> None:
    """Queued copies with this job's provenance whose source no longer exists, as a crash would leave them, are
    deleted by the next run (prune is off); a verified copy of a vanished source stays, and so does a queued copy
    whose source still exists but is no longer selected."""
    tenant = uuid.uuid4().hex
    selected = add(emulator, tenant, "selected", size=MiB)
    unselected = add(emulator, tenant, "unselected", size=MiB)
    spec = job(emulator, tmp_path, tenant, sections={"select": {"names": ["selected"]}})
    owner = Caller(tenant)

    def plant(region: str, source_id: str, *, active: bool = False) -> str:
        store = emulator.store(region)
        fields: dict[str, Any] = {"name": "left", "os_type": "linux", "disk_format": "raw", "container_format": "bare",
                                  "imgmig_job": spec.name, "imgmig_source_id": source_id,
                                  "imgmig_source_region": "KR1", "imgmig_source_checksum": ""}  # fmt: skip
        if active:
            return store.add_bytes(tenant, b"x" * 10, fields).id
        return store.create(fields, owner).id

    gone_id = str(uuid.uuid4())
    queued = {region: plant(region, gone_id) for region in TARGETS}
    verified = plant("KR2", str(uuid.uuid4()), active=True)
    waiting = plant("JP1", unselected.id)
    summary = await run(spec)
    assert summary.exit_code == 0, summary.render()
    for region in TARGETS:
        assert queued[region] not in emulator.store(region).images, region
    assert verified in emulator.store("KR2").images
    assert waiting in emulator.store("JP1").images
    assert summary.orphans_deleted == 2
    assert {s.outcome for s in summary.steps if s.image_id == selected.id} == {"copied"}
