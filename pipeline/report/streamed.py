"""JSON documents written as they are made: a large report or view is never one string in memory.

``json_pieces`` lays a document out with one member per line; a member whose value is an iterator (a generator
that makes each item as it is written) or a ``Lazy`` becomes a list with one item per line. The text is the same
JSON value that ``json.dumps`` would write for the document with those made into lists. ``imgmig status --json``,
``plan --json`` and ``run --report`` are written this way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = ["Lazy", "encode", "gathered", "joined", "json_pieces"]

#: How much text ``gathered`` gathers before it hands a piece on (a write per item cost almost as much as encoding
#: it).
_PIECE = 1 << 16


class Lazy:
    """A list member made one item at a time each time it is iterated (``json_pieces`` writes it as it goes), so
    showing it holds no second copy of what it is made from."""

    def __init__(self, make: Callable[[], Iterator[Any]]) -> None:
        self.make = make

    def __iter__(self) -> Iterator[Any]:
        return self.make()


def _encoder() -> Callable[[Any], str]:
    """``json.dumps(value, ensure_ascii=False)``, without making an encoder on each call: the C encoder that
    ``json.JSONEncoder.encode`` makes for each value, made once (a sixth of the time of encoding an image of
    ``status``); no check for circular values (what is written comes from JSON or from plain values)."""
    encoder = json.JSONEncoder(ensure_ascii=False)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # a Python without the C accelerator
        return encoder.encode
    encode = make(None, encoder.default, json.encoder.encode_basestring, None, encoder.key_separator,
                  encoder.item_separator, False, False, True)  # fmt: skip
    return lambda value: "".join(encode(value, 0))


#: ``json.dumps(value, ensure_ascii=False)``, faster (``_encoder``).
encode = _encoder()


def _streamed(value: Any) -> bool:
    return isinstance(value, (Iterator, Lazy))


def json_pieces(doc: dict[str, Any], *, depth: int = 0) -> Iterator[str]:
    """``doc`` as JSON text, in pieces (its last piece ends with a newline when ``depth`` is 0)."""
    pad = "  " * (depth + 1)
    yield "{"
    for number, (key, value) in enumerate(doc.items()):
        yield ("," if number else "") + "\n" + pad + json.dumps(key) + ": "
        if _streamed(value):
            yield "["
            first = True
            for item in value:
                yield ("\n" if first else ",\n") + pad + "  " + encode(item)
                first = False
            yield "]" if first else "\n" + pad + "]"
        elif isinstance(value, dict) and any(_streamed(v) for v in value.values()):
            yield from json_pieces(value, depth=depth + 1)
        else:
            yield encode(value)
    yield ("\n" + "  " * depth if doc else "") + "}" + ("\n" if depth == 0 else "")


def gathered(pieces: Iterable[str]) -> Iterator[str]:
    """``pieces`` gathered into blocks of about 64 KiB, to be written a block at a time."""
    block: list[str] = []
    size = 0
    for piece in pieces:
        block.append(piece)
        size += len(piece)
        if size >= _PIECE:
            yield "".join(block)
            block, size = [], 0
    if block:
        yield "".join(block)


def joined(pieces: Iterable[str]) -> Iterator[bytes]:
    """``gathered``, encoded (UTF-8)."""
    return (block.encode("utf-8") for block in gathered(pieces))
