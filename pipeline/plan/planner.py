"""The planner (pure): which images a job selects, and for each image x target what must happen.

Decisions come from the target's actual images (found by their provenance properties), never from
the journal alone: the journal only breaks ties (which of several partial copies to reuse). Actions:

- ``copy``: no copy exists; create one and stream the data.
- ``resume``: a partial copy (queued, saving, killed) from an interrupted run is reused.
- ``replace``: the source data changed since the copy (``on_change = "replace"``); a new copy is made,
  verified, and only then the old one deleted.
- ``metadata``: a verified copy exists but its metadata drifted; patch it, move no data.
- ``adopt``: an image already in the target is taken over as the copy, nothing uploaded: one without provenance
  that is identical to the source (``[copy] adopt``, see ``adoption``), or this job's copy under a previous name
  (``[run] previous_names``).
- ``restore``: this job's copy that a grace-period prune retired is brought back (the source is selected again).
- ``skip``: up to date, or not copyable (with the reason).
- ``blocked``: the source may not be downloaded (NHN's ``nhncloud_allow_download`` is false and
  ``[source] enable_download`` is off): nothing is created anywhere, and the step fails with the reason
  and the fix.

Extra copies (duplicates after a crash, partial leftovers next to a good copy) are listed for deletion:
that is the orphan sweep. Only images carrying this job's provenance are ever considered.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pipeline.config import CopyOptions
from pipeline.models import Content, Image, source_content
from pipeline.plan.adoption import Adoptable, adoption_notes, near_miss_notes
from pipeline.plan.metadiff import MetaDiff
from pipeline.plan.provenance import PROV_JOB, PROV_SOURCE_ID, iso_time, retired_at
from pipeline.plan.prune import PrunePlan, Retired
from pipeline.plan.references import ReferenceGraph
from pipeline.plan.steps import Action, Step, UpToDate
from pipeline.slices import SLICE, Sliced, drained
from pipeline.state.records import JournalState, TargetEntry

__all__ = ["ALLOW_DOWNLOAD", "Action", "ImagePlan", "Plan", "Step", "download_allowed", "expected_content",
           "holds_source_data", "kept_copy", "link_references", "not_copied", "plan_job", "skip_reason",
           "verified_copies", "volume_backed_reason"]  # fmt: skip

PARTIAL_STATES = frozenset({"queued", "saving", "killed", "importing", "uploading"})


@dataclass(frozen=True, slots=True)
class ImagePlan:
    image: Image
    steps: Sequence[Step]
    skipped: str | None = None
    #: The source's download permission is switched on for this copy and restored afterwards.
    enable_download: bool = False
    #: The journal already records the image as it is, and every step as a skip it recorded (``recorded_in_sync``):
    #: the run writes no record for it.
    recorded: bool = False

    @property
    def moves_data(self) -> bool:
        return any(s.action.moves_data for s in self.steps)

    @property
    def in_sync(self) -> bool:
        """Every step is "up to date" (skip, no bytes, no copy to delete): passes over a whole plan skip the image
        without making its steps (``UpToDate``)."""
        return isinstance(self.steps, UpToDate)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"id": self.image.id, "name": self.image.name, "size": self.image.size,
                               "steps": [s.to_json() for s in self.steps]}  # fmt: skip
        if self.skipped:
            doc["skipped"] = self.skipped
        if self.enable_download:
            doc["enable_download"] = True
        return doc


@dataclass(frozen=True, slots=True)
class Plan:
    images: tuple[ImagePlan, ...]
    targets: tuple[str, ...]
    notes: tuple[str, ...] = ()
    #: ``[prune] enabled``: the copies to delete, or why none may go.
    prune: PrunePlan | None = None
    #: (target, copy) of this job's unfinished copies whose source no longer exists: the sweep deletes them.
    leftovers: tuple[tuple[str, Image], ...] = ()
    #: This job's copies that a grace-period prune retired, but for those this run restores.
    retired: tuple[Retired, ...] = ()

    def steps(self) -> Iterable[tuple[ImagePlan, Step]]:
        for image in self.images:
            for step in image.steps:
                yield image, step

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {a.value: 0 for a in Action}
        for image in self.images:
            if image.in_sync:
                counts[Action.SKIP.value] += len(image.steps)
                continue
            for step in image.steps:
                counts[step.action.value] += 1
        return counts

    @property
    def bytes(self) -> int:
        return sum(step.bytes for image in self.images if not image.in_sync for step in image.steps)

    @property
    def step_count(self) -> int:
        return sum(len(image.steps) for image in self.images)

    def open_steps(self) -> Iterable[tuple[str, str]]:
        """(source image id, target) of every step with something to do (not ``skip``)."""
        return ((image.image.id, step.target) for image in self.images if not image.in_sync
                for step in image.steps if step.action is not Action.SKIP)  # fmt: skip

    @property
    def planned_images(self) -> int:
        """Images not skipped as a whole."""
        return sum(1 for image in self.images if image.skipped is None)

    def to_json(self, *, lazy: bool = False) -> dict[str, Any]:
        """The plan as JSON; ``lazy``: its ``images`` a generator that makes each image's document as it is
        written (once), not a list."""
        images: Any = (i.to_json() for i in self.images) if lazy else [i.to_json() for i in self.images]
        grace = self.prune.grace if self.prune is not None else None
        return {"targets": list(self.targets), "counts": self.counts(), "bytes": self.bytes,
                "images": images, "notes": list(self.notes),
                "prune": self.prune.to_json() if self.prune is not None else None,
                "retired": [r.to_json(grace) for r in self.retired]}  # fmt: skip


ALLOW_DOWNLOAD = "nhncloud_allow_download"
BLOCKED_REASON = (
    "NHN Cloud does not allow downloading this source: its nhncloud_allow_download attribute is {value!r}. "
    "Set it to true (Image API PATCH), or set [source] enable_download = true to let imgmig switch it on "
    "for the copy and back afterwards"
)


def download_allowed(image: Image) -> bool:
    """NHN's download permission: False only when the image says ``nhncloud_allow_download`` is not true
    (clouds without the attribute allow every download)."""
    value = image.raw.get(ALLOW_DOWNLOAD)
    return value is None or str(value).lower() == "true"


def volume_backed_reason(image: Image) -> str | None:
    """Why ``image`` is not portable, or None: a volume-backed snapshot (Nova's snapshot of a volume-backed
    instance) holds no data of its own; its ``block_device_mapping`` names a block-storage snapshot or volume of
    the source region, which no target region has, so a copy could never boot."""
    raw = image.raw.get("block_device_mapping")
    try:
        mappings = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return None
    if not isinstance(mappings, list) or (image.size or 0) > 0:
        return None
    for bdm in mappings:
        if not isinstance(bdm, dict):
            continue
        for key, kind in (("snapshot_id", "snapshot"), ("volume_id", "volume")):
            if bdm.get(key):
                return (f"volume-backed snapshot: its data is not in the Image API but in the block-storage {kind} "
                        f"{bdm[key]} of the source region, named by its block_device_mapping, and no target has it. "
                        "Copy the volume instead (a volume backup or transfer to the other region), or make an "
                        "image of it with its data uploaded (cinder upload-to-image) and copy that")  # fmt: skip
    return None


def not_copied(image: Image, copy: CopyOptions, volume_backed: str = "block") -> tuple[Action, str] | None:
    """Why ``image`` gets no copy in any target, as the action of all its steps: ``skip`` (``skip_reason``, or a
    volume-backed snapshot with ``[select] volume_backed = "skip"``) or ``not_portable``; None when it is copied.
    The planner and ``verify`` both judge an image with it."""
    reason = skip_reason(image, copy)
    if reason is not None:
        return Action.SKIP, reason
    volume = volume_backed_reason(image)
    if volume is None:
        return None
    if volume_backed == "skip":
        return Action.SKIP, f'{volume} ([select] volume_backed = "skip")'
    return Action.NOT_PORTABLE, volume


def skip_reason(image: Image, copy: CopyOptions) -> str | None:
    """Why an image cannot be copied at all, or None."""
    if image.visibility == "public":
        return "public images are never copied"
    if image.visibility == "community" and copy.community == "skip":
        return ("community image skipped: NHN Cloud allows only private and shared images "
                "(set [copy] community = \"private\" or \"community\" to copy it)")  # fmt: skip
    if image.status != "active":
        return f"source image is {image.status}: it has no data to copy"
    return None


def journalled_digests(entry: TargetEntry | None, copy_id: str) -> dict[str, str]:
    """The digests this job computed from the bytes it sent when it made the copy ``copy_id`` (its journal
    evidence), or none: what stands in for the digests of a source that publishes none."""
    evidence = entry.evidence if entry is not None and entry.target_id == copy_id else None
    computed = evidence.get("computed") if isinstance(evidence, dict) else None
    return {str(k): str(v) for k, v in computed.items()} if isinstance(computed, dict) else {}


def expected_content(image: Image, copy_id: str, entry: TargetEntry | None) -> Content:
    """What the copy ``copy_id`` of ``image`` must hold (``models.source_content``, with the digests journalled
    for that copy standing in for those of a source that publishes none)."""
    return source_content(image, journalled_digests(entry, copy_id))


def holds_source_data(copy: Image, image: Image, entry: TargetEntry | None = None) -> bool:
    """Whether the active ``copy`` holds ``image``'s bytes (``Content.held_by``): by the digests the source
    publishes; for a source that publishes none, by size plus the digests this job journalled when it made that
    copy (size alone when nothing was journalled). Never "changed" for ever: such a source cannot loop on
    replace."""
    return expected_content(image, copy.id, entry).held_by(copy.content).ok


def _prefer(candidates: Sequence[Image], journal_id: str | None) -> Image:
    for image in candidates:
        if image.id == journal_id:
            return image
    return sorted(candidates, key=lambda i: (i.raw.get("created_at") or "", i.id))[0]


def verified_copies(image: Image, copies: Sequence[Image], entry: TargetEntry | None) -> list[Image]:
    """The active copies (of ``image``, in one target) that hold the source's data."""
    return [c for c in copies if c.status == "active" and holds_source_data(c, image, entry)]


