"""PATCH /v2/images/{id}: Glance's JSON-patch dialects (v2.1 and legacy v2.0) and their error codes.

``parse_patch`` is Glance's request deserializer: it checks every operation (op, JSON pointer, value,
read-only and reserved paths, the image schema) before the image is even looked up. ``apply_patch`` is
the controller: it applies the operations to a copy, so a request that fails half-way changes nothing,
as in Glance, where the whole patch is saved once at the end.
"""

from __future__ import annotations

import copy
import re
from typing import Any, NamedTuple

from .fields import (
    CORE_WRITABLE,
    MAX_PROPERTIES,
    MAX_TAGS,
    GlanceError,
    check_min_values,
    check_nhn_tags,
    check_schema,
    check_visibility,
    is_reserved,
    properties_quota_error,
    tags_quota_error,
)
from .schemas import IMAGE_SCHEMA
from .store import ImageRecord

__all__ = ["PATCH_TYPES", "PatchOp", "apply_patch", "parse_patch", "patch_media_type_error"]

PATCH_V21 = "application/openstack-images-v2.1-json-patch"
PATCH_V20 = "application/openstack-images-v2.0-json-patch"
PATCH_TYPES = (PATCH_V20, PATCH_V21)
OPS = ("add", "remove", "replace")
#: RequestDeserializer._readonly_properties (PATCH).
READ_ONLY = frozenset(
    {"created_at", "updated_at", "status", "checksum", "size", "virtual_size", "direct_url", "self", "file",
     "schema", "id", "os_hash_algo", "os_hash_value"}
)  # fmt: skip
#: Attributes of Glance's domain Image: replace/add set them, remove is refused.
_DOMAIN_ATTRS = CORE_WRITABLE | {"owner"}


class PatchOp(NamedTuple):
    """One parsed operation: op, the decoded path parts, the value (None for remove), the dialect."""

    op: str
    path: list[str]
    value: Any
    legacy: bool


def patch_media_type_error(content_type: str | None) -> GlanceError:
    """415 for a PATCH that is not one of the two JSON-patch media types, with Accept-Patch."""
    allowed = ", ".join(PATCH_TYPES)
    return GlanceError(415, detail=f"Image PATCH expects Content-Type one of: {allowed}",
                       headers={"Accept-Patch": allowed})  # fmt: skip


def _pointer(pointer: Any) -> list[str]:
    """Glance's _decode_json_pointer, with its error messages."""
    if not isinstance(pointer, str) or not pointer.startswith("/"):
        raise GlanceError(400, f'Pointer `{pointer}` does not start with "/".')
    if re.search(r"/\s*?/", pointer[1:]):
        raise GlanceError(400, f'Pointer `{pointer}` contains adjacent "/".')
    if len(pointer) > 1 and pointer.endswith("/"):
        raise GlanceError(400, f'Pointer `{pointer}` end with "/".')
    if pointer[1:].strip() == "/":
        raise GlanceError(400, f"Pointer `{pointer}` does not contains valid token.")
    if re.search("~[^01]", pointer) or pointer.endswith("~"):
        raise GlanceError(400, f'Pointer `{pointer}` contains "~" not part of a recognized escape sequence.')
    return [part.replace("~1", "/").replace("~0", "~").strip() for part in pointer.lstrip("/").split("/")]


def _op(item: dict[str, Any], legacy: bool) -> tuple[str, Any]:
    if legacy:  # v2.0: {"add": "/x", "value": ...}
        found = [k for k in OPS if k in item]
        if len(found) > 1:
            raise GlanceError(400, 'Operation objects must contain only one member named "add", "remove", '
                                   'or "replace".')  # fmt: skip
        if not found:
            raise GlanceError(400, 'Operation objects must contain exactly one member named "add", '
                                   '"remove", or "replace".')  # fmt: skip
        return found[0], item[found[0]]
    op = item.get("op")
    if op is None:
        raise GlanceError(400, "Unable to find `op` in JSON Schema change. It must be one of the following: "
                               "add, remove, replace.")  # fmt: skip
    if op not in OPS:
        raise GlanceError(400, f"Invalid operation: `{op}`. It must be one of the following: add, remove, "
                               "replace.")  # fmt: skip
    if "path" not in item:
        raise GlanceError(400, "Unable to find 'path' in JSON Schema change")
    return op, item["path"]


