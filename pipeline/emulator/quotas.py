"""Per-project image quotas, as Glance 33 enforces Keystone unified limits (``use_keystone_limits = True``).

A region's limits map a limit name to an integer and apply to every project, like registered limits of
the image service; a name that is absent is unlimited here (in real Glance an unregistered limit counts
as 0), and a negative value is unlimited, as Keystone's -1. What each limit counts and when it is
enforced follows ``glance/quota/keystone.py`` and its callers:

* ``image_count_total``: the project's images that are not killed, deleted or pending_delete; enforced on
  create with delta 1 (``images.py``: after the add_image policy, before the image factory).
* ``image_size_total`` (MiB): the sum of the sizes (bytes) of the project's images with a size and a live
  status, integer-divided by 1 MiB; enforced first thing on upload with delta = the announced size
  (``x-openstack-image-size``, else Content-Length; none: 0) // 1 MiB. Glance checks nothing once the
  data has arrived, so a chunked upload can go past the limit.
* ``image_count_uploading``: the project's images in saving, uploading or importing (and copying ones);
  enforced on upload with delta 0 after the image went to saving, so it counts itself; a refusal puts
  the image back to queued (``image_data.py``'s ``_restore``).
* ``image_stage_total`` (MiB): the sizes of the project's images in uploading or importing; enforced on
  stage (``PUT /v2/images/{id}/stage``), which the emulator does not serve, so it never refuses here.

A refusal is ``LimitExceeded``: 413 with Glance's ``LimitExceeded`` text around oslo.limit's
``ProjectOverLimit`` text as the explanation, rendered by Accept like every other error (Glance passes
``content_type='text/plain'`` on create, but webob picks the Content-Type from Accept all the same).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .fields import GlanceError

__all__ = [
    "IMAGE_COUNT_TOTAL",
    "IMAGE_COUNT_UPLOADING",
    "IMAGE_SIZE_TOTAL",
    "IMAGE_STAGE_TOTAL",
    "LIMITS",
    "MIB",
    "LimitExceeded",
    "enforce",
    "over_limit_text",
    "parse_limits",
    "usage",
]

IMAGE_COUNT_TOTAL = "image_count_total"
IMAGE_COUNT_UPLOADING = "image_count_uploading"
IMAGE_SIZE_TOTAL = "image_size_total"
IMAGE_STAGE_TOTAL = "image_stage_total"
#: The limits Glance 33 knows, in the order oslo.limit checks them (sorted).
LIMITS = (IMAGE_COUNT_TOTAL, IMAGE_COUNT_UPLOADING, IMAGE_SIZE_TOTAL, IMAGE_STAGE_TOTAL)
MIB = 1 << 20

_GONE = ("killed", "deleted", "pending_delete")
_UPLOADING = ("saving", "uploading", "importing")
_STAGING = ("uploading", "importing")
#: An image being copied to other stores (import's copy-image) counts as uploading and staging.
_COPYING = "os_glance_importing_to_stores"


class _Image(Protocol):
    """What usage counts of an image record (``store.ImageRecord``)."""

    owner: str
    status: str
    size: int | None
    properties: dict[str, str]


@dataclass
class LimitExceeded(GlanceError):
    """413 for a quota: ``resource`` is the limit name (what the region's stats count refusals by)."""

    resource: str = ""


def over_limit_text(project: str, resource: str, limit: int, current: int, delta: int) -> str:
    """Glance's ``LimitExceeded`` message around oslo.limit's ``ProjectOverLimit`` for one resource."""
    over = f"Resource {resource} is over limit of {limit} due to current usage {current} and delta {delta}"
    return (
        "The request returned a 413 Request Entity Too Large. This generally means that rate limiting or a quota "
        f"threshold was breached.\n\nThe response body:\nProject {project} is over a limit for [{over}]"
    )


def _copying(rec: _Image) -> bool:
    return bool(rec.properties.get(_COPYING)) and rec.status not in (*_UPLOADING, *_GONE)


def _current(images: Iterable[_Image], project: str, resource: str) -> int:
    """The project's usage of ``resource`` in Glance's units (images, or whole MiB)."""
    mine = [rec for rec in images if rec.owner == project]
    if resource == IMAGE_COUNT_TOTAL:
        return sum(rec.status not in _GONE for rec in mine)
    if resource == IMAGE_COUNT_UPLOADING:
        return sum(rec.status in _UPLOADING or _copying(rec) for rec in mine)
    sized = [rec for rec in mine if rec.size]
    if resource == IMAGE_SIZE_TOTAL:
        return sum(rec.size or 0 for rec in sized if rec.status not in _GONE) // MIB
    return sum(rec.size or 0 for rec in sized if rec.status in _STAGING or _copying(rec)) // MIB


def usage(images: Iterable[_Image], project: str) -> dict[str, int]:
    """Every limit's current usage for ``project`` (as Glance's ``/v2/info/usage`` computes it)."""
    records = list(images)
    return {name: _current(records, project, name) for name in LIMITS}


def enforce(limits: Mapping[str, int], images: Iterable[_Image], project: str, resource: str, delta: int) -> None:
    """oslo.limit's flat enforcement of one limit: LimitExceeded when usage + delta > limit."""
    limit = limits.get(resource)
    if limit is None or limit < 0:
        return
    current = _current(images, project, resource)
    if current + delta > limit:
        raise LimitExceeded(413, over_limit_text(project, resource, limit, current, delta), resource=resource)


def parse_limits(doc: Any) -> dict[str, int]:
    """A region's limits from JSON (``{"image_count_total": 2, ...}``), or ValueError."""
    if not isinstance(doc, dict):
        raise ValueError("limits are a JSON object of limit name to integer")
    limits: dict[str, int] = {}
    for name, value in doc.items():
        if name not in LIMITS:
            raise ValueError(f"unknown limit {name!r}; one of {list(LIMITS)}")
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"limit {name} must be an integer, not {value!r}")
        limits[name] = value
    return limits