def kept_copy(image: Image, copies: Sequence[Image], entry: TargetEntry | None) -> Image | None:
    """The copy a run keeps (and ``verify`` checks) among several good ones: the one the journal names, else
    the oldest. None when no copy holds the source's data."""
    good = verified_copies(image, copies, entry)
    return _prefer(good, entry.target_id if entry else None) if good else None


def _plan_target(
    image: Image, label: str, copies: Sequence[Image], entry: TargetEntry | None, copy: CopyOptions,
    meta_diff: Callable[[Image, str, Image], MetaDiff],
) -> Step:  # fmt: skip
    size = image.size or 0
    journal_id = entry.target_id if entry else None
    keep = kept_copy(image, copies, entry)
    stale = [c for c in copies if c.status == "active" and not holds_source_data(c, image, entry)]
    partial = [c for c in copies if c.status != "active"]
    if keep is not None:
        extra = tuple(c for c in copies if c is not keep)
        diff = meta_diff(image, label, keep)
        if diff.empty:
            return Step(label, Action.SKIP, "up to date", 0, keep, extra=extra, diff=diff)
        return Step(label, Action.METADATA, "metadata drifted", 0, keep, extra=extra, diff=diff)
    if stale and copy.on_change == "keep":
        keep = _prefer(stale, journal_id)
        return Step(label, Action.SKIP, "source data changed; old copy kept (on_change = \"keep\")", 0, keep,
                    extra=tuple(c for c in copies if c is not keep))  # fmt: skip
    reuse = _prefer([c for c in partial if c.status == "queued"], journal_id) if any(
        c.status == "queued" for c in partial) else None  # fmt: skip
    extra = tuple(c for c in partial if c is not reuse)
    if stale:
        return Step(label, Action.REPLACE, "source data changed since the copy", size, reuse, tuple(stale), extra)
    if reuse is not None:
        return Step(label, Action.RESUME, "an interrupted copy is reused", size, reuse, extra=extra)
    return Step(label, Action.COPY, "", size, extra=extra)


