"""Image members (/v2/images/{id}/members): sharing an image with other tenants, as Glance 33 does it.

Each function follows Glance's ``image_members`` controller step by step (body check, image lookup,
"only shared images have members", member lookup, policy), because the order decides which error a
request with several problems gets.
"""

from __future__ import annotations

from typing import Any

from .fields import MAX_MEMBERS, GlanceError
from .store import Caller, ImageRecord, MemberRecord, RegionStore, check_policy, iso_now

__all__ = [
    "MEMBER_STATUSES",
    "add_member",
    "delete_member",
    "get_member",
    "list_members",
    "member_from_body",
    "member_json",
    "status_from_body",
    "update_member",
]

MEMBER_STATUSES = ("pending", "accepted", "rejected")
_NOT_FOUND = "Image {} not found."


def member_from_body(body: Any) -> Any:
    """The ``member`` of a POST body, or Glance's 400 (checked before the image is looked up)."""
    if not isinstance(body, dict):
        raise GlanceError(400, 'Expected a member in the form: {"member": "image_id"}')
    if "member" not in body:
        raise GlanceError(400, "Member to be added not specified")
    if not body["member"]:
        raise GlanceError(400, "Member can't be empty")
    return body["member"]


def status_from_body(body: Any) -> Any:
    """The ``status`` of a PUT body, or Glance's 400 (checked before the image is looked up)."""
    if not isinstance(body, dict):
        raise GlanceError(400, 'Expected a status in the form: {"status": "status"}')
    if "status" not in body:
        raise GlanceError(400, "Status not specified")
    return body["status"]


def _shared(store: RegionStore, image_id: str, caller: Caller, refusal: str) -> ImageRecord:
    rec = store.visible(image_id, caller, _NOT_FOUND)
    if rec.visibility != "shared":
        raise GlanceError(403, refusal.format(image_id))
    return rec


def _lookup(rec: ImageRecord, member_id: str, caller: Caller) -> MemberRecord:
    member = rec.members.get(member_id)
    # a member tenant sees only its own membership
    if member is None or (rec.owner != caller.tenant_id and member_id != caller.tenant_id):
        raise GlanceError(404, f"{member_id} not found in the member list of the image {rec.id}.")
    return member


def add_member(store: RegionStore, image_id: str, member_id: Any, caller: Caller) -> MemberRecord:
    """POST: the owner shares a shared image with ``member_id`` (any value; Glance does not check it)."""
    rec = _shared(store, image_id, caller, "Not allowed to create members for image {}.")
    check_policy(rec, caller, "add_member")
    key = str(member_id)
    if key in rec.members:
        raise GlanceError(409, f"Member {member_id} is duplicated for image {image_id}")
    if len(rec.members) >= MAX_MEMBERS:
        raise GlanceError(413, f"Image member limit exceeded for image {image_id}: The limit has been "
                               f"exceeded on the number of allowed image members for this image. "
                               f"Attempted: {len(rec.members) + 1}, Maximum: {MAX_MEMBERS}:")  # fmt: skip
    now = iso_now()
    member = MemberRecord(key, "pending", now, now)
    rec.members[key] = member
    return member


def member_json(member: MemberRecord, image_id: str, sent: Any) -> dict[str, Any]:
    """The POST answer: Glance echoes the member id as sent (a JSON number stays a number there)."""
    return {**member.to_json(image_id), "member_id": sent}


def list_members(store: RegionStore, image_id: str, caller: Caller) -> list[MemberRecord]:
    """GET: every member for the owner; only its own entry for a member."""
    rec = store.visible(image_id, caller, _NOT_FOUND)
    if rec.visibility != "shared":
        raise GlanceError(403, f"Not allowed to list members for image {image_id}: Only shared images have "
                               "members.")  # fmt: skip
    if rec.owner == caller.tenant_id:
        return list(rec.members.values())
    return [m for m in rec.members.values() if m.member_id == caller.tenant_id]


def get_member(store: RegionStore, image_id: str, member_id: str, caller: Caller) -> MemberRecord:
    """GET one membership; on an image that is not shared Glance answers 404, not 403."""
    rec = store.visible(image_id, caller, _NOT_FOUND)
    if rec.visibility != "shared":
        raise GlanceError(404, "Only shared images have members.")
    return _lookup(rec, member_id, caller)


def update_member(store: RegionStore, image_id: str, member_id: str, status: Any, caller: Caller) -> MemberRecord:
    """PUT: only the member tenant itself may accept, reject or reset its membership."""
    rec = _shared(store, image_id, caller, "Not allowed to update members for image {}.")
    member = _lookup(rec, member_id, caller)
    if caller.tenant_id != member_id:
        raise GlanceError(403, "You are not authorized to complete modify_member action.")
    if status not in MEMBER_STATUSES:
        raise GlanceError(400, 'Incorrect request: Status must be "pending", "accepted" or "rejected".')
    member.status = status
    member.updated_at = iso_now()
    return member


def delete_member(store: RegionStore, image_id: str, member_id: str, caller: Caller) -> None:
    """DELETE: the owner stops sharing with ``member_id``."""
    rec = _shared(store, image_id, caller, "Not allowed to delete members for image {}.")
    _lookup(rec, member_id, caller)
    check_policy(rec, caller, "delete_member")
    del rec.members[member_id]
