"""Metadata fidelity, the decisions: what a copy's properties, tags, visibility, members and protection
should be, and the minimal changes to get there. Pure (``run.metadata`` applies them).

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
from dataclasses import dataclass
from typing import Any

from pipeline.config import CopyOptions
from pipeline.models import READ_ONLY_FIELDS, Image, Member, is_reserved_field
from pipeline.plan.provenance import PROV_DEFAULTED, PROV_RETIRED_AT, PROVENANCE_PREFIX

__all__ = [
    "Desired",
    "MetaDiff",
    "create_fields",
    "desired_metadata",
    "diff_metadata",
    "read_only_fields",
    "schema_formats",
]

#: Core attributes copied with PATCH after the data is verified.
CORE_COPIED = ("name", "min_disk", "min_ram", "os_hidden")


def schema_formats(schema: Mapping[str, Any] | None) -> tuple[list[str] | None, list[str] | None]:
    """The disk and container formats an image schema allows (its ``enum``s, as Glance builds them from its
    ``[image_format]`` config); None for either when the schema does not say."""
    props = (schema or {}).get("properties")

    def enum(name: str) -> list[str] | None:
        field = props.get(name) if isinstance(props, Mapping) else None
        values = field.get("enum") if isinstance(field, Mapping) else None
        return sorted(v for v in values if isinstance(v, str)) if isinstance(values, list) else None

    return enum("disk_format"), enum("container_format")


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
    #: Properties the target requires on create (sent in the minimal body too).
    required: tuple[str, ...] = ()
    #: Properties the target requires that neither the source nor a default gives: no copy can be created.
    missing: tuple[str, ...] = ()


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
    required: Sequence[str] = (),
    defaults: Mapping[str, str] | None = None,
    references: Mapping[str, str | None] | None = None,
) -> Desired:
    """The target metadata for a copy of ``source``, from the job's ``[copy]`` rules. A property the target
    ``required`` that the source lacks takes its value from ``defaults`` (the copy names it in
    ``imgmig_defaulted``, and it is kept, not removed as drift); without a default it is ``missing``.
    ``references``: each property that names another source image, rewritten to that image's copy in this target
    (None: no copy known yet, so the property is left out: a copy never points into the source region)."""
    notes: list[str] = []
    core = {k: source.raw[k] for k in CORE_COPIED if k in source.raw and source.raw[k] is not None}
    props = {k: v for k, v in source.properties().items() if isinstance(v, str) and _wanted(k, copy, read_only)}
    for key, copy_id in (references or {}).items():
        if copy_id is None:
            props.pop(key, None)
        elif key in props:
            props[key] = copy_id
    lacking = [key for key in required if not props.get(key)]
    defaulted = sorted(key for key in lacking if (defaults or {}).get(key))
    props.update({key: (defaults or {})[key] for key in defaulted})
    props.update(prov)
    if defaulted:
        props[PROV_DEFAULTED] = ",".join(defaulted)
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
        required=tuple(required),
        missing=tuple(key for key in lacking if key not in defaulted),
    )


def create_fields(source: Image, desired: Desired, *, minimal: bool = False) -> dict[str, Any]:
    """The POST body of a new copy: everything that is safe on a queued, private image, so that a private,
    unprotected copy needs no metadata request after its data: formats, core attributes, custom properties
    (provenance included) and tags. Visibility stays private and protection off until the data is verified
    (``apply_metadata`` widens and protects afterwards).

    ``minimal``: formats, the properties the target requires and provenance only: the body sent again when a
    target refuses the full one (the rest then goes through ``apply_metadata``, which reports each refusal)."""
    body: dict[str, Any] = {
        "name": source.name or source.id,
        "disk_format": source.raw.get("disk_format"),
        "container_format": source.raw.get("container_format"),
        "visibility": "private",
    }
    if minimal:
        body.update({k: desired.properties[k] for k in desired.required if k in desired.properties})
        body.update({k: v for k, v in desired.properties.items() if k.startswith(PROVENANCE_PREFIX)})
        return body
    body.update(desired.core)
    body.update(desired.properties)
    if desired.tags:
        body["tags"] = sorted(desired.tags)
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


#: The diff of a copy in sync (``MetaDiff`` is frozen: one instance serves them all).
IN_SYNC = MetaDiff()


def diff_metadata(
    desired: Desired,
    target: Image,
    members: Sequence[Member] | None,
    *,
    managed: Iterable[str] = (),
    additive: bool = False,
    keep: Iterable[str] = (),
) -> MetaDiff:
    """Minimal JSON-patch ops plus tag, member and protection changes. ``managed`` lists the property
    keys this job set before: only those may be removed when the source dropped them; ``keep`` ones never (a
    reference whose target copy is not known: left as it is)."""
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
        dropped = sorted(set(managed) - set(desired.properties) - set(keep))
        ops += [
            {"op": "remove", "path": _pointer(k)}
            for k in dropped
            if k in current and not k.startswith(PROVENANCE_PREFIX)
        ]
    if PROV_DEFAULTED in current and PROV_DEFAULTED not in desired.properties:
        ops.append({"op": "remove", "path": _pointer(PROV_DEFAULTED)})  # the source has its own values now
    if PROV_RETIRED_AT in current:  # a retired copy is only ever diffed to be restored
        ops.append({"op": "remove", "path": _pointer(PROV_RETIRED_AT)})
    tags = set(target.tags)
    add_tags = tuple(sorted(desired.tags - tags))
    remove_tags = () if additive else tuple(sorted(tags - desired.tags))
    have = {m.member_id for m in members or ()}
    add_members = tuple(sorted(set(desired.members) - have))
    remove_members = () if additive else tuple(sorted(have - set(desired.members)))
    protect = desired.protected if target.protected != desired.protected else None
    if not (ops or add_tags or remove_tags or add_members or remove_members or protect is not None):
        return IN_SYNC  # one shared empty diff for every copy in sync (most of a large catalogue)
    return MetaDiff(tuple(ops), add_tags, remove_tags, add_members, remove_members, protect)
