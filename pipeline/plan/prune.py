"""Pruning a mirror, the decision: which of this job's copies to delete because their source is no longer
selected or no longer exists, and when to refuse to delete anything at all. Pure.

Only copies that discovery found for this job (``imgmig_job`` provenance, re-checked on the image itself, and
in this shard's partition) are candidates; the runner re-checks the provenance once more before each delete.
Nothing is deleted when:

- the selection is empty (a broken source or a wrong scope must never empty a DR site);
- it shrank by more than ``max_shrink`` since the last run the journal recorded;
- more copies would go than ``max_delete`` (then the plan says how many, and why none went).

A protected copy is deleted (after unprotecting it) only with ``prune_protected = true``; otherwise it is
kept and the plan says so. An adopted copy (``[copy] adopt``) is deleted only with ``[prune] adopted = true``.

With ``[prune] grace``, a copy is retired instead of deleted (``imgmig_retired_at``, hidden, deactivated where the
target allows it), and deleted by the first run after the grace period (``expired``). A retirement counts against
``max_delete`` and ``max_shrink`` once; its deletion after the grace does not count again. A retirement that a crash
cut short (marked, but not hidden or not deactivated yet) is completed (``unfinished``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.config import PruneOptions
from pipeline.models import Image
from pipeline.plan.provenance import PROV_SOURCE_ID, is_adopted, iso_time

__all__ = ["Deletion", "PrunePlan", "Retired", "plan_prune", "retirement_done"]


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
class Retired:
    """A copy of this job that a grace-period prune retired, and when (seconds since the epoch)."""

    target: str
    copy: Image
    source_id: str
    at: float

    def deleted_after(self, grace: float | None) -> float:
        """When a run deletes it: at once without a grace period."""
        return self.at + (grace or 0.0)

    def to_json(self, grace: float | None = None) -> dict[str, Any]:
        return {"target": self.target, "target_id": self.copy.id, "name": self.copy.name,
                "source_id": self.source_id, "retired_at": iso_time(self.at),
                "delete_after": iso_time(self.deleted_after(grace))}  # fmt: skip


def retirement_done(copy: Image, deactivates: bool) -> bool:
    """Whether a retired copy is as a retirement leaves it: hidden, and deactivated where the target allows it (only
    an active image can be deactivated: an unfinished upload stays as it is)."""
    return copy.raw.get("os_hidden") is True and (not deactivates or copy.status != "active")


@dataclass(frozen=True, slots=True)
class PrunePlan:
    """The deletions a run would make, the protected copies it keeps, and why it deletes nothing (if so)."""

    deletions: tuple[Deletion, ...] = ()
    kept: tuple[Deletion, ...] = ()
    #: Set when nothing may be deleted this run; the deletions are still listed, for the operator.
    refused: str | None = None
    #: ``[prune] grace``: the deletions are retirements, and this long later the retired copies are deleted.
    grace: float | None = None
    #: Retired copies whose grace period is over: deleted (not counted against max_delete again).
    expired: tuple[Deletion, ...] = ()
    #: Retired copies whose retirement a crash cut short: completed.
    unfinished: tuple[Deletion, ...] = ()
    #: Adopted copies not deleted (``[prune] adopted = false``).
    kept_adopted: tuple[Deletion, ...] = ()

    @property
    def retires(self) -> bool:
        return self.grace is not None

    def to_json(self) -> dict[str, Any]:
        return {"deletions": [d.to_json() for d in self.deletions], "kept_protected": [d.to_json() for d in self.kept],
                "refused": self.refused, "retire": self.retires, "grace_seconds": self.grace,
                "expired": [d.to_json() for d in self.expired], "unfinished": [d.to_json() for d in self.unfinished],
                "kept_adopted": [d.to_json() for d in self.kept_adopted]}  # fmt: skip


def plan_prune(
    options: PruneOptions,
    selected: Collection[str],
    copies: Mapping[str, Sequence[Image]],
    previous_selected: int | None,
    *,
    retired: Sequence[Retired] = (),
    now: float = 0.0,
    deactivates: Callable[[str], bool] = lambda label: False,
) -> PrunePlan:
    """The prune of one run: ``selected`` are the source ids selected now, ``copies`` this job's copies per
    target label (retired ones not among them), ``previous_selected`` how many sources the last recorded run
    selected (None: no record); ``retired``: the retired copies not restored by this run, ``now`` the time, and
    ``deactivates(label)`` whether a retirement deactivates copies in that target."""
    doomed: list[Deletion] = []
    kept: list[Deletion] = []
    adopted: list[Deletion] = []
    for label, found in copies.items():
        for copy in found:
            source_id = copy.raw.get(PROV_SOURCE_ID)
            if not isinstance(source_id, str) or source_id in selected:
                continue
            deletion = Deletion(label, copy, source_id)
            if is_adopted(copy) and not options.adopted:
                adopted.append(deletion)
            else:
                (kept if copy.protected and not options.prune_protected else doomed).append(deletion)
    expired, unfinished = [], []
    for old in retired:
        deletion = Deletion(old.target, old.copy, old.source_id)
        if old.copy.protected and not options.prune_protected:
            kept.append(deletion)
        elif now >= old.deleted_after(options.grace):
            expired.append(deletion)
        elif not retirement_done(old.copy, deactivates(old.target)):
            unfinished.append(deletion)
    refused = None
    if (doomed or expired) and not selected:
        refused = (f"the source selection is empty: refusing to delete {len(doomed) + len(expired)} copies (a broken "
                   "source or a wrong scope must never empty a mirror)")  # fmt: skip
    elif doomed and previous_selected and len(selected) < previous_selected * (1 - options.max_shrink):
        shrink = 1 - len(selected) / previous_selected
        refused = (f"the source selection shrank from {previous_selected} to {len(selected)} images ({shrink:.0%}), "
                   f"more than [prune] max_shrink = {options.max_shrink:.0%}: refusing to delete "
                   f"{len(doomed)} copies")  # fmt: skip
    elif options.max_delete is not None and len(doomed) > options.max_delete:
        refused = (f"{len(doomed)} copies would be deleted, more than [prune] max_delete = {options.max_delete}: "
                   "nothing deleted (raise max_delete if these deletions are intended)")  # fmt: skip
    return PrunePlan(tuple(doomed), tuple(kept), refused, options.grace, tuple(expired), tuple(unfinished),
                     tuple(adopted))  # fmt: skip
