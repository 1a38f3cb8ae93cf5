"""Image fields as Glance 33 (and the NHN guide) define them, and Glance's error answers (webob's shape).

Used by create (POST) and update (PATCH) alike, so both reject the same things with the same status and
message as the real server (see shared/reference/glance-behaviour.md). Where the NHN guide is stricter
than Glance, the NHN rule is applied and the guide is cited.

Glance raises almost every error as ``webob.exc.HTTPxxx(explanation=msg)``, so the message replaces the
generic webob sentence; a few pass the message as ``detail`` instead ("Access was denied to this
resource.<br /><br />\\nAttribute 'location' is reserved."). ``GlanceError`` keeps that distinction.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .schemas import DEFAULT_CONTAINER_FORMATS, DEFAULT_DISK_FORMATS, IMAGE_SCHEMA, schema_error_text

__all__ = [
    "BASE_PROPERTIES",
    "CONTAINER_FORMATS",
    "CORE_WRITABLE",
    "DISK_FORMATS",
    "MAX_MEMBERS",
    "MAX_PROPERTIES",
    "MAX_TAGS",
    "GlanceError",
    "check_min_values",
    "check_nhn_tags",
    "check_schema",
    "check_visibility",
    "is_reserved",
    "parse_create",
    "properties_quota_error",
    "tags_quota_error",
    "validate_tag",
]

#: The enums of Glance's default image schema (a region may be configured with other formats).
DISK_FORMATS = (None, *DEFAULT_DISK_FORMATS)
CONTAINER_FORMATS = (None, *DEFAULT_CONTAINER_FORMATS)
MAX_PROPERTIES = 128
MAX_TAGS = 128
MAX_MEMBERS = 128

#: Glance's RequestDeserializer._base_properties: the body keys that are not custom properties.
BASE_PROPERTIES = (
    "checksum", "created_at", "container_format", "disk_format", "id", "min_disk", "min_ram", "name",
    "size", "virtual_size", "status", "tags", "owner", "updated_at", "visibility", "protected", "os_hidden",
)  # fmt: skip
#: Core attributes a user may set; everything else is a string-valued custom property.
CORE_WRITABLE = frozenset(
    {"name", "visibility", "protected", "min_ram", "min_disk", "disk_format", "container_format",
     "tags", "os_hidden"}
)  # fmt: skip
_RESERVED = frozenset({"location", "deleted", "deleted_at"})
_RESERVED_NS = "os_glance"

_TITLES = {
    400: ("Bad Request", "The server could not comply with the request since it is either malformed or "
          "otherwise incorrect."),
    401: ("Unauthorized", "This server could not verify that you are authorized to access the document "
          "you requested. Either you supplied the wrong credentials (e.g., bad password), or your browser "
          "does not understand how to supply the credentials required."),
    403: ("Forbidden", "Access was denied to this resource."),
    404: ("Not Found", "The resource could not be found."),
    405: ("Method Not Allowed", "The server could not comply with the request since it is either malformed "
          "or otherwise incorrect."),
    408: ("Request Timeout", "The server has waited too long for the request to be sent by the client."),
    409: ("Conflict", "There was a conflict when trying to complete your request."),
    413: ("Request Entity Too Large", "The body of your request was too large for this server."),
    415: ("Unsupported Media Type", "The server could not comply with the request since it is either "
          "malformed or otherwise incorrect."),
    416: ("Request Range Not Satisfiable", "The Range requested is not available."),
    429: ("Too Many Requests", "The client has sent too many requests in a given amount of time"),
    500: ("Internal Server Error", "The server has either erred or is incapable of performing the "
          "requested operation."),
    502: ("Bad Gateway", "Bad gateway."),
    503: ("Service Unavailable", "The server is currently unavailable. Please try again at a later time."),
    504: ("Gateway Timeout", "The gateway has timed out."),
}  # fmt: skip
_BR = re.compile(r"<br.*?>", re.IGNORECASE | re.DOTALL)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_TAG = re.compile(r"<.*?>", re.DOTALL)


def _strip_tags(value: str) -> str:
    """webob's strip_tags: newlines become spaces, <br> becomes a newline, other markup goes."""
    value = value.replace("\n", " ").replace("\r", "")
    return _TAG.sub("", _COMMENT.sub("", _BR.sub("\n", value)))


