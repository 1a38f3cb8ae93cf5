"""Static documents a Glance v2 server publishes (versions, JSON schemas) and validation against them.

The four schemas are Glance 33's own ``/v2/schemas/{image,images,member,members}`` documents, key order
included, because Glance prints the failing sub-schema in its 400 messages and the emulator prints the
same text (``jsonschema``'s ``ValidationError.__str__``: message, schema path, pretty-printed sub-schema,
instance path, pretty-printed value). The enums of ``disk_format`` and ``container_format`` follow the
region's accepted formats (Glance's ``[image_format]`` options): ``schema_documents`` builds them.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from functools import lru_cache
from pprint import pformat
from typing import Any

__all__ = [
    "DEFAULT_CONTAINER_FORMATS",
    "DEFAULT_DISK_FORMATS",
    "IMAGE_SCHEMA",
    "SCHEMAS",
    "format_list",
    "schema_documents",
    "schema_error_text",
    "versions_document",
]

_VERSIONS = ["v2.18", "v2.17", "v2.16", "v2.15", "v2.14", "v2.13", "v2.12", "v2.11", "v2.10", "v2.9",
             "v2.8", "v2.7", "v2.6", "v2.5", "v2.4", "v2.3", "v2.2", "v2.1", "v2.0"]  # fmt: skip


def versions_document(base: str) -> dict[str, Any]:
    """The ``{"versions": [...]}`` document served at ``/`` (300) and ``/versions`` (200)."""
    return {
        "versions": [
            {"id": v, "status": "CURRENT" if i == 0 else "SUPPORTED",
             "links": [{"rel": "self", "href": f"{base}/v2/"}]}
            for i, v in enumerate(_VERSIONS)
        ]
    }  # fmt: skip


#: Glance's ``[image_format] container_formats`` and ``disk_formats`` defaults (a region's accepted formats
#: unless configured otherwise; the schema's enum is ``[None] + the list``, as ``get_base_properties`` builds it).
DEFAULT_CONTAINER_FORMATS = ("ami", "ari", "aki", "bare", "ovf", "ova", "docker", "compressed")
DEFAULT_DISK_FORMATS = ("ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop")

UUID_PATTERN = "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$"
_NULL_STR = ["null", "string"]
_STORES = ("Store in which image data resides.  Only present when the operator has enabled multiple "
           "stores.  May be a comma-separated list of store identifiers.")  # fmt: skip
_VALIDATION_DATA = (
    "Values to be used to populate the corresponding image properties. If the image status is not "
    "'queued', values must exactly match those already contained in the image properties."
)

_IMAGE_PROPERTIES: dict[str, Any] = {
    "id": {"type": "string", "description": "An identifier for the image", "pattern": UUID_PATTERN},
    "name": {"type": _NULL_STR, "description": "Descriptive name for the image", "maxLength": 255},
    "status": {"type": "string", "readOnly": True, "description": "Status of the image",
               "enum": ["queued", "saving", "active", "killed", "deleted", "uploading", "importing",
                        "pending_delete", "deactivated"]},
    "visibility": {"type": "string", "description": "Scope of image accessibility",
                   "enum": ["community", "public", "private", "shared"]},
    "protected": {"type": "boolean", "description": "If true, image will not be deletable."},
    "os_hidden": {"type": "boolean",
                  "description": "If true, image will not appear in default image list response."},
    "checksum": {"type": _NULL_STR, "readOnly": True, "description": "md5 hash of image contents.",
                 "maxLength": 32},
    "os_hash_algo": {"type": _NULL_STR, "readOnly": True,
                     "description": "Algorithm to calculate the os_hash_value", "maxLength": 64},
    "os_hash_value": {"type": _NULL_STR, "readOnly": True,
                      "description": "Hexdigest of the image contents using the algorithm specified by "
                                     "the os_hash_algo",
                      "maxLength": 128},
    "owner": {"type": _NULL_STR, "description": "Owner of the image", "maxLength": 255},
    "size": {"type": ["null", "integer"], "readOnly": True, "description": "Size of image file in bytes"},
    "virtual_size": {"type": ["null", "integer"], "readOnly": True,
                     "description": "Virtual size of image in bytes"},
    "container_format": {"type": _NULL_STR, "description": "Format of the container",
                         "enum": [None, *DEFAULT_CONTAINER_FORMATS]},
    "disk_format": {"type": _NULL_STR, "description": "Format of the disk", "enum": [None, *DEFAULT_DISK_FORMATS]},
    "created_at": {"type": "string", "readOnly": True, "description": "Date and time of image registration"},
    "updated_at": {"type": "string", "readOnly": True,
                   "description": "Date and time of the last image modification"},
    "tags": {"type": "array", "description": "List of strings related to the image",
             "items": {"type": "string", "maxLength": 255}},
    "direct_url": {"type": "string", "readOnly": True,
                   "description": "URL to access the image file kept in external store"},
    "min_ram": {"type": "integer", "description": "Amount of ram (in MB) required to boot image."},
    "min_disk": {"type": "integer", "description": "Amount of disk space (in GB) required to boot image."},
    "self": {"type": "string", "readOnly": True, "description": "An image self url"},
    "file": {"type": "string", "readOnly": True, "description": "An image file url"},
    "stores": {"type": "string", "readOnly": True, "description": _STORES},
    "schema": {"type": "string", "readOnly": True, "description": "An image schema url"},
    "locations": {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {
                "url": {"type": "string", "maxLength": 255},
                "metadata": {"type": "object"},
                "validation_data": {
                    "description": _VALIDATION_DATA, "type": "object", "writeOnly": True,
                    "additionalProperties": False,
                    "properties": {"checksum": {"type": "string", "minLength": 32, "maxLength": 32},
                                   "os_hash_algo": {"type": "string", "maxLength": 64},
                                   "os_hash_value": {"type": "string", "maxLength": 128}},
                    "required": ["os_hash_algo", "os_hash_value"],
                },
            },
            "required": ["url", "metadata"],
        },
        "description": "A set of URLs to access the image file kept in external store",
    },
}  # fmt: skip

IMAGE_SCHEMA: dict[str, Any] = {
    "name": "image",
    "properties": _IMAGE_PROPERTIES,
    "additionalProperties": {"type": "string"},
    "links": [{"rel": "self", "href": "{self}"}, {"rel": "enclosure", "href": "{file}"},
              {"rel": "describedby", "href": "{schema}"}],
}  # fmt: skip

_MEMBER_SCHEMA: dict[str, Any] = {
    "name": "member",
    "properties": {
        "member_id": {"type": "string", "description": "An identifier for the image member (tenantId)"},
        "image_id": {"type": "string", "description": "An identifier for the image", "pattern": UUID_PATTERN},
        "created_at": {"type": "string", "description": "Date and time of image member creation"},
        "updated_at": {"type": "string", "description": "Date and time of last modification of image member"},
        "status": {"type": "string", "description": "The status of this image member",
                   "enum": ["pending", "accepted", "rejected"]},
        "schema": {"readOnly": True, "type": "string"},
    },
}  # fmt: skip


def _documents(image: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The four ``/v2/schemas/{name}`` documents around one image schema."""
    return {
        "image": image,
        "images": {
            "name": "images",
            "properties": {"images": {"type": "array", "items": image},
                           "first": {"type": "string"}, "next": {"type": "string"}, "schema": {"type": "string"}},
            "links": [{"rel": "first", "href": "{first}"}, {"rel": "next", "href": "{next}"},
                      {"rel": "describedby", "href": "{schema}"}],
        },
        "member": _MEMBER_SCHEMA,
        "members": {
            "name": "members",
            "properties": {"members": {"type": "array", "items": _MEMBER_SCHEMA}, "schema": {"type": "string"}},
            "links": [{"rel": "describedby", "href": "{schema}"}],
        },
    }  # fmt: skip


