"""JSON documents written as they are made: a large report or view is never one string in memory.

``json_pieces`` lays a document out with one member per line; a member whose value is an iterator (a generator
that makes each item as it is written) becomes a list with one item per line. The text is the same JSON value
that ``json.dumps`` would write for the document with its iterators made into lists.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["joined", "json_pieces"]

#: How much text ``joined`` gathers before it hands a piece on.
_PIECE = 1 << 16


def json_pieces(doc: dict[str, Any], *, depth: int = 0) -> Iterator[str]:
    """``doc`` as JSON text, in pieces (its last piece ends with a newline when ``depth`` is 0)."""
    pad = "  " * (depth + 1)
    yield "{"
    for number, (key, value) in enumerate(doc.items()):
        yield ("," if number else "") + "\n" + pad + json.dumps(key) + ": "
        if isinstance(value, Iterator):
            yield "["
            first = True
            for item in value:
                yield ("\n" if first else ",\n") + pad + "  " + json.dumps(item, ensure_ascii=False)
                first = False
            yield "]" if first else "\n" + pad + "]"
        elif isinstance(value, dict) and any(isinstance(v, Iterator) for v in value.values()):
            yield from json_pieces(value, depth=depth + 1)
        else:
            yield json.dumps(value, ensure_ascii=False)
    yield ("\n" + "  " * depth if doc else "") + "}" + ("\n" if depth == 0 else "")


def joined(pieces: Iterable[str]) -> Iterator[bytes]:
    """``pieces`` encoded (UTF-8) and gathered into blocks of about 64 KiB, to be written a block at a time."""
    block: list[str] = []
    size = 0
    for piece in pieces:
        block.append(piece)
        size += len(piece)
        if size >= _PIECE:
            yield "".join(block).encode("utf-8")
            block, size = [], 0
    if block:
        yield "".join(block).encode("utf-8")
