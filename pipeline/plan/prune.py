"""Pruning a mirror, the decision: which of this job's copies to delete because their source is no longer
selected or no longer exists, and when to refuse to delete anything at all. Pure.

Only copies that discovery found for this job (``imgmig_job`` provenance, re-checked on the image itself, and
in this shard's partition) are candidates; the runner re-checks the provenance once more before each delete.
Nothing is deleted when:

- the selection is empty (a broken source or a wrong scope must never empty a DR site);
- it shrank by more than ``max_shrink`` since the last run the journal recorded;
- more copies would go than ``max_delete`` (then the plan says how many, and why none went).

A protected copy is deleted (after unprotecting it) only with ``prune_protected = true``; otherwise it is
kept and the plan says so.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.config import PruneOptions
from pipeline.models import Image
from pipeline.plan.provenance import PROV_SOURCE_ID

__all__ = ["Deletion", "PrunePlan", "plan_prune"]


@dataclass(frozen=True, slots=True)
class Deletion:
    """One copy to delete from one target."""

    target: str
    copy: Image
    source_id: str

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "target_id": self.copy.id, "name": self.copy.name,
                "source_id": self.source_id, "protected": self.copy.protected}  # fmt: skip


@dataclass(frozen=True, slots=True)
class PrunePlan:
    """The deletions a run would make, the protected copies it keeps, and why it deletes nothing (if so)."""

    deletions: tuple[Deletion, ...] = ()
    kept: tuple[Deletion, ...] = ()
    #: Set when nothing may be deleted this run; the deletions are still listed, for the operator.
    refused: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"deletions": [d.to_json() for d in self.deletions], "kept_protected": [d.to_json() for d in self.kept],
                "refused": self.refused}  # fmt: skip


def plan_prune(
    options: PruneOptions,
    selected: Collection[str],
    copies: Mapping[str, Sequence[Image]],
    previous_selected: int | None,
) -> PrunePlan:
    """The prune of one run: ``selected`` are the source ids selected now, ``copies`` this job's copies per
    target label, ``previous_selected`` how many sources the last recorded run selected (None: no record)."""
    doomed: list[Deletion] = []
    kept: list[Deletion] = []
    for label, found in copies.items():
        for copy in found:
            source_id = copy.raw.get(PROV_SOURCE_ID)
            if not isinstance(source_id, str) or source_id in selected:
                continue
            deletion = Deletion(label, copy, source_id)
            (kept if copy.protected and not options.prune_protected else doomed).append(deletion)
    refused = None
    if doomed and not selected:
        refused = (f"the source selection is empty: refusing to delete {len(doomed)} copies (a broken source or "
                   "a wrong scope must never empty a mirror)")  # fmt: skip
    elif doomed and previous_selected and len(selected) < previous_selected * (1 - options.max_shrink):
        shrink = 1 - len(selected) / previous_selected
        refused = (f"the source selection shrank from {previous_selected} to {len(selected)} images ({shrink:.0%}), "
                   f"more than [prune] max_shrink = {options.max_shrink:.0%}: refusing to delete "
                   f"{len(doomed)} copies")  # fmt: skip
    elif options.max_delete is not None and len(doomed) > options.max_delete:
        refused = (f"{len(doomed)} copies would be deleted, more than [prune] max_delete = {options.max_delete}: "
                   "nothing deleted (raise max_delete if these deletions are intended)")  # fmt: skip
    return PrunePlan(tuple(doomed), tuple(kept), refused)