def _negotiate(accept: str) -> str | None:
    """webob's choice between text/html and application/json for ``Accept`` (None: text/plain).

    Glance reads ``environ.get('HTTP_ACCEPT', '')``, so a missing or empty header matches nothing and the
    error is plain text; an unparseable header accepts everything (text/html).
    """
    if not accept.strip():
        return None
    ranges: list[tuple[str, float]] = []
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if not media:
            continue
        if "/" not in media:
            return "text/html"
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    return "text/html"
        ranges.append((media.lower(), q))
    best, best_q = None, 0.0
    for offer in ("text/html", "application/json"):
        kind = offer.split("/")[0]
        matched = [(3 if m == offer else 2 if m == f"{kind}/*" else 1, q)
                   for m, q in ranges if m in (offer, f"{kind}/*", "*/*")]  # fmt: skip
        q = max(matched)[1] if matched else 0.0
        if q > best_q:
            best, best_q = offer, q
    return best


@dataclass
class GlanceError(Exception):
    """An error answer as webob renders Glance's exceptions: JSON, HTML or plain text by ``Accept``.

    ``explanation`` replaces webob's generic sentence for the status (Glance's usual
    ``explanation=msg``); ``detail`` follows it; ``template`` is a webob exception's own body template
    (405, 415), already filled in except for ``${detail}``.
    """

    status: int
    explanation: str | None = None
    detail: str = ""
    headers: dict[str, str] | None = None
    template: str | None = None

    @property
    def title(self) -> str:
        return _TITLES.get(self.status, ("Error", ""))[0]

    def _text(self, escape: Any) -> str:
        if self.template is not None:
            return self.template.replace("${detail}", escape(self.detail))
        explanation = self.explanation
        if explanation is None:
            explanation = _TITLES.get(self.status, ("", ""))[1]
        return f"{escape(explanation)}<br /><br />\n{escape(self.detail)}\n\n"

    def body(self, accept: str) -> tuple[bytes, str]:
        """(body, content type) for the client's Accept header, as webob renders it."""
        code = f"{self.status} {self.title}"
        kind = _negotiate(accept)
        if kind == "application/json":
            doc = {"message": self._text(str), "code": code, "title": self.title}
            return json.dumps(doc).encode(), "application/json"
        if kind is None:
            return f"{code}\n\n{_strip_tags(self._text(str))}".encode(), "text/plain; charset=UTF-8"
        text = self._text(lambda s: html.escape(s, quote=True))
        page = (f"<html>\n <head>\n  <title>{code}</title>\n </head>\n <body>\n  <h1>{code}</h1>\n"
                f"  {text}\n </body>\n</html>")  # fmt: skip
        return page.encode(), "text/html; charset=UTF-8"


def is_reserved(key: str) -> bool:
    """Keys Glance reserves for itself: location, deleted, deleted_at and the os_glance namespace."""
    return key in _RESERVED or key.startswith(_RESERVED_NS)


def check_schema(doc: dict[str, Any], schema: dict[str, Any] = IMAGE_SCHEMA) -> None:
    """400 with jsonschema's wording when ``doc`` (a whole or partial image) fails the image schema (the
    region's, whose format enums follow its configuration)."""
    text = schema_error_text(doc, schema)
    if text is not None:
        raise GlanceError(400, text)


def check_min_values(doc: dict[str, Any]) -> None:
    """Glance's domain check on min_ram/min_disk (the schema only asks for integers)."""
    for key in ("min_ram", "min_disk"):
        value = doc.get(key)
        if isinstance(value, int) and value < 0:
            raise GlanceError(400, f"Invalid value '{value}' for parameter '{key}': Cannot be a negative "
                                   "value")  # fmt: skip


def validate_tag(tag: str) -> str:
    """A valid tag for PUT /tags/{tag}: Glance's schema check, plus NHN's 'no leading underscore'."""
    check_schema({"tags": [tag]})
    # NHN guide, Add Tag: "(Caution) Tags starting with _ are not allowed" (Glance itself allows them)
    if tag.startswith("_"):
        raise GlanceError(400, f"Tag '{tag}' is not allowed: tags starting with _ are reserved.")
    return tag


