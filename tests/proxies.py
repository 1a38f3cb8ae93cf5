"""Test-side HTTP helpers: an HTTPS reverse proxy with a private CA's certificate in front of a plain-HTTP
server of the harness (Keystone or a Glance region), counting what it forwards.

The proxy is transparent for the Image and Identity APIs: it forwards every end-to-end header both ways
(``X-Auth-Token``, ``Content-Type``, ``Accept``, ``Range``, ``X-Subject-Token``, ``x-openstack-request-id``,
``Location``, ``Content-Encoding``, ...), drops only the hop-by-hop ones, and passes bodies byte for byte
(no decompression). Bodies are buffered whole, both ways: fine for the few MiB a test uploads.
"""

from __future__ import annotations

import asyncio
import io
import queue
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

__all__ = ["ForwardedRequest", "TlsProxy", "tls_proxy"]

# Hop-by-hop headers (RFC 9110 7.6.1) plus the ones the forwarding side recomputes (Host, Content-Length).
_NOT_FORWARDED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
#: The largest request body the proxy accepts (aiohttp's default is 1 MiB, less than one upload).
MAX_BODY = 256 << 20


@dataclass(frozen=True)
class ForwardedRequest:
    """One request the proxy forwarded upstream and answered: method, path (no query), status, body size."""

    method: str
    path: str
    status: int
    request_bytes: int


@dataclass
class TlsProxy:
    """A running proxy: its HTTPS ``origin``, the ``url`` that stands for the upstream URL, and what it
    forwarded (appended by the proxy's thread; list appends are atomic)."""

    origin: str
    url: str
    requests: list[ForwardedRequest] = field(default_factory=list)

    @property
    def forwarded(self) -> int:
        """How many requests reached the upstream through the proxy (a refused handshake forwards none)."""
        return len(self.requests)

    def count(self, method: str | None = None, suffix: str = "", *, status: int | None = None) -> int:
        """Forwarded requests with this method (any if None) whose path ends with ``suffix``, optionally
        only those answered with ``status``: ``count("PUT", "/file", status=204)`` is the uploads done."""
        return sum(
            1
            for r in list(self.requests)
            if (method is None or r.method == method)
            and r.path.endswith(suffix)
            and (status is None or r.status == status)
        )


@contextmanager
def tls_proxy(upstream: str, cert: Any) -> Iterator[TlsProxy]:
    """An HTTPS reverse proxy on 127.0.0.1 in front of ``upstream`` (its own thread and event loop), with
    ``cert`` (a ``trustme`` leaf, e.g. ``trustme.CA().issue_cert("127.0.0.1")``) whose CA no trust store
    knows. Yields a ``TlsProxy``: ``url`` is ``upstream`` with the proxy's origin (same path), and
    ``requests`` lists what was forwarded. Everything is stopped on exit, also after a failure."""
    parts = urlsplit(upstream)
    upstream_origin = f"{parts.scheme}://{parts.netloc}"
    loop = asyncio.new_event_loop()
    ready: queue.Queue[tuple[web.AppRunner, int]] = queue.Queue()
    proxy: TlsProxy | None = None
    client: dict[str, aiohttp.ClientSession] = {}

    async def handle(request: web.Request) -> web.Response:
        assert proxy is not None
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED)
        body = await request.read()
        async with client["session"].request(
            # a file object, not bytes: aiohttp warns (an error under the suite's filterwarnings) on large bytes
            request.method,
            upstream_origin + request.path_qs,
            headers=headers,
            data=io.BytesIO(body) if body else None,
        ) as resp:
            answer = await resp.read()
            keep = CIMultiDict((k, v) for k, v in resp.headers.items() if k.lower() not in _NOT_FORWARDED)
            status = resp.status
        proxy.requests.append(ForwardedRequest(request.method, request.path, status, len(body)))
        return web.Response(status=status, body=answer, headers=keep)

    async def serve() -> None:
        # auto_decompress off: a compressed answer is passed on compressed, with its Content-Encoding
        client["session"] = aiohttp.ClientSession(
            auto_decompress=False, skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120),
        )  # fmt: skip
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        ready.put((runner, port))

    async def stop(runner: web.AppRunner) -> None:
        await runner.cleanup()
        if "session" in client:
            await client["session"].close()

    thread = threading.Thread(target=loop.run_forever, name="tls-proxy", daemon=True)
    thread.start()
    runner: web.AppRunner | None = None
    try:
        asyncio.run_coroutine_threadsafe(serve(), loop).result(timeout=30)
        runner, port = ready.get(timeout=30)
        origin = f"https://127.0.0.1:{port}"
        proxy = TlsProxy(origin, origin + upstream[len(upstream_origin) :])
        yield proxy
    finally:
        try:
            if runner is not None:
                asyncio.run_coroutine_threadsafe(stop(runner), loop).result(timeout=30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
            loop.close()
