"""Applying metadata to a copy through the client, one refusal at a time: one PATCH for everything, and when
the target refuses it, the image is re-read and each change that does not hold yet is sent alone (so a
replayed request is harmless), then tags, members (and their acceptance) and protection last.

Only a refusal (400, 403, 409, 413: the target will not take this change) becomes a per-item problem on an
otherwise fine copy. A failing server (5xx, the connection) is retried like any request that can be sent
again; when that does not help, the error leaves ``apply_metadata`` and the step fails.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.cloud.client import ImageClient
from pipeline.errors import (
    ApiError,
    BadRequestError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    PayloadTooLargeError,
)
from pipeline.models import Image
from pipeline.plan.metadiff import Desired, MetaDiff
from pipeline.plan.provenance import PROVENANCE_PREFIX
from pipeline.state.failpoints import failpoint
from pipeline.transfer.copies import in_effect

__all__ = ["SyncReport", "apply_metadata"]

#: A target's answers that refuse one change; anything else (a 5xx, the connection) is not a refusal.
_REFUSED = (BadRequestError, ForbiddenError, PayloadTooLargeError, ConflictError)


@dataclass
class SyncReport:
    """What applying metadata did: problems are per-field refusals; the image itself is still fine."""

    changed: bool = False
    problems: list[str] = field(default_factory=list)
    pending_members: list[str] = field(default_factory=list)
    managed: list[str] = field(default_factory=list)


async def _patch_each(client: ImageClient, image_id: str, ops: Sequence[dict[str, Any]], report: SyncReport) -> None:
    """One PATCH for all ops; if the target refuses it, re-read the image and send only what does not hold
    yet, op by op, reporting each refusal. Re-diffing first makes a replay harmless: when the answer to an
    earlier PATCH was lost and the client sent it again, a ``remove`` or ``replace`` of what is already
    gone gets a 409 that is not a refusal at all."""
    if not ops:
        return
    try:
        await client.update_image(image_id, ops)
        report.changed = True
        return
    except _REFUSED:
        pass
    current = await client.get_image(image_id)
    for op in ops:
        if in_effect(op, current):
            report.changed = True
            continue
        try:
            current = await client.update_image(image_id, [op])
            report.changed = True
        except _REFUSED as exc:
            current = await client.get_image(image_id)
            if in_effect(op, current):  # a replay of this very op took effect: not a refusal
                report.changed = True
                continue
            report.problems.append(f"property {op['path'][1:]!r} refused by target: {_short(exc.message, 200)}")


async def apply_metadata(
    client: ImageClient,
    target: Image,
    desired: Desired,
    diff: MetaDiff,
    *,
    acceptors: Mapping[str, ImageClient] | None = None,
) -> SyncReport:
    """Apply ``diff`` to ``target``: unprotect if needed, properties, tags, members, protection last."""
    report = SyncReport(managed=sorted(k for k in desired.properties if not k.startswith(PROVENANCE_PREFIX)))
    if diff.empty and not _accept_needed(desired, acceptors):
        return report
    image_id = target.id
    if target.protected and not diff.empty:
        # NHN: a protected image cannot be modified; lift protection for the change, restore it last
        await client.update_image(image_id, [{"op": "replace", "path": "/protected", "value": False}])
        report.changed = True
    await _patch_each(client, image_id, diff.ops, report)
    failpoint("metadata")
    await _apply_tags(client, image_id, desired, diff, report)
    await _apply_members(client, image_id, desired, diff, report, acceptors or {})
    final = desired.protected
    if final and (target.protected is False or diff.protect is not None or not diff.empty):
        await client.update_image(image_id, [{"op": "replace", "path": "/protected", "value": True}])
        report.changed = True
    elif not final and target.protected:
        report.changed = True  # lifted above and intentionally not restored
    return report


async def _apply_tags(client: ImageClient, image_id: str, desired: Desired, diff: MetaDiff, report: SyncReport) -> None:
    if not diff.add_tags and not diff.remove_tags:
        return
    current = (await client.get_image(image_id)).tags
    wanted = [t for t in current if t not in diff.remove_tags] + [t for t in diff.add_tags if t not in current]
    try:
        await client.set_tags(image_id, wanted)
        report.changed = True
        return
    except _REFUSED:
        pass
    await _one_by_one(report, diff.remove_tags, lambda tag: client.delete_tag(image_id, tag), already=NotFoundError,
                      refused=_REFUSED, problem=lambda tag, why: f"tag {_short(tag)!r} could not be removed: "
                      f"{_short(why, 200)}")  # fmt: skip
    await _one_by_one(report, diff.add_tags, lambda tag: client.add_tag(image_id, tag), already=(),
                      refused=_REFUSED, problem=lambda tag, why: f"tag {_short(tag)!r} refused by target: "
                      f"{_short(why, 200)}")  # fmt: skip


async def _one_by_one(
    report: SyncReport, items: Iterable[str], change: Callable[[str], Awaitable[object]], *,
    already: type[ApiError] | tuple[type[ApiError], ...], refused: type[ApiError] | tuple[type[ApiError], ...],
    problem: Callable[[str, str], str],
) -> None:  # fmt: skip
    """Apply ``change`` to each item. ``already`` means the change is in place (a replayed request whose first
    answer was lost: a DELETE's 404, a member POST's 409); ``refused`` is reported as ``problem(item, why)``."""
    for item in items:
        try:
            await change(item)
        except already:
            pass
        except refused as exc:
            report.problems.append(problem(item, exc.message))
            continue
        report.changed = True


def _accept_needed(desired: Desired, acceptors: Mapping[str, ImageClient] | None) -> bool:
    return bool(acceptors) and any(s == "accepted" and m in (acceptors or {}) for m, s in desired.members.items())


async def _apply_members(
    client: ImageClient, image_id: str, desired: Desired, diff: MetaDiff, report: SyncReport,
    acceptors: Mapping[str, ImageClient],
) -> None:  # fmt: skip
    await _one_by_one(report, diff.remove_members, lambda member: client.delete_member(image_id, member),
                      already=NotFoundError, refused=_REFUSED,
                      problem=lambda member, why: f"member {member} could not be removed: {why}")  # fmt: skip
    await _one_by_one(report, diff.add_members, lambda member: client.add_member(image_id, member),
                      already=ConflictError, refused=_REFUSED,
                      problem=lambda member, why: f"member {member} could not be added: {why}")  # fmt: skip
    for member, status in sorted(desired.members.items()):
        if status != "accepted":
            continue
        acceptor = acceptors.get(member)
        if acceptor is None:
            report.pending_members.append(member)
            continue
        try:
            current = await acceptor.get_member(image_id, member)
            if current.status != "accepted":
                await acceptor.update_member_status(image_id, member, "accepted")
                report.changed = True
        except (*_REFUSED, NotFoundError) as exc:  # the member's tenant may not see or accept it
            report.problems.append(f"member {member} could not accept: {exc.message}")
            report.pending_members.append(member)


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