def _taken_over(
    image: Image, step: Step, retired: Sequence[Image], adoptable: Adoptable | None, job: str, notes: list[str]
) -> Step:
    """``step`` made an ``adopt`` or a ``restore`` where an image already in the target can stand for the copy:
    instead of new bytes, a retired copy of this source that holds its data (restored), else an identical image
    without provenance (adopted, the oldest); a copy kept under a previous name of the job is taken over."""
    label = step.target
    if step.action.moves_data:
        back = next((c for c in retired if c.status in ("active", "deactivated") and holds_source_data(c, image)),
                    None)  # fmt: skip
        if back is not None:
            when = iso_time(retired_at(back) or 0.0)
            return Step(label, Action.RESTORE, f"its copy {back.id}, retired by prune at {when}, is brought back: the "
                        "source is selected again", 0, back, step.stale, step.extra)  # fmt: skip
        found = adoptable.candidates.get(image.id) if adoptable is not None else None
        if found:
            notes += adoption_notes(label, image, found[0], adoptable)  # type: ignore[arg-type]
            return Step(label, Action.ADOPT, 'an identical image without provenance is already there: adopted ([copy] '
                        'adopt = "exact"), nothing is uploaded', 0, found[0], step.stale, step.extra)  # fmt: skip
        notes += near_miss_notes(label, image, adoptable)
        return step
    kept = step.existing
    old = kept.raw.get(PROV_JOB) if kept is not None else None
    if job and old is not None and old != job and (step.action is Action.METADATA or step.reason == "up to date"):
        return replace(step, action=Action.ADOPT, reason=f"its copy was made by this job under its previous name "
                       f"{old!r}: taken over ([run] previous_names)")  # fmt: skip
    return step