#: The documents of a region with Glance's default formats.
SCHEMAS: dict[str, dict[str, Any]] = _documents(IMAGE_SCHEMA)


@lru_cache(maxsize=64)
def schema_documents(disk_formats: tuple[str, ...], container_formats: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The schema documents of a region that accepts these formats (shared: never mutate them).

    Glance builds the image schema once from ``[image_format]``: the two enums are ``[None] + the list``,
    everything else (key order included) stays as in the default schema.
    """
    if (disk_formats, container_formats) == (DEFAULT_DISK_FORMATS, DEFAULT_CONTAINER_FORMATS):
        return SCHEMAS
    properties = dict(_IMAGE_PROPERTIES)
    properties["container_format"] = {**_IMAGE_PROPERTIES["container_format"], "enum": [None, *container_formats]}
    properties["disk_format"] = {**_IMAGE_PROPERTIES["disk_format"], "enum": [None, *disk_formats]}
    return _documents({**IMAGE_SCHEMA, "properties": properties})


def format_list(value: Any, option: str) -> tuple[str, ...]:
    """A list of formats as a region accepts it (``[image_format] <option>``), or ValueError.

    Like oslo.config's ListOpt, a comma-separated string is split and its items stripped; a list must
    hold non-empty strings.
    """
    if isinstance(value, str):
        items: list[Any] = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ValueError(f"{option}: a list of formats, not {value!r}")
    for item in items:
        if not isinstance(item, str) or not item or "," in item:
            raise ValueError(f"{option}: every format is a non-empty string without commas, not {item!r}")
    return tuple(items)


# === validation (the subset of JSON Schema the image schema uses), worded like jsonschema 4


_TYPES: dict[str, Any] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}

#: One failure: (message, validator keyword, schema path, sub-schema, instance path, instance).
_Failure = tuple[str, str, list[Any], dict[str, Any], list[Any], Any]


def _check(schema: dict[str, Any], value: Any, spath: list[Any], ipath: list[Any]) -> Iterator[_Failure]:
    """Every failure of ``value`` against ``schema``, in jsonschema's keyword order."""
    for keyword, arg in schema.items():
        if keyword == "type":
            kinds = arg if isinstance(arg, list) else [arg]
            if not any(_TYPES[k](value) for k in kinds):
                yield (f"{value!r} is not of type {', '.join(repr(k) for k in kinds)}", keyword, spath,
                       schema, ipath, value)  # fmt: skip
        elif keyword == "enum" and value not in arg:
            yield f"{value!r} is not one of {arg!r}", keyword, spath, schema, ipath, value
        elif keyword == "maxLength" and isinstance(value, str) and len(value) > arg:
            yield f"{value!r} is too long", keyword, spath, schema, ipath, value
        elif keyword == "minLength" and isinstance(value, str) and len(value) < arg:
            yield f"{value!r} is too short", keyword, spath, schema, ipath, value
        elif keyword == "pattern" and isinstance(value, str) and not re.search(arg, value):
            yield f"{value!r} does not match {arg!r}", keyword, spath, schema, ipath, value
        elif keyword == "items" and isinstance(value, list):
            for i, item in enumerate(value):
                yield from _check(arg, item, [*spath, "items"], [*ipath, i])
        elif keyword == "properties" and isinstance(value, dict):
            for key, sub in arg.items():
                if key in value:
                    yield from _check(sub, value[key], [*spath, "properties", key], [*ipath, key])
        elif keyword == "required" and isinstance(value, dict):
            for key in arg:
                if key not in value:
                    yield f"{key!r} is a required property", keyword, spath, schema, ipath, value
        elif keyword == "additionalProperties" and isinstance(value, dict):
            known = schema.get("properties", {})
            extra = [k for k in value if k not in known]
            if arg is False and extra:
                names = ", ".join(repr(k) for k in extra)
                verb = "was" if len(extra) == 1 else "were"
                yield (f"Additional properties are not allowed ({names} {verb} unexpected)", keyword, spath,
                       schema, ipath, value)  # fmt: skip
            elif isinstance(arg, dict):
                for key in extra:
                    yield from _check(arg, value[key], [*spath, "additionalProperties"], [*ipath, key])


def _index(container: str, path: list[Any]) -> str:
    return container + "".join(f"[{p!r}]" for p in path)


def _pretty(thing: Any) -> str:
    return textwrap.indent(pformat(thing, width=72, sort_dicts=False), "    ")


def _relevance(failure: _Failure) -> tuple[Any, ...]:
    """jsonschema 4's ``relevance`` key (``best_match`` takes the first maximum): the shallowest instance
    path, then the greatest one among siblings (so disk_format's failure beats container_format's), then a
    failure whose instance does not even match the sub-schema's type."""
    _, _, _, sub, ipath, value = failure
    kinds = sub.get("type")
    if kinds is None:
        matches_type = False
    else:
        matches_type = any(_TYPES[k](value) for k in (kinds if isinstance(kinds, list) else [kinds]))
    return (-len(ipath), ipath, True, False, not matches_type)


def schema_error_text(doc: dict[str, Any], schema: dict[str, Any] = IMAGE_SCHEMA) -> str | None:
    """Glance's text for the best failure of ``doc`` ("Provided object does not match ..."), or None.

    The failure is chosen as ``jsonschema.best_match`` chooses it (see ``_relevance``); among equals, the
    first one found.
    """
    failures = list(_check(schema, doc, [], []))
    if not failures:
        return None
    message, keyword, spath, sub, ipath, value = max(failures, key=_relevance)
    text = (f"{message}\n\nFailed validating {keyword!r} in {_index('schema', spath)}:\n{_pretty(sub)}\n\n"
            f"On {_index('instance', ipath)}:\n{_pretty(value)}")  # fmt: skip
    return f"Provided object does not match schema '{schema['name']}': {text}"
