"""Provenance: the ``imgmig_*`` properties that make an image this job's copy of one source image. Pure.

``is_own_copy`` judges an image on its own properties: a copy is this job's only when its ``imgmig_job``
property equals the job's name and it names its source (``imgmig_source_id``). Every delete re-checks it on
the image itself, whatever a server's list filter returned.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.models import Image

__all__ = [
    "PROVENANCE_PREFIX",
    "PROV_DEFAULTED",
    "PROV_JOB",
    "PROV_SOURCE_CHECKSUM",
    "PROV_SOURCE_ID",
    "PROV_SOURCE_REGION",
    "carries",
    "is_own_copy",
    "provenance",
]

PROVENANCE_PREFIX = "imgmig_"
PROV_JOB = "imgmig_job"
PROV_SOURCE_ID = "imgmig_source_id"
PROV_SOURCE_REGION = "imgmig_source_region"
PROV_SOURCE_CHECKSUM = "imgmig_source_checksum"
#: The properties a copy took from ``defaults`` because its source lacked them (comma-separated names).
PROV_DEFAULTED = "imgmig_defaulted"


def provenance(job: str, source_region: str, image: Image) -> dict[str, str]:
    """The namespaced properties that identify a copy as this job's copy of ``image``."""
    return {
        PROV_JOB: job,
        PROV_SOURCE_ID: image.id,
        PROV_SOURCE_REGION: source_region,
        PROV_SOURCE_CHECKSUM: image.checksum or "",
    }


def is_own_copy(image: Image, job: str, source_id: str | None = None) -> bool:
    """Whether ``image`` is this job's copy (of ``source_id``, when given), judged on the image itself."""
    names = image.raw.get(PROV_SOURCE_ID)
    if image.raw.get(PROV_JOB) != job or not isinstance(names, str) or not names:
        return False
    return source_id is None or names == source_id


def carries(image: Image, fields: Mapping[str, Any]) -> bool:
    """Whether ``image`` carries every provenance property of ``fields`` (then it is the copy we asked for)."""
    prov = {k: v for k, v in fields.items() if k.startswith(PROVENANCE_PREFIX)}
    return bool(prov) and all(image.raw.get(k) == v for k, v in prov.items())