def inspected_refusal(image: Image, journal: JournalState, allow_mismatch: bool) -> str | None:
    """Why an earlier run's format inspection refused ``image`` (``transfer.inspection``), while its source is the
    same (its checksum is the one judged), or None: the image is then refused again without being read."""
    seen = journal.inspected(image.id, image.checksum)
    if seen is None:
        return None
    if seen.get("safe", True) and not (seen.get("mismatch") and not allow_mismatch):
        return None
    return f"refused: {seen.get('reason')} (found by an earlier run's inspection; the source is unchanged)"


def recorded_in_sync(image: Image, steps: Sequence[Step], skipped: str | None, journal: JournalState) -> bool:
    """Whether the journal already holds this image as it is and every step as a skip it already recorded
    (``settled``): then neither the plan's record nor the steps' final records would change a thing."""
    entry = journal.images.get(image.id)
    if entry is None or (entry.name, entry.size, entry.checksum, entry.status, entry.skipped) != (
        image.name, image.size, image.checksum, image.status, skipped
    ):  # fmt: skip
        return False
    return all(settled(image, step, entry.targets.get(step.target)) for step in steps)


def settled(image: Image, step: Step, entry: TargetEntry | None) -> bool:
    """A skip whose final record the journal already holds (``entry``), with nothing else to say (no error, no
    problem, no pending member): recording it again would change nothing."""
    if step.action is not Action.SKIP:
        return False
    state = "done" if step.reason == "up to date" else "skipped"
    return (
        entry is not None and entry.state == state and not entry.error and not entry.problems
        and not entry.pending_members and (state == "skipped" or entry.source_checksum == image.checksum)
        and (state == "done" or entry.reason == step.reason)
        and (step.existing is None or entry.target_id in (None, step.existing.id))
    )  # fmt: skip


