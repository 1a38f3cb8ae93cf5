"""Shards: one job split over K processes (K hosts, or the K pods of a Kubernetes Indexed Job).

Shard I of K owns the source images whose id hashes to I: the first 8 bytes of the SHA-256 of the id, big
endian, modulo K. That is the same on every host, every run and every Python (``hash()`` is salted per
process), whatever order the listing comes in and whenever each shard starts. A shard plans, copies, sweeps
and restores only what it owns, and keeps its journal (and its lock) in ``journal_dir/shard-I-of-K/``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

from pipeline.errors import UsageError

__all__ = ["INDEX_VARIABLE", "Shard", "shard_from_args"]

#: What Kubernetes sets in every pod of an Indexed Job.
INDEX_VARIABLE = "JOB_COMPLETION_INDEX"
MAX_SHARDS = 1024
_SPEC = re.compile(r"(\d+)/(\d+)")
_DIR = re.compile(r"shard-(\d+)-of-(\d+)")


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` (0-based) of ``count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS:
            raise UsageError(f"the number of shards must be between 1 and {MAX_SHARDS}, got {self.count}")
        if not 0 <= self.index < self.count:
            raise UsageError(f"shard index {self.index} is outside 0..{self.count - 1} (there are {self.count})")

    def owns(self, image_id: str) -> bool:
        """Whether this shard owns the source image ``image_id``."""
        return partition(image_id, self.count) == self.index

    @property
    def directory(self) -> str:
        """Its journal's directory under ``journal_dir``."""
        return f"shard-{self.index}-of-{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @classmethod
    def from_directory(cls, name: str) -> Shard | None:
        """The shard whose journal directory is called ``name``, or None for any other name."""
        match = _DIR.fullmatch(name)
        if match is None:
            return None
        index, count = int(match[1]), int(match[2])
        return cls(index, count) if 0 <= index < count <= MAX_SHARDS else None


def partition(image_id: str, count: int) -> int:
    """The shard (0..count-1) that owns source image ``image_id``; stable everywhere."""
    digest = hashlib.sha256(image_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % count


def shard_from_args(shard: str | None, shards: int | None, environ: Mapping[str, str]) -> Shard | None:
    """The shard the command line names: ``--shard I/K``, or ``--shards K`` with I from
    ``JOB_COMPLETION_INDEX`` (as Kubernetes sets it); None when neither is given. Bad values are usage
    errors (exit 2)."""
    if shard is not None and shards is not None:
        raise UsageError("use either --shard I/K or --shards K, not both")
    if shard is not None:
        match = _SPEC.fullmatch(shard.strip())
        if match is None:
            raise UsageError(f"--shard {shard!r}: expected I/K, like 0/3 (shard I of K, counted from 0)")
        return Shard(int(match[1]), int(match[2]))
    if shards is None:
        return None
    value = environ.get(INDEX_VARIABLE)
    if value is None or not value.strip().isdigit():
        shown = "not set" if value is None else f"{value!r}, not an index"
        raise UsageError(f"--shards {shards}: {INDEX_VARIABLE} is {shown}; Kubernetes sets it in the pods of "
                         "an Indexed Job (completionMode: Indexed), or use --shard I/K")  # fmt: skip
    return Shard(int(value), shards)
