"""Byte ranges of GET /v2/images/{id}/file: Glance 33's ``Range`` handling, and the legacy request
``Content-Range`` it still honours, with webob's parsers and Glance's status codes and messages."""

from __future__ import annotations

import re

from .fields import GlanceError

__all__ = ["requested_range"]

_RANGE = re.compile(r"bytes *= *(\d*) *- *(\d*)", re.IGNORECASE)
_CONTENT_RANGE = re.compile(r"bytes (?:(\d+)-(\d+)|[*])/(?:(\d+)|[*])")


def _from_range(header: str, size: int) -> tuple[int, int]:
    if "," in header:
        raise GlanceError(400, "Requests with multiple ranges are not supported in Glance. You may make "
                               "multiple single-range requests instead.")  # fmt: skip
    m = _RANGE.match(header)  # webob's Range.parse: a prefix match
    first, last = m.groups() if m else ("", "")
    if m and not (first or last):
        raise GlanceError(500)  # Glance 33 bug kept on purpose: "bytes=-" crashes webob's parser
    if not m or (first and last and int(first) > int(last)):
        raise GlanceError(416, detail="Invalid Range header.")
    if not first:  # suffix form bytes=-N: the last N bytes, or all of them if N >= size
        return (size - int(last) if int(last) < size else 0), size
    start = int(first)
    if start >= size:
        raise GlanceError(416, detail="Invalid start position in Range header. Start position MUST be in the "
                                      f"inclusive range [0, {size - 1}].")  # fmt: skip
    return start, size if not last else min(size, int(last) + 1)


def _from_content_range(header: str, size: int) -> tuple[int, int]:
    m = _CONTENT_RANGE.match(header)
    first, last, length = m.groups() if m else (None, None, None)
    # webob's ContentRange.parse: "bytes */N" and "last < first" are unusable, and so is last >= N
    if first is None or last is None or int(first) > int(last) or (length and int(last) >= int(length)):
        raise GlanceError(416, detail="Invalid Content-Range header.")
    start, stop = int(first), int(last) + 1
    if length is None and stop > size:
        raise GlanceError(416, detail="Invalid stop position in Content-Range header. The stop position MUST "
                                      f"be in the inclusive range [0, {size - 1}].")  # fmt: skip
    if start >= size:
        raise GlanceError(416, detail="Invalid start position in Content-Range header. Start position MUST "
                                      f"be in the inclusive range [0, {size - 1}].")  # fmt: skip
    return start, min(stop, size)


def requested_range(range_header: str | None, content_range: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) the client asked for, None for the whole image, or Glance's 400/416.

    ``Range`` wins; without it, a request ``Content-Range`` (legacy, "for backward compatibility" in
    Glance's code) selects the bytes instead.
    """
    if range_header is not None:
        return _from_range(range_header, size)
    if content_range is not None:
        return _from_content_range(content_range, size)
    return None