def link_references(plan: Plan, graph: ReferenceGraph) -> Plan:
    """The plan with the references between its images (``plan.references``) taken into account, per target:

    - an image whose referenced image cannot be copied to a target is blocked there, with the reason;
    - an image that is up to date in a target where a referenced image is copied again gets a metadata step (its
      reference then follows the new copy);
    - each image included only because another references it gets a note saying so.

    The images come referenced ones first, so a chain (a machine image, its kernel, what the kernel names) is
    decided link by link, each from the steps already decided."""
    if not graph.refs:
        return plan
    by_image = {p.image.id: {s.target: s for s in p.steps} for p in plan.images}
    images = []
    for image_plan in plan.images:
        steps = []
        for step in image_plan.steps:
            for prop, target_id in graph.referenced(image_plan.image.id).items():
                other = by_image.get(target_id, {}).get(step.target)
                if other is None:
                    continue
                cannot = other.action in (Action.BLOCKED, Action.NOT_PORTABLE) or (
                    other.action is Action.SKIP and other.reason != "up to date")  # fmt: skip
                if cannot and step.action.moves_data:
                    step = Step(step.target, Action.BLOCKED, f"its {prop} names image {target_id}, which is not "
                                f"copied to {step.target}: {other.reason}", extra=step.extra)  # fmt: skip
                elif other.action.moves_data and step.action is Action.SKIP and step.reason == "up to date":
                    step = replace(step, action=Action.METADATA, reason=f"its {prop} follows the new copy of "
                                   f"image {target_id}")  # fmt: skip
            steps.append(step)
        by_image[image_plan.image.id] = {s.target: s for s in steps}
        # a step that changed is no skip the journal recorded
        recorded = image_plan.recorded and tuple(steps) == tuple(image_plan.steps)
        images.append(replace(image_plan, steps=tuple(steps), recorded=recorded))
    notes = [f"source image {image_id} is included: {why}" for image_id, why in graph.included.items()
             if image_id in by_image]  # fmt: skip
    return replace(plan, images=tuple(images), notes=(*plan.notes, *notes))


