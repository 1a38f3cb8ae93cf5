"""Adoption (``[copy] adopt = "exact"``), the decision: which image already in a target, made without imgmig, is
identical to a selected source, so that it can be taken over as that source's copy instead of uploading the same
bytes again. Pure.

An image is a candidate when it carries no imgmig property at all, is active and is owned by the target project
(discovery keeps only those). It is adopted as the copy of a selected source when its name, size, ``checksum``,
``disk_format`` and ``container_format`` equal the source's, and so do ``os_hash_algo``/``os_hash_value`` where both
report one. A candidate with a source's name that fails any of these is a near miss: reported, never touched.
Of two candidates for one source the oldest is adopted; each candidate goes to one source at most.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from pipeline.models import Image

__all__ = ["Adoptable", "adoption_notes", "differences", "match_adoptable", "near_miss_notes", "oldest"]


@dataclass(frozen=True, slots=True)
class Adoptable:
    """What one target holds that this job may adopt: candidates per source id (oldest first), and the near misses
    per source id (why each image with the source's name is not identical)."""

    candidates: Mapping[str, tuple[Image, ...]] = field(default_factory=dict)
    near: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def differences(source: Image, image: Image) -> list[str]:
    """Why ``image`` is not an exact copy of ``source`` (empty: it is)."""
    out = []
    if not source.checksum:
        out.append("the source publishes no checksum, so identical data cannot be proven")
    for key in ("size", "checksum", "disk_format", "container_format"):
        mine, theirs = source.raw.get(key), image.raw.get(key)
        if mine != theirs:
            out.append(f"{key} {theirs!r}, the source's is {mine!r}")
    algo, other = source.os_hash_algo, image.os_hash_algo
    if algo and other and algo.lower() == other.lower() and source.os_hash_value != image.os_hash_value:
        out.append(f"os_hash_value ({algo}) differs")
    return out


def match_adoptable(images: Iterable[Image], candidates: Sequence[Image]) -> Adoptable:
    """The candidates (images of a target without provenance, active, the target project's) that are identical to
    one of ``images`` (the selected sources), and the near misses."""
    by_name: dict[str, list[Image]] = {}
    for image in sorted(candidates, key=lambda i: (i.raw.get("created_at") or "", i.id)):
        if image.name:
            by_name.setdefault(image.name, []).append(image)
    if not by_name:
        return Adoptable()
    taken: set[str] = set()
    found: dict[str, tuple[Image, ...]] = {}
    near: dict[str, tuple[str, ...]] = {}
    for source in images:
        named = by_name.get(source.name or "")
        if not named:
            continue
        exact, misses = [], []
        for image in named:
            if image.id in taken:
                continue
            why = differences(source, image)
            if why:
                misses.append(f"image {image.id} has its name but not its data ({'; '.join(why)})")
            else:
                exact.append(image)
        if exact:
            found[source.id] = tuple(exact)
            taken.update(i.id for i in exact)
        if misses:
            near[source.id] = tuple(misses)
    return Adoptable(found, near)


def adoption_notes(label: str, source: Image, adopted: Image, adoptable: Adoptable) -> list[str]:
    """What a plan says about the other candidates of a source whose copy is ``adopted`` in ``label``."""
    others = [i for i in adoptable.candidates.get(source.id, ()) if i.id != adopted.id]
    return [f"{label}: image {i.id} is also identical to source image {source.id} ({source.name}); not adopted (the "
            f"oldest, {adopted.id}, was) and left as it is" for i in others]  # fmt: skip


def near_miss_notes(label: str, source: Image, adoptable: Adoptable | None) -> list[str]:
    """The near misses of a source that gets a new copy in ``label``, as plan notes."""
    if adoptable is None:
        return []
    return [f"{label}: not adopted for source image {source.id} ({source.name}): {why}"
            for why in adoptable.near.get(source.id, ())]  # fmt: skip


def oldest(candidates: Mapping[str, Sequence[Image]], source_id: str) -> Image | None:
    found = candidates.get(source_id)
    return found[0] if found else None
