"""Metadata fidelity: what a copy's properties, tags, visibility, members and protection should be, the
minimal changes to get there (pure), and applying them through the client, one refusal at a time.

Rules:
- Core attributes (name, min_disk, min_ram, os_hidden) are always copied; disk/container format are set at
  creation. Custom properties follow ``[copy] properties`` / ``exclude_properties``; read-only and
  reserved fields (from the target's ``/v2/schemas/image`` when offered, else a built-in set) are never
  sent, nor are other jobs' ``imgmig_*`` provenance keys.
- Visibility is never widened: private stays private, shared stays shared, public is never copied, and
  community follows ``[copy] community``.
- Only properties this job set (recorded in the journal) are ever removed, so fields a cloud adds for its
  own use are left alone. Protection is set last, after the data and all other metadata are verified.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.cloud.client import ImageClient
from pipeline.config.spec import CopyOptions
from pipeline.errors import (
    ApiError,
    BadRequestError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    PayloadTooLargeError,
)
from pipeline.models import READ_ONLY_FIELDS, Image, Member, is_reserved_field
from pipeline.state.failpoints import failpoint
from pipeline.transfer.copies import PROV_JOB, PROV_SOURCE_ID, PROVENANCE_PREFIX, provenance

__all__ = [
    "PROVENANCE_PREFIX",
    "PROV_JOB",
    "PROV_SOURCE_ID",
    "Desired",
    "MetaDiff",
    "SyncReport",
    "apply_metadata",
    "create_fields",
    "desired_metadata",
    "diff_metadata",
    "provenance",
    "read_only_fields",
]

#: Core attributes copied with PATCH after the data is verified.
CORE_COPIED = ("name", "min_disk", "min_ram", "os_hidden")
_REFUSED = (BadRequestError, ForbiddenError, PayloadTooLargeError, ConflictError)


def read_only_fields(schema: Mapping[str, Any] | None) -> frozenset[str]:
    """Fields never to send: the schema's readOnly properties plus the built-in set."""
    learned: set[str] = set()
    props = (schema or {}).get("properties")
    if isinstance(props, Mapping):
        learned = {k for k, v in props.items() if isinstance(v, Mapping) and v.get("readOnly")}
    return frozenset(READ_ONLY_FIELDS | learned)


@dataclass(frozen=True, slots=True)
class Desired:
    """What a verified copy's metadata should be."""

    core: Mapping[str, Any]
    properties: Mapping[str, str]
    tags: frozenset[str]
    visibility: str
    protected: bool
    #: member tenant on the target -> status on the source
    members: Mapping[str, str]
    notes: tuple[str, ...] = ()


def _wanted(key: str, copy: CopyOptions, read_only: frozenset[str]) -> bool:
    if key in read_only or is_reserved_field(key) or key.startswith(PROVENANCE_PREFIX):
        return False
    if isinstance(copy.properties, bool):
        if not copy.properties:
            return False
    elif not any(fnmatch.fnmatchcase(key, g) for g in copy.properties):
        return False
    return not any(fnmatch.fnmatchcase(key, g) for g in copy.exclude_properties)


def desired_metadata(
    source: Image,
    members: Sequence[Member] | None,
    copy: CopyOptions,
    prov: Mapping[str, str],
    read_only: frozenset[str] = READ_ONLY_FIELDS,
    *,
    target_tenant: str | None = None,
) -> Desired:
    """The target metadata for a copy of ``source``, from the job's ``[copy]`` rules."""
    notes: list[str] = []
    core = {k: source.raw[k] for k in CORE_COPIED if k in source.raw and source.raw[k] is not None}
    props = {k: v for k, v in source.properties().items() if isinstance(v, str) and _wanted(k, copy, read_only)}
    props.update(prov)
    visibility = "private"
    if copy.visibility:
        if source.visibility in ("private", "shared"):
            visibility = source.visibility or "private"
        elif source.visibility == "community":
            visibility = "community" if copy.community == "community" else "private"
            notes.append(f"source is community; copied as {visibility} ([copy] community = {copy.community!r})")
    wanted_members: dict[str, str] = {}
    if copy.members and visibility == "shared":
        for m in members or ():
            mapped = copy.member_map.get(m.member_id, m.member_id)
            if mapped and mapped != target_tenant:
                wanted_members[mapped] = m.status
    elif members and not copy.members:
        notes.append("members not copied ([copy] members = false)")
    return Desired(
        core=core,
        properties=props,
        tags=frozenset(source.tags) if copy.tags else frozenset(),
        visibility=visibility,
        protected=source.protected if copy.protected else False,
        members=wanted_members,
        notes=tuple(notes),
    )


def create_fields(source: Image, desired: Desired) -> dict[str, Any]:
    """The POST body of a new copy: formats, the few attributes NHN requires, provenance. Private until
    verified; everything else is applied after the data (see ``apply_metadata``)."""
    body: dict[str, Any] = {
        "name": source.name or source.id,
        "disk_format": source.raw.get("disk_format"),
        "container_format": source.raw.get("container_format"),
        "visibility": "private",
    }
    if "os_type" in desired.properties:
        body["os_type"] = desired.properties["os_type"]  # NHN: os_type is required on create
    body.update({k: v for k, v in desired.properties.items() if k.startswith(PROVENANCE_PREFIX)})
    return body