def check_nhn_tags(tags: list[str]) -> None:
    """NHN guide, Add Tag: "(Caution) Tags starting with _ are not allowed", for create and PATCH too."""
    for tag in tags:
        if tag.startswith("_"):
            raise GlanceError(400, f"Tag '{tag}' is not allowed: tags starting with _ are reserved.")


def tags_quota_error(count: int) -> GlanceError:
    return GlanceError(413, "The limit has been exceeded on the number of allowed image tags. "
                            f"Attempted: {count}, Maximum: {MAX_TAGS}")  # fmt: skip


def properties_quota_error(count: int) -> GlanceError:
    return GlanceError(413, "The limit has been exceeded on the number of allowed image properties. "
                            f"Attempted: {count}, Maximum: {MAX_PROPERTIES}")  # fmt: skip


# === create (POST /v2/images), in Glance's order of checks

#: RequestDeserializer._disallowed_properties: refused before the schema is even consulted.
_DISALLOWED = ("direct_url", "self", "file", "schema", "stores")
#: ImageFactory._readonly_properties (checked after the schema, so a bad enum value gives 400 first).
_READ_ONLY_ON_CREATE = ("created_at", "updated_at", "status", "checksum", "size", "virtual_size")


def parse_create(
    body: Any, tenant: str, *, schema: dict[str, Any] = IMAGE_SCHEMA, admit: Callable[[], None] | None = None
) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """(core fields, custom properties, tags) of a create request, or Glance's error for it.

    ``schema`` is the region's image schema; ``admit`` runs where Glance's controller enforces the
    image_count_total quota: after the request and the add_image policy passed, before the image factory's
    own checks (read-only attributes, minimums, tag and property quotas).
    """
    if isinstance(body, list):
        # Glance 33 bug kept on purpose: a JSON array passes the body-type check and crashes later (500)
        raise GlanceError(500)
    if not isinstance(body, dict):
        raise GlanceError(400, "Unexpected body type. Expected list/dict.")
    for key in _DISALLOWED:
        if key in body:
            raise GlanceError(403, f"Attribute '{key}' is read-only.")
    check_schema(body, schema)
    core = {k: body[k] for k in BASE_PROPERTIES if k in body}
    props = {k: v for k, v in body.items() if k not in core}
    for key in props:
        if len(key) > 255:
            raise GlanceError(400, "Custom property should not be greater than 255 characters.")
        if is_reserved(key):
            raise GlanceError(403, detail=f"Attribute '{key}' is reserved.")
    # NHN guide, Create Image: name and os_type are required ("O") request fields
    for required in ("name", "os_type"):
        if body.get(required) in (None, ""):
            raise GlanceError(400, f"'{required}' is a required property")
    owner = core.get("owner")
    if owner is not None and owner != tenant:
        raise GlanceError(403, detail=f"You are not permitted to create images owned by '{owner}'")
    check_visibility(core.get("visibility"))
    if admit is not None:
        admit()
    for key in _READ_ONLY_ON_CREATE:
        if key in core:
            raise GlanceError(403, f"Attribute '{key}' is read-only.")
    if "locations" in props:
        raise GlanceError(403, "Attribute 'locations' is reserved.")
    # Glance 33 quirk kept on purpose: os_hash_algo/os_hash_value at create are silently ignored
    props.pop("os_hash_algo", None)
    props.pop("os_hash_value", None)
    check_min_values(core)
    tags = list(dict.fromkeys(core.pop("tags", [])))
    check_nhn_tags(tags)
    if len(props) > MAX_PROPERTIES:
        raise properties_quota_error(len(props))
    if len(tags) > MAX_TAGS:
        raise tags_quota_error(len(tags))
    return core, props, tags


def check_visibility(value: Any) -> None:
    """Policy on visibility values that pass the schema: users cannot publicize; NHN: no community."""
    if value == "public":
        raise GlanceError(403, "You are not authorized to complete publicize_image action.")
    # NHN guide, Create Image / Change Visibility: visibility is "private or shared" for users
    if value == "community":
        raise GlanceError(403, "You are not authorized to complete communitize_image action.")