def plan_job_sliced(
    images: Sequence[Image],
    targets: Sequence[str],
    copies: Mapping[str, Sequence[Image]],
    journal: JournalState,
    copy: CopyOptions,
    meta_diff: Callable[[Image, str, Image], MetaDiff],
    *,
    enable_download: bool = False,
    pruning: bool = False,
    vanished: frozenset[str] = frozenset(),
    refusal: Callable[[Image, str], str | None] | None = None,
    volume_backed: str = "block",
    planned_one: Callable[[ImagePlan], None] | None = None,
    job: str = "",
    retired: Mapping[str, Sequence[Image]] | None = None,
    adoptable: Mapping[str, Adoptable] | None = None,
) -> Sliced[Plan]:
    """Decide every image x target from the selected ``images`` and each target's copies of this job, yielding
    between slices of images (``slices``).
    ``vanished``: sources that no longer exist; this job's unfinished copies of them are leftovers to delete.
    ``refusal(image, target)``: why a target cannot take a new copy by its own rules (that step is blocked).
    ``volume_backed``: "block" (the step fails with the reason) or "skip" for a volume-backed snapshot.
    ``planned_one(image_plan)``: told of each image as soon as it is planned.
    ``job``: the job's name (a kept copy under another name is taken over); ``retired``: each target's retired
    copies of this job; ``adoptable``: what each target holds that may be adopted (``[copy] adopt``)."""
    # each target's copies by source: one copy as itself, two or more in a list (a list per source of a catalogue
    # of 100,000 images held 13 MiB more while planning)
    by_source: dict[str, dict[str, Image | list[Image]]] = {t: {} for t in targets}
    # the selected ids, so that each copy's source id is the selected image's own string (a copy's document is
    # decoded to read it: one new string per copy otherwise)
    selected = {i.id: i.id for i in images}
    # the copies that the notes and the leftovers below are about: of a source not selected, or unfinished
    copy_sources: list[tuple[str, Image, Any]] = []
    for label in targets:
        held = by_source[label]
        for number, c in enumerate(copies.get(label, ()), start=1):
            if number % SLICE == 0:
                yield
            source_id = c.raw.get(PROV_SOURCE_ID)
            source_id = selected.get(source_id, source_id) if isinstance(source_id, str) else source_id
            if source_id not in selected or c.status in PARTIAL_STATES:
                copy_sources.append((label, c, source_id))
            if isinstance(source_id, str):
                other = held.get(source_id)
                held[source_id] = c if other is None else [*other, c] if isinstance(other, list) else [other, c]
    back: dict[str, dict[str, list[Image]]] = {t: {} for t in targets}  # retired copies by target and source
    for label in targets:
        for c in (retired or {}).get(label, ()):
            back[label].setdefault(str(c.raw.get(PROV_SOURCE_ID)), []).append(c)
    taken_notes: list[str] = []
    planned: list[ImagePlan] = []
    undigested: list[Image] = []
    labels = tuple(targets)  # one tuple that every image in sync shares
    for number, image in enumerate(images, start=1):
        if number % (SLICE // 4) == 0:  # up to 200 us an image (its metadata compared with each copy's)
            yield
        if image.status == "active" and not image.publishes_digest and skip_reason(image, copy) is None:
            undigested.append(image)
        whole = not_copied(image, copy, volume_backed)
        if whole is not None:
            action, reason = whole
            alike = tuple(Step(t, action, reason) for t in targets)
            skipped = reason if action is Action.SKIP else None
            planned.append(ImagePlan(image, alike, skipped, recorded=recorded_in_sync(image, alike, skipped, journal)))
            continue
        steps = []
        refused = inspected_refusal(image, journal, copy.allow_format_mismatch)
        for label in targets:
            entry = journal.target(image.id, label)
            found = by_source[label].get(image.id)
            step = _plan_target(image, label, [found] if isinstance(found, Image) else found or [], entry, copy,
                                meta_diff)  # fmt: skip
            if job:
                step = _taken_over(image, step, back[label].get(image.id, ()), (adoptable or {}).get(label), job,
                                   taken_notes)  # fmt: skip
            if refused is not None and step.action.moves_data:
                step = Step(label, Action.REFUSED, refused, extra=step.extra)
            blocked = refusal(image, label) if refusal is not None and step.action.moves_data else None
            steps.append(Step(label, Action.BLOCKED, blocked, extra=step.extra) if blocked else step)
        gated = not download_allowed(image) and any(s.action.moves_data for s in steps)
        if gated and not enable_download:
            why = BLOCKED_REASON.format(value=image.raw.get(ALLOW_DOWNLOAD))
            steps = [Step(s.target, Action.BLOCKED, why) if s.action.moves_data else s for s in steps]
        planned.append(
            ImagePlan(
                image,
                UpToDate.of(labels, steps),
                enable_download=gated and enable_download,
                recorded=recorded_in_sync(image, steps, None, journal),
            )
        )
        if planned_one is not None:
            planned_one(planned[-1])
    gone = [(label, c, source_id) for label, c, source_id in copy_sources
            if c.status in PARTIAL_STATES and source_id in vanished]  # fmt: skip
    leftovers = tuple((label, c) for label, c, _ in gone)
    swept = {c.id for _, c in leftovers}
    notes = [
        f"{label}: copy {c.id} of source image {source_id} is no longer selected; left in place"
        for label, c, source_id in copy_sources if source_id not in selected and c.id not in swept
    ] if not pruning else []  # fmt: skip
    notes += [f"{label}: copy {c.id} ({c.status}) of source image {source_id}, which no longer "
              "exists, is deleted: it never held a verified copy" for label, c, source_id in gone]  # fmt: skip
    notes += [
        f"source image {p.image.id} ({p.image.name}): nhncloud_allow_download is switched on while it is read "
        f"and set back to {p.image.raw.get(ALLOW_DOWNLOAD)!r} afterwards ([source] enable_download)"
        for p in planned if p.enable_download
    ]  # fmt: skip
    notes += [
        f"source image {i.id} ({i.name}) publishes no checksum: its copies are judged by size and the digests "
        "journalled when they were made"
        for i in undigested
    ]  # fmt: skip
    notes += taken_notes
    restored = {s.existing.id for p in planned if not p.in_sync for s in p.steps
                if s.action is Action.RESTORE and s.existing is not None}  # fmt: skip
    still = tuple(Retired(label, c, str(c.raw.get(PROV_SOURCE_ID)), retired_at(c) or 0.0) for label in targets
                  for c in (retired or {}).get(label, ()) if c.id not in restored)  # fmt: skip
    return Plan(tuple(planned), tuple(targets), tuple(notes), leftovers=leftovers, retired=still)


#: ``plan_job_sliced`` in one go.
plan_job = drained(plan_job_sliced)
