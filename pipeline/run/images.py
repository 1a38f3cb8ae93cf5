"""One run's work on its images: the plan journalled, the orphan sweep, and each image's copy, metadata and
final records (``runner`` drives them under the job's lock and limits).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
import structlog

from pipeline.cloud.retry import RetryBudget, spending
from pipeline.config import JobSpec
from pipeline.errors import ApiError, ImgmigError, NotFoundError, first_error
from pipeline.models import Image
from pipeline.plan.intent import Intent
from pipeline.plan.metadiff import Desired, create_fields
from pipeline.plan.planner import Action, ImagePlan, Plan, Step, holds_source_data, settled
from pipeline.plan.provenance import PROV_SOURCE_ID, carries_provenance, is_own_copy
from pipeline.report.summary import RunSummary, StepFinished
from pipeline.run.gate import download_enabled
from pipeline.run.inventory import Clients, Inventory
from pipeline.run.metadata import apply_metadata
from pipeline.state.failpoints import failpoint
from pipeline.state.journal import Journal
from pipeline.state.records import compact_evidence
from pipeline.transfer.copies import delete_copy, reactivated
from pipeline.transfer.engine import Engine, EngineHooks, TargetResult, TargetSpec
from pipeline.transfer.inspection import FormatVerdict
from pipeline.transfer.source import source_gone

__all__ = ["Running", "image_task", "journal_plan", "sweep"]

log = structlog.get_logger("imgmig")


class Progress:
    """Which steps of the images in flight have finished, and how many images had every step with something to do
    (not ``skip``) finish in this run: what a parked run reports, without keeping every step."""

    def __init__(self) -> None:
        #: Image id -> (its open steps not finished yet, the targets whose step finished).
        self.in_flight: dict[str, tuple[list[int], set[str]]] = {}
        self.settled = 0

    def begin(self, plan: ImagePlan) -> None:
        self.in_flight[plan.image.id] = ([sum(1 for s in plan.steps if s.action is not Action.SKIP)], set())

    def finished(self, image_id: str, step: Step) -> None:
        held = self.in_flight.get(image_id)
        if held is None:
            return
        left, targets = held
        targets.add(step.target)
        if step.action is not Action.SKIP:
            left[0] -= 1
            if left[0] == 0:
                self.settled += 1

    def finished_targets(self, image_id: str) -> set[str]:
        held = self.in_flight.get(image_id)
        return held[1] if held is not None else set()

    def end(self, image_id: str) -> None:
        self.in_flight.pop(image_id, None)


@dataclass(frozen=True)
class Running:
    """One run once discovery is done: what every image's steps need, built whole by the runner."""

    spec: JobSpec
    journal: Journal
    clients: Clients
    engine: Engine
    summary: RunSummary
    inventory: Inventory
    intent: Intent
    plan: Plan
    #: Set when an image that other images reference is over (done or not): they wait for it. Only such images have one.
    finished: dict[str, anyio.Event]
    progress: Progress = field(default_factory=Progress)


#: How many images' plan records are written between two checkpoints (the loop's other tasks run in between).
PLAN_SLICE = 256


async def journal_plan(run: Running) -> None:
    """One record per image, holding the plan of each of its targets (a write per image, not per step). An image
    the journal already records as it is, in sync in every target, gets none: an idle rerun grows the journal by
    its run records only, not by a record per image."""
    plan, inventory = run.plan, run.inventory
    unavailable = {label: t.error for label, t in inventory.targets.items() if t.error is not None}
    for number, image_plan in enumerate(plan.images, start=1):
        if number % PLAN_SLICE == 0:
            await anyio.lowlevel.checkpoint()  # a large catalogue's plan is written in slices
        image = image_plan.image
        if not unavailable and image_plan.recorded:  # the planner looked (``planner.recorded_in_sync``)
            continue  # (``_unrecorded`` says the same)
        steps: dict[str, dict[str, Any]] = {}
        for step in image_plan.steps:
            steps[step.target] = {"action": step.action.value, "reason": step.reason, "state": "planned"}
            if step.existing is not None:
                steps[step.target]["target_id"] = step.existing.id
        for label, error in unavailable.items():
            steps[label] = {"action": "copy", "state": "failed", "error": error}
        run.journal.record("image", image_id=image.id, name=image.name, size=image.size, checksum=image.checksum,
                           status=image.status, skipped=image_plan.skipped, plan=steps)  # fmt: skip
        run.journal.release(image.id)  # held packed until its own task works on it
    for missing in inventory.missing_ids:
        run.journal.record("image", image_id=missing, status="missing", skipped="selected id not found in the source")
        run.journal.release(missing)


