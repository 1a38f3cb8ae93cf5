"""What a job wants for each image x target, given what discovery found: desired metadata, the property
keys this job manages (from the journal), metadata diffs, and the plan built from them. Pure.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Protocol

from pipeline.config import JobSpec
from pipeline.models import Image, Member
from pipeline.plan.adoption import Adoptable
from pipeline.plan.metadiff import Desired, MetaDiff, desired_metadata, diff_metadata
from pipeline.plan.planner import ImagePlan, Plan, kept_copy, link_references, plan_job_sliced
from pipeline.plan.provenance import PROV_ADOPTED, PROV_SOURCE_ID, is_adopted, provenance
from pipeline.plan.prune import plan_prune
from pipeline.plan.references import ReferenceGraph
from pipeline.slices import Sliced, drain
from pipeline.state.records import JournalState

__all__ = ["Discovered", "DiscoveredTarget", "Intent"]


class DiscoveredTarget(Protocol):
    """What discovery found in one target (``run.inventory.TargetState`` is one)."""

    @property
    def tenant_id(self) -> str | None: ...

    @property
    def copies(self) -> Sequence[Image]: ...

    @property
    def retired(self) -> Sequence[Image]: ...

    @property
    def adoptable(self) -> Adoptable | None: ...

    @property
    def members(self) -> Mapping[str, list[Member]]: ...

    @property
    def read_only(self) -> frozenset[str]: ...

    @property
    def disk_formats(self) -> frozenset[str] | None: ...

    @property
    def container_formats(self) -> frozenset[str] | None: ...

    @property
    def error(self) -> str | None: ...

    @property
    def nhn_cloud(self) -> bool: ...


class Discovered(Protocol):
    """What discovery found (``run.inventory.Inventory`` is one): read here, never fetched."""

    @property
    def images(self) -> Sequence[Image]: ...

    @property
    def source_members(self) -> Mapping[str, list[Member]]: ...

    @property
    def targets(self) -> Mapping[str, DiscoveredTarget]: ...

    @property
    def vanished_sources(self) -> frozenset[str]: ...

    @property
    def references(self) -> ReferenceGraph: ...


#: Visibilities from the narrowest: an adopted copy's is never narrowed.
_RANK = {"private": 0, "shared": 1, "community": 2, "public": 3}


class Intent:
    """Desired state per image x target, cached; ``plan()`` decides every step."""

    def __init__(self, spec: JobSpec, inventory: Discovered, state: JournalState) -> None:
        self.spec = spec
        self.inventory = inventory
        self.state = state
        self._desired: dict[tuple[str, str], Desired] = {}
        self._targets = spec.labelled_targets()
        self.references = inventory.references
        self._dependents = self.references.dependents()
        #: target label -> source id -> the id of its copy there, for every referenced image: what a reference
        #: is rewritten to (the kept copies found by discovery, then each copy this run finishes).
        self._copy_ids = self._kept_copies(set(self._dependents))

    def _kept_copies(self, wanted: set[str]) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {label: {} for label in self.inventory.targets}
        if not wanted:
            return out
        images = [image for image in self.inventory.images if image.id in wanted]
        for label, target in self.inventory.targets.items():
            for image in images:
                mine = [c for c in target.copies if c.raw.get(PROV_SOURCE_ID) == image.id]
                keep = kept_copy(image, mine, self.state.target(image.id, label))
                if keep is not None:
                    out[label][image.id] = keep.id
        return out

    def copied(self, source_id: str, label: str, copy_id: str) -> None:
        """``source_id`` now has its copy ``copy_id`` in ``label``: the references to it follow."""
        if source_id not in self._dependents:  # nothing refers to it: nothing to follow (and nothing to hold)
            return
        if self._copy_ids.setdefault(label, {}).get(source_id) == copy_id:
            return
        self._copy_ids[label][source_id] = copy_id
        for referrer in self._dependents.get(source_id, ()):
            self._desired.pop((referrer, label), None)

    def missing_references(self, image: Image, label: str) -> list[str]:
        """The references of ``image`` that name an image without a copy in ``label`` (yet): no copy of it may be
        created there, it would point into the source region."""
        refs = self.references.mapped(image.id, self._copy_ids.get(label, {}))
        return [f"its {prop} names image {self.references.referenced(image.id)[prop]}, which has no copy in {label}"
                for prop, copy_id in refs.items() if copy_id is None]  # fmt: skip

    def desired(self, image: Image, label: str) -> Desired:
        key = (image.id, label)
        if key not in self._desired:
            target, rules = self.inventory.targets[label], self._targets[label]
            prov = provenance(self.spec.name, self.spec.source.region, image)
            self._desired[key] = desired_metadata(
                image, self.inventory.source_members.get(image.id), self.spec.copy, prov,
                target.read_only or frozenset(), target_tenant=target.tenant_id,
                required=self.spec.required_properties(rules, nhn_cloud=target.nhn_cloud),
                defaults=self.spec.defaults(rules),
                references=self.references.mapped(image.id, self._copy_ids.get(label, {})),
            )  # fmt: skip
        return self._desired[key]

    def refusal(self, image: Image, label: str) -> str | None:
        """Why ``label`` cannot take a new copy of ``image`` by its own rules, before any byte moves: a property it
        requires that the source lacks and no default gives, or a format its schema does not list; or a reference
        of the image that cannot be resolved."""
        unresolved = self.references.unresolved.get(image.id)
        if unresolved is not None:
            return unresolved
        missing = self.desired(image, label).missing
        if missing:
            names = ", ".join(missing)
            example = ", ".join(f'{key} = "..."' for key in missing)
            return (f"target {label} requires {names} on create, and the source image has no value for it: set "
                    f"[copy] defaults = {{ {example} }} (or [[targets]] defaults for this target) to give its copies "
                    "one")  # fmt: skip
        target = self.inventory.targets[label]
        for field, allowed in (("disk_format", target.disk_formats), ("container_format", target.container_formats)):
            value = image.raw.get(field)
            if allowed is not None and isinstance(value, str) and value not in allowed:
                return (f"target {label} does not accept {field} {value!r} (its image schema lists "
                        f"{', '.join(sorted(allowed))})")  # fmt: skip
        return None

    def managed(self, image: Image, label: str) -> list[str]:
        """Property keys this job set on that copy before (only those may be removed)."""
        entry = self.state.target(image.id, label)
        if entry is None or not entry.metadata:
            return []
        return [k for k in entry.metadata.split(",") if k]

    def diff(
        self, image: Image, label: str, copy: Image, members: Sequence[Member] | None = None, *, adopting: bool = False
    ) -> MetaDiff:
        """Changes that bring ``copy`` to the desired metadata (members from discovery unless given). An adopted
        copy (or one being adopted: ``adopting``) is marked ``imgmig_adopted`` and only ever added to: nothing it
        had is removed, its visibility is never narrowed and its protection never lifted, so nobody loses access
        (or a safeguard) they had."""
        if members is None:
            members = self.inventory.targets[label].members.get(copy.id)
        desired = self.desired(image, label)
        adopted = adopting or is_adopted(copy)
        if adopted:
            visibility = copy.visibility if _RANK.get(copy.visibility or "", 0) > _RANK[desired.visibility] else None
            desired = replace(desired, properties={**desired.properties, PROV_ADOPTED: "true"},
                              visibility=visibility or desired.visibility,
                              protected=desired.protected or copy.protected)  # fmt: skip
        return diff_metadata(desired, copy, members, managed=self.managed(image, label),
                             additive=self.spec.copy.additive or adopted,
                             keep=self.references.referenced(image.id))  # fmt: skip

    def deactivates(self, label: str) -> bool:
        """Whether a retirement deactivates the copies in ``label`` (``[prune] deactivate``; "auto": where the
        target is not NHN Cloud, whose guide documents no deactivation)."""
        wanted = self.spec.prune.deactivate
        if isinstance(wanted, bool):
            return wanted
        return not self.spec.is_nhn(self._targets[label], nhn_cloud=self.inventory.targets[label].nhn_cloud)

    def plan(self) -> Plan:
        return drain(self.plan_sliced())

    def forget(self, image_id: str) -> None:
        """The run is done with this image: its desired metadata is let go."""
        for label in self.inventory.targets:
            self._desired.pop((image_id, label), None)

    def _settled(self, image_plan: ImagePlan) -> None:
        """An image's desired metadata is let go as soon as the image is planned (its steps hold what planning made
        of it; held to the end of planning, it peaked at a kilobyte per image x target). Kept for an image that
        references another or is referenced: ``link_references`` may plan those again."""
        image_id = image_plan.image.id
        if image_id in self._dependents or self.references.referenced(image_id):
            return
        for step in image_plan.steps:
            self._desired.pop((image_id, step.target), None)

    def plan_sliced(self) -> Sliced[Plan]:
        """The plan, made a slice of images at a time (``slices``)."""
        inventory = self.inventory
        targets = inventory.targets
        available = [label for label, t in targets.items() if t.error is None]
        copies = {label: t.copies for label, t in inventory.targets.items() if t.error is None}
        pruning = self.spec.prune.enabled
        plan = yield from plan_job_sliced(inventory.images, available, copies, self.state, self.spec.copy,
                                          lambda image, label, copy: self.diff(image, label, copy),
                                          enable_download=self.spec.source.enable_download, pruning=pruning,
                                          vanished=inventory.vanished_sources, refusal=self.refusal,
                                          volume_backed=self.spec.select.volume_backed,
                                          planned_one=self._settled, job=self.spec.name,
                                          retired={label: targets[label].retired for label in available},
                                          adoptable={label: a for label in available
                                                     if (a := targets[label].adoptable) is not None})  # fmt: skip
        plan = link_references(plan, self.references)
        # the desired metadata is worked out again when an image's copy is made (its steps have what planning
        # needed): held from planning to the end of the run, it took a kilobyte per image x target
        self._desired.clear()
        if not pruning:
            return plan
        selected = {image.id for image in inventory.images}
        swept = {copy.id for _, copy in plan.leftovers}  # the sweep deletes those: prune does not count them twice
        kept = {label: [c for c in found if c.id not in swept] for label, found in copies.items()}
        return replace(
            plan,
            prune=plan_prune(
                self.spec.prune,
                selected,
                kept,
                self.state.selected,
                retired=plan.retired,
                now=time.time(),
                deactivates=self.deactivates,
            ),
        )
