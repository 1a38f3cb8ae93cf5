"""Error mapping: server messages from every body format, status classes, aiohttp errors."""

from __future__ import annotations

import aiohttp
import pytest
from multidict import CIMultiDict

from pipeline.cloud.transport import error_from_response, map_aiohttp_errors, server_message
from pipeline.errors import (
    ConflictError,
    ConnectError,
    ConnectionLostError,
    HTTPStatusError,
    RateLimitedError,
    ReadTimeoutError,
    ServerError,
    UnauthorizedError,
    error_for_status,
)

GLANCE_HTML = (
    b"<html>\n <head>\n  <title>404 Not Found</title>\n </head>\n <body>\n  <h1>404 Not Found</h1>\n"
    b"  No image found with ID abc<br /><br />\n\n\n\n </body>\n</html>"
)


@pytest.mark.parametrize(
    ("body", "ctype", "expected"),
    [
        (b'{"message": "No image found with ID abc<br /><br />\\n\\n\\n", "code": "404 Not Found", '
         b'"title": "Not Found"}', "application/json", "No image found with ID abc"),
        (b'{"error": {"message": "The request you have made requires authentication.", "code": 401, '
         b'"title": "Unauthorized"}}', "application/json", "The request you have made requires authentication."),
        (GLANCE_HTML, "text/html; charset=UTF-8", "No image found with ID abc"),
        (b"<html><body>Attribute &#x27;x&#x27; is read-only.</body></html>", "text/html",
         "Attribute 'x' is read-only."),
        (b"404 Not Found\n\nNo image found\n\n   ", "text/plain", "404 Not Found No image found"),
        (b"", "text/html", ""),
        (b"\xff\xfe garbage", None, "\ufffd\ufffd garbage"),
    ],
    ids=["glance-json", "keystone-json", "glance-html", "html-entities", "plain", "empty", "binary"],
)  # fmt: skip
def test_server_message(body: bytes, ctype: str | None, expected: str) -> None:
    """The server's own message is extracted from JSON, Keystone JSON, HTML and plain bodies."""
    assert server_message(body, ctype) == expected


def test_server_message_is_bounded() -> None:
    """A huge error body yields a bounded message."""
    assert len(server_message(b"x" * 10_000_000, "text/plain")) <= 1003


@pytest.mark.parametrize(
    ("status", "cls"),
    [(401, UnauthorizedError), (409, ConflictError), (429, RateLimitedError), (500, ServerError),
     (504, ServerError), (418, HTTPStatusError)],
)  # fmt: skip
def test_error_for_status(status: int, cls: type) -> None:
    """Each status maps to its class; unknown 4xx map to the HTTPStatusError base. A bare 401 is not
    fatal by itself (the client refreshes the token once); only one that persists becomes fatal."""
    assert error_for_status(status) is cls


def test_error_from_response_carries_context() -> None:
    """The built error has the status, request id, Retry-After and the caller's context."""
    headers = CIMultiDict({"Content-Type": "application/json", "x-openstack-request-id": "req-1", "Retry-After": "7"})
    err = error_from_response(429, headers, b'{"message": "slow down"}', region="KR1", image_id="i")
    assert isinstance(err, RateLimitedError)
    assert (err.status, err.request_id, err.retry_after, err.region, err.image_id) == (
        429,
        "req-1",
        7.0,
        "KR1",
        "i",
    )
    assert str(err).startswith("slow down (region KR1, image i, HTTP 429, request req-1)")


@pytest.mark.parametrize(
    ("exc", "cls"),
    [
        (aiohttp.ServerDisconnectedError(), ConnectionLostError),
        (aiohttp.ClientPayloadError("truncated"), ConnectionLostError),
        (aiohttp.SocketTimeoutError("idle"), ReadTimeoutError),
        (aiohttp.ConnectionTimeoutError("connect"), ConnectError),
        (ConnectionResetError("reset"), ConnectionLostError),
    ],
    ids=["disconnected", "payload", "read-timeout", "connect-timeout", "reset"],
)
def test_map_aiohttp_errors(exc: BaseException, cls: type) -> None:
    """aiohttp's exceptions become ours, with the context attached and the cause chained."""
    with pytest.raises(cls) as info, map_aiohttp_errors(region="JP1"):
        raise exc
    assert info.value.region == "JP1"
    assert info.value.__cause__ is exc
