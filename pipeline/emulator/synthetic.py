"""Deterministic synthetic image bytes: any size, generated on read, never stored.

Byte ``i`` of a synthetic image depends only on (seed, i), so Range reads and resumed downloads see the
same bytes as a full read. The stream is a 1 MiB random block, rotated by a different amount for every
MiB, so it is not a short repeating pattern a compressor or a buggy offset calculation could hide behind. A seed
that starts with ``qcow2:`` gives an image whose first 512 bytes are a clean qcow2 header (what a format inspector
reads): a synthetic image labelled qcow2 is then a qcow2 to it.
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections.abc import Iterator
from functools import lru_cache

__all__ = ["BLOCK", "QCOW2", "digests", "qcow2_header", "synthetic_bytes", "synthetic_chunks"]

BLOCK = 1 << 20
_STRIDE = 104_729  # a prime, so rotations cycle through every offset


@lru_cache(maxsize=16)
def _block(seed: str) -> bytes:
    return random.Random(f"imgmig-synthetic:{seed}").randbytes(BLOCK)


def _rotated(seed: str, index: int) -> bytes:
    block = _block(seed)
    shift = (index * _STRIDE) % BLOCK
    return block[shift:] + block[:shift]


QCOW2 = "qcow2:"


def qcow2_header(size: int) -> bytes:
    """A clean qcow2 (version 3) header of an image of ``size`` bytes, padded to 512 bytes."""
    header = struct.pack(">4sIQIIQIIQQIIQ", b"QFI\xfb", 3, 0, 0, 16, size, 0, 0, 0, 0, 0, 0, 0)
    header += struct.pack(">QQQII", 0, 0, 0, 4, 104)
    return header + bytes(512 - len(header))


def synthetic_chunks(seed: str, size: int, start: int = 0, end: int | None = None) -> Iterator[bytes]:
    """Bytes [start, end) of the synthetic image (seed, size), in pieces of at most 1 MiB."""
    stop = size if end is None else min(end, size)
    head = qcow2_header(size) if seed.startswith(QCOW2) and size >= 512 else b""
    pos = start
    while pos < stop:
        index, offset = divmod(pos, BLOCK)
        take = min(BLOCK - offset, stop - pos)
        piece = _rotated(seed, index)[offset : offset + take]
        if pos < len(head):
            cut = min(len(head), pos + take) - pos
            piece = head[pos : pos + cut] + piece[cut:]
        yield piece
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
