"""References between images: a property of one image that names another image of the source region (an AMI-style
machine image's ``kernel_id`` and ``ramdisk_id``). Pure: discovery fetches what is referenced, this decides.

A copy must never point into the source region, so each reference follows the copy: in each target it names the
copy of the referenced image in that same target. Hence:

- a referenced image that is not selected is included in the run, with the reason (``kernel of boot-machine``);
- it is copied first: images come in an order where what is referenced precedes what references it;
- images joined by references form one group, and a sharded job gives the whole group to the shard of its
  smallest source id, so one shard copies it;
- a reference that cannot be resolved (the image is gone, belongs to another project and cannot be read, would
  never be copied, or the references form a loop) blocks the image that makes it, with the reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from pipeline.models import Image

__all__ = ["ReferenceGraph", "references_of"]


def references_of(image: Image, properties: Iterable[str]) -> dict[str, str]:
    """The references ``image`` makes: property -> the id of the image it names (non-empty strings only)."""
    found = {}
    for key in properties:
        value = image.raw.get(key)
        if isinstance(value, str) and value.strip():
            found[key] = value.strip()
    return found


def _what(prop: str) -> str:
    return prop.removesuffix("_id") or prop


@dataclass
class ReferenceGraph:
    """Who references whom, among the images of a run (selected or included)."""

    #: referrer id -> property -> referenced id
    refs: dict[str, dict[str, str]] = field(default_factory=dict)
    #: id of an image the run copies only because another references it -> why ("kernel of boot-machine")
    included: dict[str, str] = field(default_factory=dict)
    #: referrer id -> why it cannot be copied (a reference that cannot be resolved)
    unresolved: dict[str, str] = field(default_factory=dict)

    def add(self, referrer: Image, prop: str, referenced: str) -> None:
        self.refs.setdefault(referrer.id, {})[prop] = referenced

    def include(self, image_id: str, referrer: Image, prop: str) -> None:
        """``image_id`` joins the run because ``referrer`` names it in ``prop``."""
        self.included.setdefault(image_id, f"{_what(prop)} of {referrer.name or referrer.id}")

    def block(self, referrer_id: str, why: str) -> None:
        self.unresolved.setdefault(referrer_id, why)

    def referenced(self, image_id: str) -> dict[str, str]:
        """The references ``image_id`` makes (property -> referenced id)."""
        return self.refs.get(image_id, {})

    def close_loops(self) -> None:
        """Block every image on a loop of references (a copy of it could only ever name the source region)."""
        state: dict[str, int] = {}

        def visit(node: str, path: list[str]) -> None:
            state[node] = 1
            for target in self.refs.get(node, {}).values():
                if state.get(target) == 1:
                    loop = [*path[path.index(target) :], target] if target in path else [node, target]
                    for member in loop:
                        self.block(member, f"its references form a loop ({' -> '.join(loop)})")
                elif target not in state:
                    visit(target, [*path, target])
            state[node] = 2

        for node in sorted(self.refs):
            if node not in state:
                visit(node, [node])

    def spread_blocks(self) -> None:
        """An image that references a blocked image is blocked too: its copy could not name a copy."""
        changed = True
        while changed:
            changed = False
            for referrer, refs in self.refs.items():
                if referrer in self.unresolved:
                    continue
                for prop, target in refs.items():
                    if target in self.unresolved:
                        self.block(referrer, f"its {prop} names image {target}, which cannot be copied: "
                                             f"{self.unresolved[target]}")  # fmt: skip
                        changed = True
                        break

    def ordered(self, images: Sequence[Image]) -> list[Image]:
        """``images`` with every referenced image before the images that reference it (otherwise as given)."""
        if not self.refs:
            return list(images)
        by_id = {image.id: image for image in images}
        out: list[Image] = []
        placed: set[str] = set()
        # depth first, without recursion: a recursive closure refers to itself, a cycle that only the collector
        # frees, and a run plans with the collector off and then freezes what exists (``runner._long_lived``)
        for first in images:
            stack: list[tuple[Image, frozenset[str], bool]] = [(first, frozenset(), False)]
            while stack:
                image, seen, children_placed = stack.pop()
                if children_placed:
                    if image.id not in placed:
                        placed.add(image.id)
                        out.append(image)
                    continue
                if image.id in placed or image.id in seen:
                    continue
                stack.append((image, seen, True))
                targets = [by_id[t] for t in self.refs.get(image.id, {}).values() if t in by_id]
                stack += [(target, seen | {image.id}, False) for target in reversed(targets)]
        return out

    def roots(self) -> dict[str, str]:
        """Each image of a group joined by references -> the group's smallest id (its shard decides)."""
        parent: dict[str, str] = {}

        def find(node: str) -> str:
            parent.setdefault(node, node)
            while parent[node] != node:
                parent[node] = parent[parent[node]]
                node = parent[node]
            return node

        for referrer, refs in self.refs.items():
            for target in refs.values():
                a, b = find(referrer), find(target)
                if a != b:
                    parent[max(a, b)] = min(a, b)
        return {node: find(node) for node in parent}

    def dependents(self) -> dict[str, set[str]]:
        """Referenced id -> the ids of the images that reference it."""
        out: dict[str, set[str]] = {}
        for referrer, refs in self.refs.items():
            for target in refs.values():
                out.setdefault(target, set()).add(referrer)
        return out

    def mapped(self, image_id: str, copy_ids: Mapping[str, str]) -> dict[str, str | None]:
        """The references ``image_id`` makes, each rewritten to the copy (in one target, ``copy_ids``: source id ->
        copy id) of the image it names; None where that copy is not known."""
        return {prop: copy_ids.get(target) for prop, target in self.refs.get(image_id, {}).items()}
