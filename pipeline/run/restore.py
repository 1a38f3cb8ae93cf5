"""``imgmig restore``: bring back, by hand, copies of a job that a grace-period prune retired.

A retired copy is reactivated (where it was deactivated), its ``imgmig_retired_at`` marker removed and its
``os_hidden`` set back to its source's (false when the source is gone), the same writes a run makes when a source
comes back. Each is journalled. The copy stays this job's: while its source is not selected, the next run with
prune on retires it again (select its source again, or switch prune off, to keep it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.cloud.client import ImageClient
from pipeline.cloud.transport import new_session
from pipeline.config import JobSpec
from pipeline.errors import ApiError, NotFoundError, UsageError
from pipeline.models import Image
from pipeline.plan.provenance import PROV_RETIRED_AT, PROV_SOURCE_ID, iso_time, retired_at
from pipeline.run.inventory import Clients, retired_copies, retry_policy, transport_config
from pipeline.state.journal import Journal
from pipeline.state.lock import JobLock
from pipeline.transfer.copies import patch_replayed, reactivated

__all__ = ["Restored", "restore_job"]


@dataclass
class Restored:
    """What ``imgmig restore`` did: one row per retired copy it was asked for."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(row["state"] == "restored" for row in self.rows)

    def to_json(self) -> dict[str, Any]:
        return {"restored": [r for r in self.rows if r["state"] == "restored"],
                "failed": [r for r in self.rows if r["state"] != "restored"]}  # fmt: skip


def _wanted(copy: Image, names: Sequence[str]) -> bool:
    """Whether ``copy`` is one the command line names: by its source's id, its own id or its name (none: all)."""
    return not names or any(n in (copy.raw.get(PROV_SOURCE_ID), copy.id, copy.name) for n in names)


async def restore_job(spec: JobSpec, names: Sequence[str]) -> Restored:
    """Restore the retired copies of ``spec`` that ``names`` name (all of them when empty), under the job's lock.
    A name that matches no retired copy is a usage error (exit 2), before anything is written."""
    report = Restored()
    with JobLock(spec.run.journal_dir, spec.name).held():
        journal = Journal.open(spec.run.journal_dir, spec.name)
        try:
            async with new_session(transport_config(spec)) as session:
                clients = Clients(spec, session, retry_policy(spec))
                targets = await retired_copies(spec, clients)
                chosen = [(label, c) for label, t in targets.items() for c in t.retired if _wanted(c, names)]
                unknown = [n for n in names if not any(_wanted(c, [n]) for _, c in chosen)]
                if unknown:
                    held = [f"{label}: {c.id} ({c.name}, source {c.raw.get(PROV_SOURCE_ID)})" for label, t in
                            targets.items() for c in t.retired]  # fmt: skip
                    raise UsageError(f"no retired copy of job {spec.name!r} matches {', '.join(map(repr, unknown))}"
                                     " (a source id, a copy id or a copy name). Retired copies: "
                                     + ("; ".join(held) or "none"))  # fmt: skip
                source = clients.client(spec.source.auth, spec.source.region)
                for label, copy in chosen:
                    row = await _restore_one(targets[label].client, source, copy)
                    row["target"] = label
                    report.rows.append(row)
                    if row["state"] == "restored":
                        journal.record("restored", image_id=row["source_id"], region=label, target_id=copy.id)
                        journal.release(row["source_id"])
            journal.sync()
        finally:
            journal.close()
    return report


async def _restore_one(client: ImageClient, source: ImageClient, copy: Image) -> dict[str, Any]:
    source_id = str(copy.raw.get(PROV_SOURCE_ID))
    row: dict[str, Any] = {"source_id": source_id, "target_id": copy.id, "name": copy.name,
                           "retired_at": iso_time(retired_at(copy) or 0.0)}  # fmt: skip
    try:
        try:
            hidden = (await source.get_image(source_id)).raw.get("os_hidden") is True
        except NotFoundError:
            hidden = False  # the source is gone (why a copy is restored by hand): the copy is shown again
        current = await reactivated(client, copy)
        ops: list[dict[str, Any]] = []
        if PROV_RETIRED_AT in current.raw:
            ops.append({"op": "remove", "path": f"/{PROV_RETIRED_AT}"})
        if current.raw.get("os_hidden") is not hidden:
            ops.append({"op": "replace", "path": "/os_hidden", "value": hidden})
        if ops:
            await patch_replayed(client, copy.id, ops)
    except ApiError as exc:
        row.update(state="failed", error=str(exc))
        return row
    row["state"] = "restored"
    return row
