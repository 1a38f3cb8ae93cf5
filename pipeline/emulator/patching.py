"""PATCH /v2/images/{id}: Glance's JSON-patch dialects (v2.1 and legacy v2.0) and their error codes.

All operations are checked and applied to a copy first, so a request that fails half-way changes nothing,
as in Glance, where the whole patch is one transaction.
"""

from __future__ import annotations

import copy
from typing import Any

from .fields import (
    CORE_WRITABLE,
    MAX_PROPERTIES,
    GlanceError,
    check_writable,
    validate_core,
    validate_property,
)
from .store import ImageRecord

__all__ = ["PATCH_TYPES", "apply_patch", "parse_patch"]

PATCH_V21 = "application/openstack-images-v2.1-json-patch"
PATCH_V20 = "application/openstack-images-v2.0-json-patch"
PATCH_TYPES = (PATCH_V20, PATCH_V21)
OPS = ("add", "remove", "replace")


def parse_patch(content_type: str, doc: Any) -> list[tuple[str, str, Any]]:
    """[(op, key, value)] from either dialect; 400 for anything malformed."""
    if not isinstance(doc, list):
        raise GlanceError(400, detail="Request body must be a JSON array of operation objects.")
    ops: list[tuple[str, str, Any]] = []
    for item in doc:
        if not isinstance(item, dict):
            raise GlanceError(400, detail="Operations must be JSON objects.")
        if content_type == PATCH_V21:
            op = item.get("op")
            path = item.get("path")
        else:  # legacy: {"add": "/x", "value": ...}
            found = [k for k in OPS if k in item]
            if len(found) != 1:
                raise GlanceError(400, detail="Operation objects must contain exactly one member named "
                                              '"add", "remove", or "replace".')  # fmt: skip
            op, path = found[0], item[found[0]]
        if op not in OPS:
            raise GlanceError(400, detail=f"Invalid operation: `{op}`. It must be one of the following: "
                                          "add, remove, replace.")  # fmt: skip
        if not isinstance(path, str) or not path.startswith("/"):
            raise GlanceError(400, detail=f"Invalid JSON pointer for this resource: '{path}'")
        parts = path[1:].split("/")
        if len(parts) != 1 or not parts[0]:
            raise GlanceError(400, detail=f"Invalid JSON pointer for this resource: '{path}'")
        key = parts[0].replace("~1", "/").replace("~0", "~")
        if op != "remove" and "value" not in item:
            raise GlanceError(400, detail=f"Operation \"{op}\" requires a member named \"value\".")
        ops.append((op, key, item.get("value")))
    return ops


def apply_patch(rec: ImageRecord, ops: list[tuple[str, str, Any]]) -> ImageRecord:
    """A new record with ``ops`` applied, or a GlanceError and no change."""
    new = copy.deepcopy(rec)
    # NHN guide, image field 'protected': "Cannot be modified or deleted when protected=true".
    # Turning protection off (alone or first) is the one change a protected image accepts.
    if rec.protected and any(key != "protected" for _, key, _ in ops):
        unprotect_first = ops and ops[0][1] == "protected" and ops[0][2] is False
        if not unprotect_first:
            raise GlanceError(403, detail=f"Image {rec.id} is protected and cannot be modified.")
    for op, key, value in ops:
        check_writable(key, on_create=False)
        if key in ("disk_format", "container_format") and new.status != "queued":
            raise GlanceError(403, detail=f"Attribute {key} can be only replaced for a queued image.")
        if key in CORE_WRITABLE:
            if op == "remove":
                raise GlanceError(403, detail=f"Properties {key} cannot be removed.")
            setattr(new, key, validate_core(key, value))
            continue
        exists = key in new.properties
        if op in ("replace", "remove") and not exists:
            raise GlanceError(409, detail=f"Property {key} does not exist.")
        if op == "remove":
            del new.properties[key]
        else:
            new.properties[key] = validate_property(key, value)
    if len(new.properties) > MAX_PROPERTIES:
        raise GlanceError(413, detail="The limit has been exceeded on the number of allowed image "
                                      f"properties. Attempted: {len(new.properties)}, "
                                      f"Maximum: {MAX_PROPERTIES}")  # fmt: skip
    return new