@dataclass(frozen=True, slots=True)
class MetaDiff:
    """The changes that take a target to the desired metadata (empty when in sync)."""

    ops: tuple[dict[str, Any], ...] = ()
    add_tags: tuple[str, ...] = ()
    remove_tags: tuple[str, ...] = ()
    add_members: tuple[str, ...] = ()
    remove_members: tuple[str, ...] = ()
    protect: bool | None = None

    @property
    def empty(self) -> bool:
        return not (self.ops or self.add_tags or self.remove_tags or self.add_members or self.remove_members
                    or self.protect is not None)  # fmt: skip

    def describe(self) -> list[str]:
        """One line per difference, for ``imgmig verify`` and the plan."""
        lines = [f"{op['op']} {op['path'][1:]}" + (f" = {op['value']!r}" if "value" in op else "") for op in self.ops]
        lines += [f"add tag {t!r}" for t in self.add_tags] + [f"remove tag {t!r}" for t in self.remove_tags]
        lines += [f"add member {m}" for m in self.add_members]
        lines += [f"remove member {m}" for m in self.remove_members]
        if self.protect is not None:
            lines.append(f"set protected = {self.protect}")
        return lines


def _pointer(key: str) -> str:
    return "/" + key.replace("~", "~0").replace("/", "~1")


def diff_metadata(
    desired: Desired,
    target: Image,
    members: Sequence[Member] | None,
    *,
    managed: Iterable[str] = (),
    additive: bool = False,
) -> MetaDiff:
    """Minimal JSON-patch ops plus tag, member and protection changes. ``managed`` lists the property
    keys this job set before: only those may be removed when the source dropped them."""
    ops: list[dict[str, Any]] = []
    for key, value in desired.core.items():
        if target.raw.get(key) != value:
            ops.append({"op": "replace", "path": _pointer(key), "value": value})
    if target.visibility != desired.visibility:
        ops.append({"op": "replace", "path": "/visibility", "value": desired.visibility})
    current = target.properties()
    for key, value in sorted(desired.properties.items()):
        if key not in current:
            ops.append({"op": "add", "path": _pointer(key), "value": value})
        elif current[key] != value:
            ops.append({"op": "replace", "path": _pointer(key), "value": value})
    if not additive:
        dropped = sorted(set(managed) - set(desired.properties))
        ops += [
            {"op": "remove", "path": _pointer(k)}
            for k in dropped
            if k in current and not k.startswith(PROVENANCE_PREFIX)
        ]
    tags = set(target.tags)
    add_tags = tuple(sorted(desired.tags - tags))
    remove_tags = () if additive else tuple(sorted(tags - desired.tags))
    have = {m.member_id for m in members or ()}
    add_members = tuple(sorted(set(desired.members) - have))
    remove_members = () if additive else tuple(sorted(have - set(desired.members)))
    protect = desired.protected if target.protected != desired.protected else None
    return MetaDiff(tuple(ops), add_tags, remove_tags, add_members, remove_members, protect)


@dataclass
class SyncReport:
    """What applying metadata did: problems are per-field refusals; the image itself is still fine."""

    changed: bool = False
    problems: list[str] = field(default_factory=list)
    pending_members: list[str] = field(default_factory=list)
    managed: list[str] = field(default_factory=list)


def _in_effect(op: Mapping[str, Any], image: Image) -> bool:
    """Whether ``op`` already holds on ``image`` (a replayed PATCH whose first answer was lost)."""
    key = op["path"][1:].replace("~1", "/").replace("~0", "~")
    if op["op"] == "remove":
        return key not in image.raw
    return key in image.raw and image.raw[key] == op["value"]


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
        if _in_effect(op, current):
            report.changed = True
            continue
        try:
            current = await client.update_image(image_id, [op])
            report.changed = True
        except _REFUSED as exc:
            current = await client.get_image(image_id)
            if _in_effect(op, current):  # a replay of this very op took effect: not a refusal
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
    for tag in diff.remove_tags:
        try:
            await client.delete_tag(image_id, tag)
            report.changed = True
        except NotFoundError:
            report.changed = True  # already gone: a replayed DELETE whose first answer was lost
        except ApiError as exc:
            report.problems.append(f"tag {_short(tag)!r} could not be removed: {_short(exc.message, 200)}")
    for tag in diff.add_tags:
        try:
            await client.add_tag(image_id, tag)
            report.changed = True
        except _REFUSED as exc:
            report.problems.append(f"tag {_short(tag)!r} refused by target: {_short(exc.message, 200)}")


def _accept_needed(desired: Desired, acceptors: Mapping[str, ImageClient] | None) -> bool:
    return bool(acceptors) and any(s == "accepted" and m in (acceptors or {}) for m, s in desired.members.items())


async def _apply_members(
    client: ImageClient, image_id: str, desired: Desired, diff: MetaDiff, report: SyncReport,
    acceptors: Mapping[str, ImageClient],
) -> None:  # fmt: skip
    for member in diff.remove_members:
        try:
            await client.delete_member(image_id, member)
            report.changed = True
        except NotFoundError:
            report.changed = True  # already gone: a replayed DELETE whose first answer was lost
        except ApiError as exc:
            report.problems.append(f"member {member} could not be removed: {exc.message}")
    for member in diff.add_members:
        try:
            await client.add_member(image_id, member)
            report.changed = True
        except ConflictError:
            report.changed = True  # "already a member": a replayed POST whose first answer was lost
        except ApiError as exc:
            report.problems.append(f"member {member} could not be added: {exc.message}")
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
        except ApiError as exc:
            report.problems.append(f"member {member} could not accept: {exc.message}")
            report.pending_members.append(member)


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
