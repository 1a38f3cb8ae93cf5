"""Which source images a job selects (``[select]``, ANDed), and, when it selects none at all, what came close:
the near misses an operator can act on (a tag that differs only by case, a name glob that matches nothing). Pure.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from datetime import datetime

from pipeline.config import Select
from pipeline.models import Image

__all__ = ["describe_selection", "near_misses", "select_images"]


def _updated(image: Image) -> datetime | None:
    try:
        return datetime.fromisoformat((image.updated_at or "").replace("Z", "+00:00"))
    except ValueError:
        return None


def select_images(images: Iterable[Image], select: Select, owner: str | None) -> list[Image]:
    """The images the ``[select]`` rules pick (ANDed); non-active ones stay in, to be reported."""
    picked = []
    for image in images:
        if select.ids and image.id not in select.ids:
            continue
        if owner and image.owner != owner:
            continue
        if not select.ids and image.visibility not in select.visibility:
            continue
        if select.names and not any(fnmatch.fnmatchcase(image.name or "", g) for g in select.names):
            continue
        if any(tag not in image.tags for tag in select.tags):
            continue
        if (select.size_min is not None or select.size_max is not None) and image.size is None:
            continue
        if select.size_min is not None and (image.size or 0) < select.size_min:
            continue
        if select.size_max is not None and (image.size or 0) > select.size_max:
            continue
        if select.nhncloud_product and image.raw.get("nhncloud_product") != select.nhncloud_product:
            continue
        if select.updated_since is not None:
            updated = _updated(image)
            if updated is None or updated < select.updated_since:
                continue
        if any(image.raw.get(k) != v for k, v in select.properties.items()):
            continue
        picked.append(image)
    return picked


def describe_selection(select: Select, owner: str | None) -> str:
    """The filters of a selection, in words, for a message."""
    parts = []
    if select.ids:
        parts.append(f"ids {list(select.ids)}")
    if select.names:
        parts.append(f"names {list(select.names)}")
    if select.tags:
        parts.append(f"tags {list(select.tags)}")
    if select.properties:
        parts.append(f"properties {dict(select.properties)}")
    if not select.ids:
        parts.append(f"visibility {', '.join(select.visibility)}")
    if owner:
        parts.append(f"owner {owner}")
    for key in ("size_min", "size_max", "nhncloud_product", "updated_since"):
        value = getattr(select, key)
        if value is not None:
            parts.append(f"{key} {value}")
    return "; ".join(parts)


def near_misses(select: Select, owner: str | None, visible: Sequence[Image]) -> list[str]:
    """Why a selection that matched nothing came close, from the images the owner has (``visible``: listed without
    the tag and property filters): each tag or name glob that matches none of them, with the values that differ
    only by case, and how many images each filter alone would keep."""
    mine = [image for image in visible if not owner or image.owner == owner]
    out = [f"the source holds {len(mine)} image(s) of owner {owner or 'any'}" + ("" if mine else ": none at all")]
    for tag in select.tags:
        if any(tag in image.tags for image in mine):
            continue
        alike = sorted({t for image in mine for t in image.tags if t.casefold() == tag.casefold()})
        hint = f"; {', '.join(repr(t) for t in alike)} differs only by case" if alike else ""
        out.append(f"tag {tag!r} is on none of them{hint}")
    for glob in select.names:
        if any(fnmatch.fnmatchcase(image.name or "", glob) for image in mine):
            continue
        alike = [image.name or "" for image in mine if fnmatch.fnmatchcase((image.name or "").casefold(),
                                                                          glob.casefold())]  # fmt: skip
        hint = f" (it would match {len(alike)} if the case were ignored, e.g. {alike[0]!r})" if alike else ""
        out.append(f"name glob {glob!r} matches none of them{hint}")
    for key, value in select.properties.items():
        if not any(image.raw.get(key) == value for image in mine):
            seen = sorted({str(image.raw[key]) for image in mine if key in image.raw})[:5]
            out.append(f"property {key} = {value!r} is on none of them" + (f" (values seen: {seen})" if seen else ""))
    if not select.ids:
        kept = [image for image in mine if image.visibility in select.visibility]
        if mine and not kept:
            out.append(f"none of them has visibility {', '.join(select.visibility)}")
    return out
