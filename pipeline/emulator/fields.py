"""Image fields as Glance 33 (and the NHN guide) define them: who may write them and what values pass.

Used by create (POST) and update (PATCH) alike, so both reject the same things with the same status and
message as the real server (see shared/reference/glance-behaviour.md). Where the NHN guide is stricter
than Glance, the NHN rule is applied and the guide is cited.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CONTAINER_FORMATS",
    "DISK_FORMATS",
    "MAX_PROPERTIES",
    "MAX_TAGS",
    "READ_ONLY",
    "GlanceError",
    "check_writable",
    "validate_core",
    "validate_property",
    "validate_tag",
]

DISK_FORMATS = (None, "ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop")
CONTAINER_FORMATS = (None, "ami", "ari", "aki", "bare", "ovf", "ova", "docker", "compressed")
MAX_PROPERTIES = 128
MAX_TAGS = 128
MAX_MEMBERS = 128

#: 403 "Attribute 'x' is read-only." on create and on PATCH.
READ_ONLY = frozenset(
    {"status", "checksum", "size", "virtual_size", "created_at", "updated_at", "direct_url", "self",
     "file", "schema", "stores", "id", "os_hash_algo", "os_hash_value"}
)  # fmt: skip
RESERVED = frozenset({"location", "deleted", "deleted_at"})
#: Core attributes with their own types; everything else is a string-valued custom property.
CORE_WRITABLE = frozenset(
    {"name", "visibility", "protected", "min_ram", "min_disk", "disk_format", "container_format",
     "tags", "os_hidden"}
)  # fmt: skip

_TITLES = {
    400: ("Bad Request", "The server could not comply with the request since it is either malformed or "
          "otherwise incorrect."),
    401: ("Unauthorized", "This server could not verify that you are authorized to access the document "
          "you requested. Either you supplied the wrong credentials (e.g., bad password), or your browser "
          "does not understand how to supply the credentials required."),
    403: ("Forbidden", "Access was denied to this resource."),
    404: ("Not Found", "The resource could not be found."),
    405: ("Method Not Allowed", "The method is not allowed for this resource."),
    408: ("Request Timeout", "The server timed out waiting for the request."),
    409: ("Conflict", "There was a conflict when trying to complete your request."),
    413: ("Request Entity Too Large", "The body of your request was too large for this server."),
    415: ("Unsupported Media Type", "The request media type is not supported by this server."),
    416: ("Requested Range Not Satisfiable", "The Range requested is not available."),
    429: ("Too Many Requests", "The client has sent too many requests in a given amount of time."),
    500: ("Internal Server Error", "The server has either erred or is incapable of performing the "
          "requested operation."),
    502: ("Bad Gateway", "Bad gateway."),
    503: ("Service Unavailable", "The server is currently unavailable. Please try again at a later time."),
    504: ("Gateway Timeout", "The gateway has timed out."),
}  # fmt: skip


@dataclass
class GlanceError(Exception):
    """An error answer in Glance's (webob's) shape: explanation, then detail; JSON, HTML or text."""

    status: int
    detail: str = ""
    explanation: str | None = None
    headers: dict[str, str] | None = None

    @property
    def title(self) -> str:
        return _TITLES.get(self.status, ("Error", ""))[0]

    def body(self, accept: str) -> tuple[bytes, str]:
        """(body, content type) for the client's Accept header, as webob renders it."""
        explanation = self.explanation or _TITLES.get(self.status, ("", ""))[1]
        code = f"{self.status} {self.title}"
        if "application/json" in accept:
            message = f"{explanation}<br /><br />\n{self.detail}\n\n"
            doc = {"message": message, "code": code, "title": self.title}
            return json.dumps(doc).encode(), "application/json"
        if "text/plain" in accept and "text/html" not in accept:
            return f"{code}\n\n{explanation}\n{self.detail}\n\n   ".encode(), "text/plain; charset=UTF-8"
        detail = html.escape(self.detail, quote=True)
        page = (
            f"<html>\n <head>\n  <title>{code}</title>\n </head>\n <body>\n  <h1>{code}</h1>\n"
            f"  {explanation}<br /><br />\n{detail}\n\n\n </body>\n</html>"
        )
        return page.encode(), "text/html; charset=UTF-8"


