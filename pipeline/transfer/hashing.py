"""Digests computed as bytes flow, and the verdicts drawn from them. Pure: no I/O, no clock.

One ``MultiHasher`` pass computes md5 (Glance's ``checksum``) plus every ``os_hash_algo`` involved
(the source's, usually sha512, and any other a target reports). ``judge_stream`` draws the verdict at
EOF: ok, mismatch or incomplete. ``judge_target`` compares what a target reports after upload with
what was computed in flight.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Evidence", "Expected", "MultiHasher", "Verdict", "Verification", "judge_stream", "judge_target"]


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
class Expected:
    """What the source says about its bytes."""

    size: int | None
    checksum: str | None
    hash_algo: str | None
    hash_value: str | None

    @property
    def verifiable(self) -> bool:
        """Whether the source published any digest to check the stream against."""
        return bool(self.checksum or (self.hash_algo and self.hash_value))


class Verdict(enum.Enum):
    OK = "ok"
    MISMATCH = "mismatch"
    INCOMPLETE = "incomplete"


@dataclass(frozen=True, slots=True)
class Verification:
    verdict: Verdict
    reason: str = ""
    #: True when the source published no digest: the computed ones are recorded but unchecked.
    unverified_source: bool = False

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.OK


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


def judge_stream(expected: Expected, received: int, digests: Mapping[str, str]) -> Verification:
    """The verdict on a finished source stream: did we get exactly the bytes the source describes?"""
    if expected.size is not None and received < expected.size:
        return Verification(Verdict.INCOMPLETE, f"received {received} of {expected.size} bytes")
    if expected.size is not None and received > expected.size:
        return Verification(Verdict.MISMATCH, f"received {received} bytes, source says {expected.size}")
    if expected.checksum and digests.get("md5") != expected.checksum:
        return Verification(
            Verdict.MISMATCH, f"md5 {digests.get('md5')} does not match source checksum {expected.checksum}"
        )
    algo = (expected.hash_algo or "").lower()
    if algo and expected.hash_value and algo in digests and digests[algo] != expected.hash_value:
        return Verification(Verdict.MISMATCH, f"{algo} does not match source os_hash_value")
    return Verification(Verdict.OK, unverified_source=not expected.verifiable)


def judge_target(reported: Mapping[str, Any], size: int, digests: Mapping[str, str]) -> Verification:
    """Does a target's own record (status, size, checksum, os_hash_value) match what we sent?"""
    status = reported.get("status")
    if status != "active":
        return Verification(Verdict.INCOMPLETE, f"target image is {status}, not active")
    if reported.get("size") != size:
        return Verification(Verdict.MISMATCH, f"target size {reported.get('size')} != {size}")
    if reported.get("checksum") != digests.get("md5"):
        return Verification(Verdict.MISMATCH, f"target checksum {reported.get('checksum')} != {digests.get('md5')}")
    algo = str(reported.get("os_hash_algo") or "").lower()
    value = reported.get("os_hash_value")
    if algo and value:
        if algo not in digests:
            return Verification(Verdict.INCOMPLETE, f"target uses {algo}, which was not computed in flight")
        if value != digests[algo]:
            return Verification(Verdict.MISMATCH, f"target {algo} does not match the bytes sent")
    return Verification(Verdict.OK)
