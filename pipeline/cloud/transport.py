"""The one module that builds aiohttp client sessions and turns aiohttp errors and responses into ours.

Timeouts fit multi-GB streams: there is no total timeout (aiohttp's default of 300 s would kill any large
image), only a connect timeout and a read-idle timeout. Connection limits are per host, and every region
is its own host, so ``connections_per_region`` caps each region separately.
"""

from __future__ import annotations

import html
import json
import re
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp

from pipeline.cloud.retry import parse_retry_after
from pipeline.errors import (
    ApiError,
    ConnectError,
    ConnectionLostError,
    ProtocolError,
    ReadTimeoutError,
    TLSVerificationError,
    TransportError,
    error_for_status,
)

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_READ_TIMEOUT",
    "BodyError",
    "TransportConfig",
    "error_from_response",
    "map_aiohttp_errors",
    "name_failure",
    "new_session",
    "server_message",
    "tls_for",
]

DEFAULT_CONNECT_TIMEOUT = 30.0
DEFAULT_READ_TIMEOUT = 120.0
DEFAULT_CONNECTIONS_PER_REGION = 8
DEFAULT_CONNECTIONS_TOTAL = 64
USER_AGENT = "imgmig"


@dataclass(frozen=True, slots=True)
class TransportConfig:
    """Connection settings shared by every request of one run."""

    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    connections_per_region: int = DEFAULT_CONNECTIONS_PER_REGION
    connections_total: int = DEFAULT_CONNECTIONS_TOTAL
    ca_bundle: str | None = None
    insecure: bool = False


def tls_for(verify: bool, cacert: str | None) -> ssl.SSLContext | bool | None:
    """Per-request TLS for one cloud (clouds.yaml ``verify``/``cacert``): False switches verification off, a CA
    bundle gives its own context; None leaves the session's (the job's ``[run]``) setting."""
    if not verify:
        return False
    return ssl.create_default_context(cafile=cacert) if cacert else None


def new_session(config: TransportConfig | None = None) -> aiohttp.ClientSession:
    """Build the run's ClientSession: idle timeouts only, per-region connection limits, TLS verified."""
    config = config or TransportConfig()
    ssl_arg: ssl.SSLContext | bool = True
    if config.insecure:
        ssl_arg = False
    elif config.ca_bundle:
        ssl_arg = ssl.create_default_context(cafile=config.ca_bundle)
    connector = aiohttp.TCPConnector(
        limit=config.connections_total,
        limit_per_host=config.connections_per_region,
        ssl=ssl_arg,
    )
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=config.connect_timeout, sock_read=config.read_timeout)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,  # image bytes must arrive exactly as stored
        headers={"User-Agent": USER_AGENT},
        raise_for_status=False,
    )


class BodyError(Exception):
    """What a request's own body raised, carried through aiohttp, which wraps whatever a body raises as a
    connection error: ``map_aiohttp_errors`` raises ``error`` as itself (the caller's stream ending early keeps its
    meaning, and a bug stays a bug instead of becoming a retried transport failure)."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        super().__init__(repr(error))


@contextmanager
def map_aiohttp_errors(**context: Any) -> Iterator[None]:
    """Turn aiohttp's exceptions into our TransportError family, most specific first; what a request body
    raised (``BodyError``) is raised as itself."""
    try:
        yield
    except ApiError:
        raise
    except BodyError as exc:
        raise exc.error from None
    except (aiohttp.ClientError, ConnectionError, TimeoutError) as exc:
        inner = _raised_by_body(exc)
        if inner is not None:
            exc.__cause__ = None  # aiohttp made the body's error the cause of its own: no cycle back to it
            raise inner from None
        raise _mapped(exc, context) from exc


_E = TypeVar("_E", bound=ApiError)


def name_failure(exc: _E, profile: str, where: str) -> _E:
    """``exc`` (a server that cannot be reached, or whose certificate does not verify), its message naming the auth
    profile and ``where`` (the URL) it happened; for a certificate, also where its CA can be trusted."""
    hint = "; trust its CA with the cloud's cacert (clouds.yaml) or the job's [run] ca_bundle"
    exc.message = f"auth profile {profile!r}: {where}: {exc.message}" + (hint if isinstance(exc, TLSVerificationError)
                                                                          else "")  # fmt: skip
    return exc


def _raised_by_body(exc: BaseException) -> Exception | None:
    """The error a request body raised behind ``exc`` (a ``BodyError`` in its chain of causes), or None."""
    cause, seen = exc.__cause__, {id(exc)}
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, BodyError):
            return cause.error
        seen.add(id(cause))
        cause = cause.__cause__
    return None


def _mapped(exc: BaseException, context: dict[str, Any]) -> ApiError:
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return TLSVerificationError(f"TLS certificate verification failed: {exc}", **context)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ConnectError(f"timed out connecting: {exc or 'no answer'}", **context)
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        return ReadTimeoutError(f"timed out waiting for the server: {exc or 'no data'}", **context)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ConnectError(f"cannot connect: {exc.os_error or exc}", **context)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return ConnectionLostError(f"connection lost: {exc}", **context)
    if isinstance(exc, aiohttp.ClientOSError):
        return ConnectionLostError(f"connection error: {exc}", **context)
    if isinstance(exc, aiohttp.InvalidURL):
        return ConnectError(f"invalid URL: {exc}", **context)
    if isinstance(exc, aiohttp.ClientResponseError):
        return ProtocolError(f"bad HTTP response: {exc.message}", status=exc.status, **context)
    if isinstance(exc, aiohttp.ClientError):
        return TransportError(f"HTTP client error: {exc}", **context)
    return ConnectionLostError(f"connection error: {exc}", **context)


_TAG = re.compile(r"<[^>]+>")
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
_TITLE = re.compile(r"<title>.*?</title>", re.IGNORECASE | re.DOTALL)
_H1 = re.compile(r"<h1>.*?</h1>", re.IGNORECASE | re.DOTALL)
_SPACE = re.compile(r"\s+")
MAX_MESSAGE = 1000


def server_message(body: bytes, content_type: str | None) -> str:
    """The server's own error message, from a Glance JSON, Keystone JSON, HTML or plain-text body."""
    text = body[: 64 * 1024].decode("utf-8", errors="replace")
    message = ""
    if "json" in (content_type or "") or text.lstrip().startswith("{"):
        message = _json_message(text)
    if not message and "<" in text:
        cleaned = _H1.sub(" ", _TITLE.sub(" ", text))
        message = html.unescape(_TAG.sub(" ", _BR.sub("\n", cleaned)))
    if not message:
        message = text
    message = _SPACE.sub(" ", message).strip()
    return message[:MAX_MESSAGE] + ("..." if len(message) > MAX_MESSAGE else "")


def _json_message(text: str) -> str:
    try:
        doc = json.loads(text)
    except ValueError:
        return ""
    if isinstance(doc, dict):
        inner = doc.get("error")
        if not isinstance(inner, dict):
            inner = doc
        msg = inner.get("message") or inner.get("title") or inner.get("detail")
        if isinstance(msg, str):
            return html.unescape(_TAG.sub(" ", _BR.sub("\n", msg)))
    return ""


def error_from_response(status: int, headers: Any, body: bytes, **context: Any) -> ApiError:
    """Build the right ApiError for an error response, with the server's message and request id."""
    message = server_message(body, headers.get("Content-Type")) or f"HTTP {status}"
    cls = error_for_status(status)
    retry_after = parse_retry_after(headers.get("Retry-After"))
    return cls(
        message,
        status=status,
        request_id=headers.get("x-openstack-request-id"),
        retry_after=retry_after,
        **context,
    )