async def sweep(run: Running) -> None:
    """Delete duplicate and leftover copies of this job (the orphan sweep), and its unfinished copies of sources
    that no longer exist; each image's provenance is re-checked on the image itself before it is deleted
    (``copies.delete_copy``)."""
    doomed = [(image_plan.image.id, step.target, extra) for image_plan in run.plan.images if not image_plan.in_sync
              for step in image_plan.steps for extra in step.extra]  # fmt: skip
    doomed += [(str(copy.raw.get(PROV_SOURCE_ID)), label, copy) for label, copy in run.plan.leftovers]
    for source_id, label, copy in doomed:
        target = run.inventory.targets[label]
        try:
            deleted = await delete_copy(target.client, copy, run.spec.names)
        except ApiError as exc:
            log.warning("orphan_delete_failed", image_id=source_id, target=label, target_image=copy.id,
                        error=str(exc))  # fmt: skip
            continue
        if not deleted:
            log.warning("orphan_not_ours", image_id=source_id, target=label, target_image=copy.id,
                        message="no longer carries this job's provenance; left alone")  # fmt: skip
            continue
        run.summary.orphans_deleted += 1
        failpoint("swept")
        run.journal.record("target", image_id=source_id, region=label, deleted=copy.id)
        run.journal.release(source_id)


class _Hooks(EngineHooks):
    def __init__(self, run: Running, image: Image) -> None:
        self.run, self.image = run, image

    async def creating(self, region: str, image_id: str) -> None:
        self.run.journal.record("target", image_id=self.image.id, region=region, creating=image_id)

    async def created(self, region: str, image_id: str) -> None:
        self.run.journal.record("target", image_id=self.image.id, region=region, created=image_id)

    async def deleted(self, region: str, image_id: str) -> None:
        self.run.journal.record("target", image_id=self.image.id, region=region, deleted=image_id)

    def inspected(self, verdict: FormatVerdict) -> None:
        # with the checksum it was judged for: a later run reuses it while the source is unchanged
        self.run.journal.record("image", image_id=self.image.id,
                                inspected={**verdict.to_json(), "checksum": self.image.checksum})  # fmt: skip


async def image_task(run: Running, plan: ImagePlan, limiter: anyio.CapacityLimiter) -> None:
    """One image's steps under the run's capacity limit: its copy, then each target's metadata and final record.
    The images it references finish first (waited for outside the limit, so waiting holds no slot). A failure of
    this image is recorded and the run goes on; a fatal error, or a bug, stops the run."""
    references = run.intent.references
    if plan.in_sync:  # its steps, made once for this task (``planner.UpToDate`` makes them each time it is read)
        plan = replace(plan, steps=tuple(plan.steps))
    run.progress.begin(plan)
    try:
        if plan.image.id not in references.unresolved:  # a blocked image waits for nothing (a loop would never end)
            for referenced in references.referenced(plan.image.id).values():
                event = run.finished.get(referenced)
                if event is not None and referenced != plan.image.id:
                    await event.wait()
        await _image_steps(run, plan, limiter)
    finally:
        run.journal.release(plan.image.id)  # its entry is held packed from now on (``records.Images``)
        run.intent.forget(plan.image.id)
        run.progress.end(plan.image.id)
        done = run.finished.get(plan.image.id)  # an image that others reference: they may go on now
        if done is not None:
            done.set()


async def _image_steps(run: Running, plan: ImagePlan, limiter: anyio.CapacityLimiter) -> None:
    unreadable = run.inventory.image_errors.get(plan.image.id)
    if unreadable is not None:
        for step in plan.steps:
            _record_step(run, plan.image, step, "failed", error=unreadable)
        return
    async with limiter:
        try:
            await _copy_image(run, plan)
        except Exception as exc:  # one image's failure is recorded; the job goes on unless it is fatal
            error = first_error(exc)
            if isinstance(error, ImgmigError) and error.fatal:
                raise error from exc
            if not isinstance(error, ImgmigError):
                raise
            finished = run.progress.finished_targets(plan.image.id)
            for step in plan.steps:
                if step.target not in finished:
                    _record_step(run, plan.image, step, "failed", error=str(error))


