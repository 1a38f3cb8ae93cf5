"""Provenance: the ``imgmig_*`` properties that make an image this job's copy of one source image. Pure.

``is_own_copy`` judges an image on its own properties: a copy is this job's only when its ``imgmig_job``
property equals the job's name (or one of its ``[run] previous_names``) and it names its source
(``imgmig_source_id``). Every delete re-checks it on the image itself, whatever a server's list filter returned.

Two markers more: ``imgmig_adopted`` on an image taken over by ``[copy] adopt`` (its metadata is only ever added
to), and ``imgmig_retired_at`` on a copy a grace-period prune retired (deleted once the grace period is over).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any

from pipeline.models import Image

__all__ = [
    "PROVENANCE_PREFIX",
    "PROV_ADOPTED",
    "PROV_DEFAULTED",
    "PROV_JOB",
    "PROV_RETIRED_AT",
    "PROV_SOURCE_CHECKSUM",
    "PROV_SOURCE_ID",
    "PROV_SOURCE_REGION",
    "carries",
    "carries_provenance",
    "is_adopted",
    "is_own_copy",
    "iso_time",
    "provenance",
    "retired_at",
]

PROVENANCE_PREFIX = "imgmig_"
PROV_JOB = "imgmig_job"
PROV_SOURCE_ID = "imgmig_source_id"
PROV_SOURCE_REGION = "imgmig_source_region"
PROV_SOURCE_CHECKSUM = "imgmig_source_checksum"
#: The properties a copy took from ``defaults`` because its source lacked them (comma-separated names).
PROV_DEFAULTED = "imgmig_defaulted"
#: "true" on an image adopted as a copy (``[copy] adopt``): it was there before, so nothing it had is removed.
PROV_ADOPTED = "imgmig_adopted"
#: When a grace-period prune retired the copy (ISO 8601, UTC): hidden, deactivated, deleted after the grace.
PROV_RETIRED_AT = "imgmig_retired_at"


def provenance(job: str, source_region: str, image: Image) -> dict[str, str]:
    """The namespaced properties that identify a copy as this job's copy of ``image``."""
    return {
        PROV_JOB: job,
        PROV_SOURCE_ID: image.id,
        PROV_SOURCE_REGION: source_region,
        PROV_SOURCE_CHECKSUM: image.checksum or "",
    }


def is_own_copy(image: Image, job: str | Collection[str], source_id: str | None = None) -> bool:
    """Whether ``image`` is this job's copy (of ``source_id``, when given), judged on the image itself. ``job``: the
    job's name, or its names (the current one and its ``previous_names``)."""
    raw = image.raw
    names = raw.get(PROV_SOURCE_ID)
    owner = raw.get(PROV_JOB)
    if not isinstance(owner, str) or (owner != job if isinstance(job, str) else owner not in job):
        return False
    if not isinstance(names, str) or not names:
        return False
    return source_id is None or names == source_id


def carries_provenance(image: Image) -> bool:
    """Whether ``image`` carries any imgmig property (of any job): such an image is never adopted."""
    return any(key.startswith(PROVENANCE_PREFIX) for key in image.raw)


def is_adopted(image: Image) -> bool:
    return image.raw.get(PROV_ADOPTED) == "true"


def iso_time(at: float) -> str:
    """``at`` (seconds since the epoch) as ISO 8601 UTC, to the second: the form ``imgmig_retired_at`` takes."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def retired_at(image: Image) -> float | None:
    """When a grace-period prune retired this copy (seconds since the epoch), or None: not retired. A marker that
    cannot be read counts as retired now (kept for a whole grace period, never deleted early)."""
    value = image.raw.get(PROV_RETIRED_AT)
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return datetime.now(UTC).timestamp()
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def carries(image: Image, fields: Mapping[str, Any]) -> bool:
    """Whether ``image`` carries every provenance property of ``fields`` (then it is the copy we asked for)."""
    prov = {k: v for k, v in fields.items() if k.startswith(PROVENANCE_PREFIX)}
    return bool(prov) and all(image.raw.get(k) == v for k, v in prov.items())
