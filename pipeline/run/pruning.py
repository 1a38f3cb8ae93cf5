"""``[prune]``, the writes: delete the copies the plan marked, or with ``[prune] grace`` retire them (marked with
``imgmig_retired_at``, hidden, deactivated where the target allows it: ``copies.retire``) and delete them after the
grace period.

Every write re-checks the copy's provenance on the image itself first, and each is safe to send twice: a retirement
that is replayed (a lost answer, a crash between its writes) finds what is done and does the rest.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import structlog

from pipeline.errors import ApiError, NotFoundError
from pipeline.plan.provenance import iso_time
from pipeline.plan.prune import Deletion
from pipeline.state.failpoints import failpoint
from pipeline.transfer.copies import delete_copy, retire

if TYPE_CHECKING:
    from pipeline.run.images import Running

__all__ = ["prune"]

log = structlog.get_logger("imgmig")


async def prune(run: Running) -> None:
    """``[prune]``: delete (or retire) the copies the plan marked, delete the retired copies whose grace period is
    over, complete the retirements a crash cut short; or record why none may go. Each delete re-checks the
    provenance on the image itself (``delete_copy``) and unprotects a protected copy first."""
    pruning = run.plan.prune
    if pruning is None:
        return
    for kept in pruning.kept:
        log.warning("prune_kept_protected", target=kept.target, target_image=kept.copy.id, source_id=kept.source_id,
                    message="protected copy kept ([prune] prune_protected = false)")  # fmt: skip
    for kept in pruning.kept_adopted:
        log.info("prune_kept_adopted", target=kept.target, target_image=kept.copy.id, source_id=kept.source_id,
                 message="adopted copy kept ([prune] adopted = false)")  # fmt: skip
    if pruning.refused is not None:
        run.summary.prune_refused = pruning.refused
        log.error("prune_refused", job=run.spec.name, reason=pruning.refused)
        return
    now = time.time()
    for deletion in pruning.deletions:
        await _one(run, deletion, retiring=pruning.retires, now=now)
    for deletion in pruning.unfinished:
        await _one(run, deletion, retiring=True, now=now, counted=False)
    for deletion in pruning.expired:
        await _one(run, deletion, retiring=False, now=now, expired=True)


async def _one(run: Running, deletion: Deletion, *, retiring: bool, now: float, counted: bool = True,
               expired: bool = False) -> None:  # fmt: skip
    target = run.inventory.targets[deletion.target]
    where = f"{deletion.target}: copy {deletion.copy.id} of source {deletion.source_id}"
    try:
        if retiring:
            done = await retire(target.client, deletion.copy, run.spec.names,
                                deactivate=run.intent.deactivates(deletion.target), now=now)  # fmt: skip
        else:
            done = await delete_copy(target.client, deletion.copy, run.spec.names)
    except NotFoundError:
        return  # deleted meanwhile (a retirement's read, or a replayed DELETE's read): nothing is left to do
    except ApiError as exc:
        run.summary.prune_failed.append(f"{where}: {exc}")
        return
    if not done:
        return  # no longer carries this job's provenance: never touched
    failpoint("pruned")
    fields = {"retired": deletion.copy.id} if retiring else {"deleted": deletion.copy.id}
    run.journal.record("pruned", image_id=deletion.source_id, region=deletion.target, **fields)
    run.journal.release(deletion.source_id)
    if counted or expired:
        doc = deletion.to_json()
        if retiring:
            doc["retired"] = True
            doc["delete_after"] = iso_time(now + (run.spec.prune.grace or 0.0))
        if expired:
            doc["expired"] = True
        run.summary.pruned.append(doc)