async def _copy_image(run: Running, plan: ImagePlan) -> None:
    inventory, intent = run.inventory, run.intent
    image = plan.image
    data_steps = [s for s in plan.steps if s.action.moves_data]
    # a target whose quota filled up during the run gets no request: its steps fail with that one reason
    results = {s.target: TargetResult(s.target, state="failed", error=run.engine.full[s.target])
               for s in data_steps if s.target in run.engine.full}  # fmt: skip
    for step in data_steps:  # a reference whose image has no copy there: creating one would point to the source
        unmapped = intent.missing_references(image, step.target) if step.target not in results else []
        if unmapped:
            results[step.target] = TargetResult(step.target, state="failed", error="; ".join(unmapped))
    copying = [s for s in data_steps if s.target not in results]
    for step in data_steps:
        if step.target in results:
            _record_step(run, image, step, "failed", result=results[step.target], error=results[step.target].error)
    if copying:
        specs = []
        for step in copying:
            target = inventory.targets[step.target]
            desired = intent.desired(image, step.target)
            entry = run.journal.state.target(image.id, step.target)
            specs.append(TargetSpec(step.target, target.client, create_fields(image, desired), existing=step.existing,
                                    algorithms=target.algorithms,
                                    pending_id=entry.creating if entry is not None else None,
                                    fallback_fields=create_fields(image, desired, minimal=True)))  # fmt: skip
        # NHN: a gated source is switched on just for this read, and restored once every target is done
        gate = download_enabled(inventory.source, run.journal, image) if plan.enable_download else None
        try:
            async with gate or contextlib.nullcontext():
                await run.engine.copy_image(inventory.source, image, specs, hooks=_Hooks(run, image), results=results)
        except ApiError as exc:  # only opening the gate raises one: the engine reports per target
            state, why = "failed", f"cannot switch on the source's download permission (nhncloud_allow_download): {exc}"
            if isinstance(exc, NotFoundError) and await source_gone(inventory.source, image.id):
                state, why = "vanished", f"the source image {image.id} was deleted during the run ({exc})"
            for step in copying:
                results.setdefault(step.target, TargetResult(step.target, state=state, error=why))
        finally:
            # synchronous journal writes: they complete even while the task is being cancelled
            for step in copying:
                result = results.get(step.target)
                if result is not None and result.state != "done":
                    _record_step(run, image, step, result.state, result=result, error=result.error)
    for step in plan.steps:
        result = results.get(step.target)
        if step.action.moves_data and (result is None or result.state != "done"):
            continue
        await _finish_step(run, image, step, result, unrecorded=_unrecorded(run, plan))


def _unrecorded(run: Running, image_plan: ImagePlan) -> bool:
    """Whether ``journal_plan`` wrote no record for this image: the journal holds it, as it is, in sync."""
    return image_plan.recorded and not any(t.error for t in run.inventory.targets.values())


async def _finish_step(run: Running, image: Image, step: Step, result: TargetResult | None, *,
                       unrecorded: bool = False) -> None:  # fmt: skip
    """Metadata for a verified copy (or a metadata-only step), then the step's final record (``unrecorded``: the
    journal already holds it, see ``_unrecorded``)."""
    if step.action is Action.SKIP:
        same = unrecorded or settled(image, step, run.journal.state.target(image.id, step.target))
        _record_step(run, image, step, "skipped" if step.reason != "up to date" else "done", journal=not same)
        return
    if step.action is Action.BLOCKED:  # nothing was created anywhere; the reason says what to do
        _record_step(run, image, step, "failed", error=step.reason)
        return
    if step.action is Action.REFUSED:  # an earlier run's inspection refused it, and the source is unchanged
        _record_step(run, image, step, "refused", error=step.reason)
        return
    if step.action is Action.NOT_PORTABLE:  # a volume-backed snapshot: nothing to copy, the reason says why
        _record_step(run, image, step, "not_portable", error=step.reason)
        return
    target = run.inventory.targets[step.target]
    target_id = result.target_id if result is not None else (step.existing.id if step.existing else None)
    if target_id is None:  # a verified copy has an id, and so has the copy a metadata step plans for
        _record_step(run, image, step, "failed", result=result, error="metadata: no copy to apply it to")
        return
    budget = result.budget if result is not None else RetryBudget(run.spec.transfer.retries)
    phases = {**(result.phases if result is not None else {}), "metadata": time.time()}
    try:
        with spending(budget):  # the metadata step spends the same retry budget as the copy before it
            # the copy as the engine's verification read it (nothing wrote to it since); else read it now
            copy = result.image if result is not None and result.image is not None else None
            if step.action is Action.RESTORE:  # reactivated first; the marker goes with the metadata below
                copy = await reactivated(target.client, step.existing or await target.client.get_image(target_id))
            copy = copy or await target.client.get_image(target_id)
            refused = _not_taken_over(run, image, step, copy)
            if refused is not None:
                _record_step(run, image, step, "failed", error=refused, target_id=target_id, phases=phases)
                return
            members = await target.client.list_members(target_id) if copy.visibility == "shared" else []
            desired = run.intent.desired(image, step.target)
            adopting = step.action is Action.ADOPT and not carries_provenance(copy)
            diff = run.intent.diff(image, step.target, copy, members, adopting=adopting)
            acceptors = await _acceptors(run, step.target, desired)
            report = await apply_metadata(target.client, copy, desired, diff, acceptors=acceptors)
            failpoint("synced")
            for stale in step.stale:
                await delete_copy(target.client, stale, run.spec.names)
                failpoint("replaced")
                run.journal.record("target", image_id=image.id, region=step.target, deleted=stale.id)
    except ApiError as exc:
        _record_step(run, image, step, "failed", result=result, error=f"metadata: {exc}", target_id=target_id,
                     phases=phases)  # fmt: skip
        return
    run.intent.copied(image.id, step.target, target_id)
    problems = [*(result.warnings if result is not None else ()), *report.problems]
    _record_step(run, image, step, "done", result=result, target_id=target_id, problems=problems,
                 pending=report.pending_members, managed=report.managed, changed=report.changed,
                 phases=phases)  # fmt: skip