def parse_patch(content_type: str, doc: Any, schema: dict[str, Any] = IMAGE_SCHEMA) -> list[PatchOp]:
    """Every operation of the request, validated as Glance's deserializer does (against the region's image
    ``schema``); 400/403 otherwise."""
    if not isinstance(doc, list):
        raise GlanceError(400, "Request body must be a JSON array of operation objects.")
    legacy = content_type == PATCH_V20
    ops: list[PatchOp] = []
    for item in doc:
        if not isinstance(item, dict):
            raise GlanceError(400, "Operations must be JSON objects.")
        op, pointer = _op(item, legacy)
        path = _pointer(pointer)
        root = path[0]
        depth = 2 if root == "locations" and op in ("add", "remove") else 1
        if len(path) != depth:
            raise GlanceError(400, f"Invalid JSON pointer for this resource: '/{'/'.join(path)}'")
        if op != "remove" and "value" not in item:
            raise GlanceError(400, f'Operation "{op}" requires a member named "value".')
        value = item.get("value")
        if root in READ_ONLY:
            raise GlanceError(403, f"Attribute '{root}' is read-only.")
        if is_reserved(root):
            raise GlanceError(403, f"Attribute '{root}' is reserved.")
        if op != "remove":
            check_schema({root: value} if len(path) == 1 else {root: [value]}, schema)
        ops.append(PatchOp(op, path, value, legacy))
    return ops


def _locations(op: str, value: Any) -> GlanceError:
    # locations are hidden (show_multiple_locations is off), so Glance refuses every change to them
    if op == "replace" and not value:
        return GlanceError(403, detail="Cannot set locations to empty list.")
    if op == "remove":
        return GlanceError(403, "You are not authorized to complete delete_image_location action.")
    verb = "add" if op == "add" else "update"
    return GlanceError(403, f"It's not allowed to {verb} locations if locations are invisible.")


def apply_patch(rec: ImageRecord, ops: list[PatchOp]) -> ImageRecord:
    """A new record with ``ops`` applied, or a GlanceError and no change."""
    new = copy.deepcopy(rec)
    # NHN guide, image field 'protected': "Cannot be modified or deleted when protected=true".
    # Turning protection off (alone or first) is the one change a protected image accepts.
    if rec.protected and any(o.path[0] != "protected" for o in ops):
        if not (ops[0].path[0] == "protected" and ops[0].value is False):
            raise GlanceError(403, f"Image {rec.id} is protected and cannot be modified.")
    for op, path, value, legacy in ops:
        key = path[0]
        if key == "locations":
            raise _locations(op, value)
        if op == "replace" and key == "owner":
            raise GlanceError(403, detail="Owner can't be updated by non admin.")
        exists = key in _DOMAIN_ATTRS or key in new.properties
        if op == "remove":
            if key in _DOMAIN_ATTRS:
                raise GlanceError(403, detail=f"Property {key} may not be removed.")
            if not exists:
                raise GlanceError(409, detail=f"Property {key} does not exist.")
            del new.properties[key]
            continue
        if op == "replace" and not exists:
            raise GlanceError(409, detail=f"Property {key} does not exist.")
        if op == "add" and legacy and exists:
            raise GlanceError(409, detail=f"Property {key} already present.")
        if key in CORE_WRITABLE or key == "owner":
            _set_core(new, key, value)
        else:
            new.properties[key] = value
    if len(new.properties) > MAX_PROPERTIES:
        raise properties_quota_error(len(new.properties))
    return new


def _set_core(rec: ImageRecord, key: str, value: Any) -> None:
    """Glance's domain setters: policy on visibility, formats only while queued, no negative minimums."""
    if key == "owner":
        # Glance 33 bug kept on purpose: 'replace /owner' is refused, but 'add /owner' is saved; the
        # handler then answers 403 because the caller can no longer see the image it just gave away
        rec.owner = value
        return
    if key == "visibility":
        check_visibility(value)
    if key in ("disk_format", "container_format") and rec.status != "queued":
        raise GlanceError(403, f"Attribute {key} can be only replaced for a queued image.")
    check_min_values({key: value})
    if key == "tags":
        value = list(dict.fromkeys(value))
        check_nhn_tags(value)
        if len(value) > MAX_TAGS:
            raise tags_quota_error(len(value))
    setattr(rec, key, value)
