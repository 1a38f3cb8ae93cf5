"""The Image API's wire details: media types, content ranges, request kinds, query values, bounded reads,
and the ``Download`` handle over an open response (the engine reads it at its own pace)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from pipeline.cloud.transport import map_aiohttp_errors
from pipeline.errors import ProtocolError

__all__ = [
    "JSON_PATCH",
    "MAX_JSON_BODY",
    "OCTET_STREAM",
    "Download",
    "parse_content_range",
    "query_value",
    "read_bounded",
    "request_kind",
    "url_safe_tag",
]

JSON_PATCH = "application/openstack-images-v2.1-json-patch"
OCTET_STREAM = "application/octet-stream"
#: Larger JSON bodies are refused as a protocol error instead of filling memory.
MAX_JSON_BODY = 64 * 1024 * 1024


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """(first, last, total) from ``bytes first-last/total``, or None when absent or malformed."""
    if not value or not value.startswith("bytes "):
        return None
    span, _, total = value[6:].partition("/")
    first, _, last = span.partition("-")
    try:
        return int(first), int(last), None if total.strip() == "*" else int(total)
    except ValueError:
        return None


@dataclass(slots=True)
class Download:
    """An open image download: status, what the server says about the bytes, and the byte stream."""

    status: int
    content_length: int | None
    content_range: tuple[int, int, int | None] | None
    content_md5: str | None
    request_id: str | None
    _response: aiohttp.ClientResponse
    _context: dict[str, Any]

    @property
    def has_data(self) -> bool:
        """False for the 204 Glance sends for an image that has no data (queued)."""
        return self.status != 204

    async def iter_chunks(self, size: int) -> AsyncIterator[bytes]:
        """Yield the body in pieces of at most ``size`` bytes as they arrive."""
        if not self.has_data:
            return
        with map_aiohttp_errors(**self._context):
            async for chunk in self._response.content.iter_chunked(size):
                yield chunk


def request_kind(method: str, path: str) -> str:
    """The kind of an Image API request, from its method and path."""
    parts = [p for p in path.split("?")[0].split("/") if p]
    if parts[:2] == ["v2", "schemas"]:
        return "schemas"
    if len(parts) <= 2:
        return "create" if method == "POST" else "list"
    if len(parts) == 3:
        return {"PATCH": "patch", "DELETE": "delete"}.get(method, "get")
    if parts[3] == "file":
        return "upload" if method == "PUT" else "download"
    if parts[3] == "actions" and len(parts) > 4:  # deactivate, reactivate
        return parts[4]
    return "tags" if parts[3] == "tags" else "members"


def query_value(value: object) -> str:
    """A filter value as Glance parses it: booleans must be lower-case ('True' gives 400 on protected)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def url_safe_tag(tag: str) -> bool:
    return tag.isascii() and "/" not in tag and "%" not in tag


async def read_bounded(resp: aiohttp.ClientResponse, ctx: Mapping[str, Any]) -> bytes:
    """The response body, refusing bodies above MAX_JSON_BODY instead of buffering them."""
    chunks: list[bytes] = []
    total = 0
    async for chunk in resp.content.iter_chunked(1 << 20):
        total += len(chunk)
        if total > MAX_JSON_BODY:
            raise ProtocolError(f"response body larger than {MAX_JSON_BODY} bytes", status=resp.status, **ctx)
        chunks.append(chunk)
    return b"".join(chunks)