def _not_taken_over(run: Running, image: Image, step: Step, copy: Image) -> str | None:
    """Why the image an adopt or restore step names may not be taken over now (read again just before its first
    write), or None: it must still hold the source's data, and carry no provenance (adopt) or this job's, for this
    source. Another job, or another source of a shard, may have taken it since the plan was made."""
    if step.action not in (Action.ADOPT, Action.RESTORE):
        return None
    if copy.status != "active" or not holds_source_data(copy, image):
        return (f"image {copy.id} changed since the plan (status {copy.status}, or not the source's data any more): "
                "not taken over; the next run decides again")  # fmt: skip
    if carries_provenance(copy) and not is_own_copy(copy, run.spec.names, image.id):
        return (f"image {copy.id} now carries other imgmig provenance (another job or source took it over since the "
                "plan): not taken over; the next run decides again")  # fmt: skip
    return None


async def _acceptors(run: Running, label: str, desired: Desired) -> dict[str, Any]:
    """Clients able to accept a membership in this target's region: one per profile tenant."""
    spec = run.spec
    if not spec.copy.accept_members_with or not desired.members:
        return {}
    region = run.inventory.targets[label].endpoint.region
    out = {}
    for profile in spec.copy.accept_members_with:
        tenant = await run.clients.tenant(profile)
        if tenant and tenant in desired.members:
            out[tenant] = run.clients.client(profile, region)
    return out


def _record_step(
    run: Running, image: Image, step: Step, state: str, *, result: TargetResult | None = None,
    error: str | None = None, target_id: str | None = None, problems: list[str] | None = None,
    pending: list[str] | None = None, managed: list[str] | None = None, changed: bool = False,
    phases: dict[str, float] | None = None, journal: bool = True,
) -> None:  # fmt: skip
    """The step's final record (unless ``journal`` is False: the journal holds it already) and its summary."""
    # a final record: empty fields are left out (the journal state resets them)
    fields: dict[str, Any] = {"state": state}
    if error:
        fields["error"] = error
    if result is not None:
        fields["bytes"], fields["attempts"] = result.bytes, result.attempts
        if result.evidence is not None:
            fields["evidence"] = compact_evidence(result.evidence.to_json())
        target_id = target_id or result.target_id
    if target_id:
        fields["target_id"] = target_id
    if state == "done":
        fields["source_checksum"] = image.checksum
    if problems:
        fields["problems"] = problems
    if pending:
        fields["pending_members"] = pending
    if managed is not None:
        fields["metadata"] = ",".join(managed)
    phases = phases if phases is not None else (result.phases if result is not None else None)
    if phases:  # when each phase began: the HTML report's timeline (old journals simply lack it)
        fields["phases"] = {name: round(at, 3) for name, at in phases.items()}
    if journal:
        run.journal.record("target", image_id=image.id, region=step.target, **fields)
    run.progress.finished(image.id, step)
    run.summary.step_finished(StepFinished(
        image_id=image.id, name=image.name, target=step.target, action=step.action.value, state=state,
        bytes=result.bytes if result else 0, error=error, reason=step.reason, problems=tuple(problems or ()),
        pending_members=tuple(pending or ()), changed=changed, target_id=target_id,
    ))  # fmt: skip