def check_writable(key: str, *, on_create: bool) -> None:
    """403 for read-only and reserved attributes, as Glance words it for create and PATCH."""
    if key in ("os_hash_algo", "os_hash_value", "id") and on_create:
        return  # a client may choose the id; os_hash_* are silently ignored on create (Glance 33 quirk)
    if key in READ_ONLY:
        raise GlanceError(403, explanation=f"Attribute '{key}' is read-only.")
    if key == "locations":
        raise GlanceError(403, explanation="Attribute 'locations' is reserved.")
    if key in RESERVED or key.startswith("os_glance"):
        raise GlanceError(403, detail=f"Attribute '{key}' is reserved.")
    if key == "owner" and not on_create:
        raise GlanceError(403, explanation="Owner can't be updated by non admin.")


def _schema_error(detail: str) -> GlanceError:
    return GlanceError(400, detail=f"Provided object does not match schema 'image': {detail}")


def validate_tag(tag: Any) -> str:
    """A valid tag, or 400: Glance's 255-character limit plus NHN's 'no leading underscore'."""
    if not isinstance(tag, str):
        raise _schema_error(f"{tag!r} is not of type 'string'")
    if len(tag) > 255:
        raise _schema_error(
            f"'{tag}' is too long  Failed validating 'maxLength' in schema['properties']['tags']['items']: "
            "{'type': 'string', 'maxLength': 255}"
        )
    # NHN guide, Add Tag: "(Caution) Tags starting with _ are not allowed" (Glance itself allows them)
    if tag.startswith("_"):
        raise GlanceError(400, detail=f"Tag '{tag}' is not allowed: tags starting with _ are reserved.")
    return tag


def validate_property(key: str, value: Any) -> str:
    """A custom property value: Glance requires strings and keys of at most 255 characters."""
    if len(key) > 255:
        raise GlanceError(400, detail="Custom property should not be greater than 255 characters.")
    if not isinstance(value, str):
        raise _schema_error(f"{json_repr(value)} is not of type 'string'")
    return value


def json_repr(value: Any) -> str:
    """A value as Glance's schema errors print it."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def validate_core(key: str, value: Any) -> Any:
    """A core attribute's value, type-checked as Glance's image schema does; 400 or 403 otherwise."""
    if key == "name":
        if value is not None and not isinstance(value, str):
            raise _schema_error(f"{json_repr(value)} is not of type 'null', 'string'")
        if isinstance(value, str) and len(value) > 255:
            raise _schema_error(f"'{value[:40]}...' is too long")
        return value
    if key == "visibility":
        if value not in ("public", "private", "shared", "community"):
            raise _schema_error(f"{json_repr(value)} is not one of ['community', 'public', 'private', 'shared']")
        if value == "public":
            raise GlanceError(403, detail="You are not authorized to complete publicize_image action.")
        # NHN guide, Create Image / Change Visibility: visibility is "private or shared" for users
        if value == "community":
            raise GlanceError(403, detail="You are not authorized to complete communitize_image action.")
        return value
    if key in ("protected", "os_hidden"):
        if not isinstance(value, bool):
            raise _schema_error(f"{json_repr(value)} is not of type 'boolean'")
        return value
    if key in ("min_ram", "min_disk"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _schema_error(f"{json_repr(value)} is not of type 'integer'")
        if value < 0:
            raise GlanceError(
                400, detail=f"Invalid value '{value}' for parameter '{key}': Cannot be a negative value"
            )
        return value
    if key == "disk_format":
        if value not in DISK_FORMATS:
            raise _schema_error(f"{json_repr(value)} is not one of {list(DISK_FORMATS)}")
        return value
    if key == "container_format":
        if value not in CONTAINER_FORMATS:
            raise _schema_error(f"{json_repr(value)} is not one of {list(CONTAINER_FORMATS)}")
        return value
    if key == "tags":
        if not isinstance(value, list):
            raise _schema_error(f"{json_repr(value)} is not of type 'array'")
        tags = [validate_tag(t) for t in value]
        unique = list(dict.fromkeys(tags))
        if len(unique) > MAX_TAGS:
            raise GlanceError(
                413,
                detail=f"The limit has been exceeded on the number of allowed image tags. "
                f"Attempted: {len(unique)}, Maximum: {MAX_TAGS}",
            )
        return unique
    raise AssertionError(f"not a core attribute: {key}")  # pragma: no cover
