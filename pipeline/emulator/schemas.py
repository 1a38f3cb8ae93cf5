"""Static documents a Glance v2 server publishes: the version list and the JSON schemas."""

from __future__ import annotations

from typing import Any

from .fields import CONTAINER_FORMATS, DISK_FORMATS

__all__ = ["SCHEMAS", "versions_document"]

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


def _ro(kind: Any, description: str) -> dict[str, Any]:
    return {"type": kind, "readOnly": True, "description": description}


_IMAGE_PROPERTIES: dict[str, Any] = {
    "id": {"type": "string", "description": "An identifier for the image",
           "pattern": "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$"},
    "name": {"type": ["null", "string"], "maxLength": 255, "description": "Descriptive name for the image"},
    "status": {**_ro("string", "Status of the image"),
               "enum": ["queued", "saving", "active", "killed", "deleted", "uploading", "importing",
                        "pending_delete", "deactivated"]},
    "visibility": {"type": "string", "enum": ["community", "public", "private", "shared"],
                   "description": "Scope of image accessibility"},
    "protected": {"type": "boolean", "description": "If true, image will not be deletable."},
    "os_hidden": {"type": "boolean", "description": "If true, image will not appear in default image list "
                                                    "response."},
    "checksum": {**_ro(["null", "string"], "md5 hash of image contents."), "maxLength": 32},
    "os_hash_algo": {**_ro(["null", "string"], "Algorithm to calculate the os_hash_value"), "maxLength": 64},
    "os_hash_value": {**_ro(["null", "string"], "Hexdigest of the image contents using the algorithm "
                                                "specified by the os_hash_algo"), "maxLength": 128},
    "owner": {"type": ["null", "string"], "maxLength": 255, "description": "Owner of the image"},
    "size": _ro(["null", "integer"], "Size of image file in bytes"),
    "virtual_size": _ro(["null", "integer"], "Virtual size of image in bytes"),
    "container_format": {"type": ["null", "string"], "enum": list(CONTAINER_FORMATS),
                         "description": "Format of the container"},
    "disk_format": {"type": ["null", "string"], "enum": list(DISK_FORMATS), "description": "Format of the disk"},
    "created_at": _ro("string", "Date and time of image registration"),
    "updated_at": _ro("string", "Date and time of the last image modification"),
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 255},
             "description": "List of strings related to the image"},
    "direct_url": _ro("string", "URL to access the image file kept in external store"),
    "min_ram": {"type": "integer", "description": "Amount of ram (in MB) required to boot image."},
    "min_disk": {"type": "integer", "description": "Amount of disk space (in GB) required to boot image."},
    "self": _ro("string", "An image self url"),
    "file": _ro("string", "An image file url"),
    "stores": _ro("string", "Store in which image data resides."),
    "schema": _ro("string", "An image schema url"),
    "locations": {"type": "array", "description": "A set of URLs to access the image file kept in external store"},
}  # fmt: skip

_IMAGE_SCHEMA: dict[str, Any] = {
    "name": "image",
    "properties": _IMAGE_PROPERTIES,
    "additionalProperties": {"type": "string"},
    "links": [{"rel": "self", "href": "{self}"}, {"rel": "enclosure", "href": "{file}"},
              {"rel": "describedby", "href": "{schema}"}],
}  # fmt: skip

_MEMBER_SCHEMA: dict[str, Any] = {
    "name": "member",
    "properties": {
        "created_at": {"type": "string", "description": "Date and time of image member creation"},
        "image_id": {"type": "string", "description": "An identifier for the image"},
        "member_id": {"type": "string", "description": "An identifier for the image member (tenantId)"},
        "status": {"type": "string", "enum": ["pending", "accepted", "rejected"],
                   "description": "The status of this image member"},
        "updated_at": {"type": "string", "description": "Date and time of last modification of image member"},
        "schema": {"type": "string", "readOnly": True},
    },
}  # fmt: skip

SCHEMAS: dict[str, dict[str, Any]] = {
    "image": _IMAGE_SCHEMA,
    "images": {
        "name": "images",
        "properties": {"images": {"type": "array", "items": _IMAGE_SCHEMA},
                       "schema": {"type": "string"}, "first": {"type": "string"}, "next": {"type": "string"}},
        "links": [{"rel": "first", "href": "{first}"}, {"rel": "next", "href": "{next}"},
                  {"rel": "describedby", "href": "{schema}"}],
    },
    "member": _MEMBER_SCHEMA,
    "members": {
        "name": "members",
        "properties": {"members": {"type": "array", "items": _MEMBER_SCHEMA}, "schema": {"type": "string"}},
        "links": [{"rel": "self", "href": "{self}"}, {"rel": "schema", "href": "{schema}"}],
    },
}  # fmt: skip
