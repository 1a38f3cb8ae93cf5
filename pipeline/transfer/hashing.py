"""Digests computed as bytes flow, and the verdicts drawn from them. Pure: no I/O, no clock.

One ``MultiHasher`` pass computes md5 (Glance's ``checksum``) plus every ``os_hash_algo`` involved
(the source's, usually sha512, and any other a target reports). ``judge_stream`` draws the verdict at
EOF: ok, mismatch or incomplete. ``judge_target`` compares what a target reports after upload with
what was computed in flight. Both decide with the one digest rule, ``models.Content.held_by``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.models import Content, Verdict, Verification

__all__ = ["Evidence", "MultiHasher", "judge_stream", "judge_target"]


class MultiHasher:
    """md5 plus any hashlib algorithms, updated together in one pass."""

    def __init__(self, algorithms: Iterable[str] = ()) -> None:
        names = {"md5", *(a.lower() for a in algorithms if a)}
        self._hashes: dict[str, Any] = {}
        for name in sorted(names):
            try:
                self._hashes[name] = hashlib.md5(usedforsecurity=False) if name == "md5" else hashlib.new(name)
            except ValueError:
                continue  # an algorithm this Python lacks: that target's value is checked by re-reading
        self.bytes = 0

    @property
    def algorithms(self) -> frozenset[str]:
        return frozenset(self._hashes)

    def update(self, data: bytes | memoryview) -> None:
        """Feed the next bytes (hashlib releases the GIL for large buffers, so threads help)."""
        for h in self._hashes.values():
            h.update(data)
        self.bytes += len(data)

    def hexdigests(self) -> dict[str, str]:
        return {name: h.hexdigest() for name, h in self._hashes.items()}


@dataclass(frozen=True, slots=True)
class Evidence:
    """Proof a copy is right: digests computed in flight and those the target reported."""

    size: int
    computed: Mapping[str, str]
    reported: Mapping[str, Any] = field(default_factory=dict)
    unverified_source: bool = False

    def to_json(self) -> dict[str, Any]:
        doc = {"size": self.size, "computed": dict(self.computed),
               "reported": {k: v for k, v in self.reported.items() if k != "id"}}  # fmt: skip
        if self.unverified_source:
            doc["unverified_source"] = True
        return doc


def judge_stream(source: Content, received: Content) -> Verification:
    """The verdict on a finished source stream: did we get exactly the bytes the source describes? A stream cut
    short is incomplete (another read may finish it); otherwise ``Content.held_by`` decides."""
    if source.size is not None and received.size is not None and received.size < source.size:
        return Verification(Verdict.INCOMPLETE, f"received {received.size} of {source.size} bytes")
    return source.held_by(received)


def judge_target(reported: Mapping[str, Any], sent: Content) -> Verification:
    """Does a target's own record (status, size, checksum, os_hash_value) match what we sent? Every digest the
    target states must have been computed from the bytes sent (``held_by(complete=True)``)."""
    status = reported.get("status")
    if status != "active":
        return Verification(Verdict.INCOMPLETE, f"target image is {status}, not active")
    return sent.held_by(Content.stated(reported), complete=True)
