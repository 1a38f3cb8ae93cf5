"""Deterministic synthetic image bytes: any size, generated on read, never stored.

Byte ``i`` of a synthetic image depends only on (seed, i), so Range reads and resumed downloads see the
same bytes as a full read. The stream is a 1 MiB random block, rotated by a different amount for every
MiB, so it is not a short repeating pattern a compressor or a buggy offset calculation could hide behind.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from functools import lru_cache

__all__ = ["BLOCK", "digests", "synthetic_bytes", "synthetic_chunks"]

BLOCK = 1 << 20
_STRIDE = 104_729  # a prime, so rotations cycle through every offset


@lru_cache(maxsize=16)
def _block(seed: str) -> bytes:
    return random.Random(f"imgmig-synthetic:{seed}").randbytes(BLOCK)


def _rotated(seed: str, index: int) -> bytes:
    block = _block(seed)
    shift = (index * _STRIDE) % BLOCK
    return block[shift:] + block[:shift]


def synthetic_chunks(seed: str, size: int, start: int = 0, end: int | None = None) -> Iterator[bytes]:
    """Bytes [start, end) of the synthetic image (seed, size), in pieces of at most 1 MiB."""
    stop = size if end is None else min(end, size)
    pos = start
    while pos < stop:
        index, offset = divmod(pos, BLOCK)
        take = min(BLOCK - offset, stop - pos)
        yield _rotated(seed, index)[offset : offset + take]
        pos += take


def synthetic_bytes(seed: str, size: int, start: int = 0, end: int | None = None) -> bytes:
    """Bytes [start, end) as one bytes object (for small ranges and tests)."""
    return b"".join(synthetic_chunks(seed, size, start, end))


@lru_cache(maxsize=64)
def digests(seed: str, size: int) -> tuple[str, str]:
    """(md5, sha512) hex of the whole synthetic image; cached because large images take seconds."""
    md5 = hashlib.md5(usedforsecurity=False)
    sha = hashlib.sha512()
    for chunk in synthetic_chunks(seed, size):
        md5.update(chunk)
        sha.update(chunk)
    return md5.hexdigest(), sha.hexdigest()
