"""ImageClient: every call of the Image API v2 guide, for one region, over one shared aiohttp session.

Every request goes through one path (``ImageClient._send``): token, endpoint, request count, the cloud's own
TLS settings, error mapping and 401 handling are written once. Replayable requests (everything except
uploads) go through the low-level ``RetryPolicy`` and get one token refresh on a 401. Uploads stream an
``AsyncIterable[bytes]`` and are never retried here. Downloads are an async context manager over the open
response so the engine controls the pace (backpressure).
"""

from __future__ import annotations

import contextlib
import json
import ssl
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import aiohttp
import anyio
import structlog

from pipeline.cloud.auth import Auth, Token
from pipeline.cloud.retry import RetryPolicy
from pipeline.cloud.transport import error_from_response, map_aiohttp_errors, name_failure
from pipeline.cloud.wire import (
    JSON_PATCH,
    OCTET_STREAM,
    Download,
    parse_content_range,
    query_value,
    read_bounded,
    request_kind,
    url_safe_tag,
)
from pipeline.errors import (
    ApiError,
    AuthenticationError,
    BadRequestError,
    ConnectError,
    NotFoundError,
    ProtocolError,
    TokenRejectedError,
    TransportError,
)
from pipeline.models import Image, Member, RequestCounts

__all__ = ["ImageClient", "ListFilters"]

log = structlog.get_logger("imgmig")

#: NHN's current guide: "limit ... Default is 100, up to max 1000"; Glance caps at api_limit_max (1000).
DEFAULT_PAGE_SIZE = 1000
#: Images of a listing page made into ``Image`` between two checkpoints (the loop's other tasks run in between).
LIST_SLICE = 200
#: The page size used once a server refuses the large one (400): NHN's default.
FALLBACK_PAGE_SIZE = 100

#: Query values: a string, or a list of strings for repeated keys (``tag``).
ListFilters = Mapping[str, str | int | bool | Sequence[str]]


class ImageClient:
    """Image API v2 for one region, authenticated by ``auth``; one instance per region and tenant."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        auth: Auth,
        region: str,
        *,
        retry: RetryPolicy | None = None,
        on_retry: Callable[[str, int, BaseException, float], None] | None = None,
        requests: RequestCounts | None = None,
        tls: ssl.SSLContext | bool | None = None,
    ) -> None:
        self.session = session
        self._tls: dict[str, Any] = {} if tls is None else {"ssl": tls}  # a cloud's own verify/cacert
        self.auth = auth
        self.region = region
        self.retry = retry or RetryPolicy()
        self._on_retry = on_retry
        #: Every HTTP request this client sends, by (kind, region), retries included (shared by a run).
        self.requests = requests if requests is not None else RequestCounts()
        #: Whether this region honours a client-chosen image id on create: None until the first create
        #: with one tells (see ``copies.create_copy``).
        self.client_ids: bool | None = None
        #: The largest list page this region accepts (learned when it refuses a larger one).
        self.page_size = DEFAULT_PAGE_SIZE

    def __repr__(self) -> str:
        return f"ImageClient(region={self.region!r}, tenant={self.auth.tenant_id!r})"

    # === plumbing

    async def endpoint(self) -> str:
        """This region's image endpoint, from the catalog or the fixed configuration."""
        return await self.auth.endpoint(self.session, self.region)

    def _headers(self, token: Token, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {
            "X-Auth-Token": token.id.reveal(),
            "Accept": "application/json",
            "X-Openstack-Request-ID": f"req-{uuid.uuid4()}",
        }
        if extra:
            headers.update(extra)
        return headers

    def _refused(self, err: ApiError, ctx: Mapping[str, Any]) -> AuthenticationError:
        """A 401 that persisted after a fresh token: the credential is dead for this region (fatal)."""
        return AuthenticationError(
            f"auth profile {self.auth.profile!r}: region {self.region} refused a freshly issued token: {err.message}",
            status=401, request_id=err.request_id, **ctx,
        )  # fmt: skip

    async def _send(
        self, method: str, path: str, ctx: dict[str, Any], *, extra: Mapping[str, str] | None = None,
        streamed: bool = False, **kwargs: Any,
    ) -> aiohttp.ClientResponse:  # fmt: skip
        """The one request path: every call of this client, uploads and downloads included, is sent here.

        It takes a token (for a ``streamed`` body, one with life left: an upload's headers leave with its first
        body chunk), resolves the endpoint, counts the request, sends it with this cloud's own TLS settings, and
        maps aiohttp's errors and error statuses to ours. A 401 drops the token; the request is then sent once
        more with a fresh one, and a 401 again means the credential is dead (``AuthenticationError``, fatal). A
        streamed body cannot be sent again: the credential is tested with a GET of the image instead, and the
        upload fails with ``TokenRejectedError`` (its next pass gets a fresh token). Returns the response, still
        open, for a status below 400; the caller reads and releases it."""
        refreshed = False
        while True:
            token = await self.auth.token(self.session, lasting=streamed)
            url = await self.endpoint() + path
            self.requests.add(request_kind(method, path), self.region)
            try:
                with map_aiohttp_errors(**ctx):
                    resp = await self.session.request(method, url, headers=self._headers(token, extra), **self._tls,
                                                      **kwargs)  # fmt: skip
                    if resp.status < 400:
                        return resp
                    try:
                        raw = await read_bounded(resp, ctx)
                    finally:
                        resp.release()
            except ConnectError as exc:  # cannot reach the region, or its certificate does not verify
                raise name_failure(exc, self.auth.profile, f"region {self.region} ({url})") from exc.__cause__
            err = error_from_response(resp.status, resp.headers, raw, **ctx)
            if resp.status != 401:
                raise err
            self.auth.invalidate(token)
            if streamed:
                # Test the credential at once with a request that can be sent again (its own refresh-and-retry): a
                # credential refused even then is fatal (AuthenticationError), not a reason for another upload pass.
                with contextlib.suppress(ApiError):
                    await self.get_image(str(ctx["image_id"]))
                raise TokenRejectedError(f"{request_kind(method, path)} refused the token: {err.message}", status=401,
                                         request_id=err.request_id, **ctx)  # fmt: skip
            if refreshed:
                raise self._refused(err, ctx)
            refreshed = True

    async def _exchange(
        self, method: str, path: str, ctx: dict[str, Any], *, extra: Mapping[str, str] | None = None,
        streamed: bool = False, **kwargs: Any,
    ) -> tuple[int, Any, bytes]:  # fmt: skip
        """``_send``, then the whole (bounded) body: (status, headers, body)."""
        resp = await self._send(method, path, ctx, extra=extra, streamed=streamed, **kwargs)
        try:
            with map_aiohttp_errors(**ctx):
                body = await read_bounded(resp, ctx)
            return resp.status, resp.headers, body
        finally:
            resp.release()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        image_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        replay: bool = True,
        **kwargs: Any,
    ) -> tuple[int, Any, bytes]:
        """A request under the retry policy; with ``replay=False`` it is sent once (not safe to repeat)."""
        ctx = {"region": self.region, "image_id": image_id, "method": method, "path": path.split("?")[0]}

        def on_retry(attempt: int, exc: BaseException, wait: float) -> None:
            # each failed attempt, as it happens: a region that cannot be reached is a warning
            level = log.warning if isinstance(exc, TransportError) else log.info
            level("request_attempt_failed", profile=self.auth.profile, region=self.region, request=f"{method} "
                  f"{ctx['path']}", attempt=f"{attempt} of {self.retry.attempts}", error=str(exc),
                  retry_in=round(wait, 1))  # fmt: skip
            if self._on_retry is not None:
                self._on_retry(f"{method} {ctx['path']}", attempt, exc, wait)

        async def attempt() -> tuple[int, Any, bytes]:
            return await self._exchange(method, path, ctx, extra=headers, **kwargs)

        if not replay:
            return await attempt()
        return await self.retry.call(attempt, on_retry=on_retry)

    async def _json(self, method: str, path: str, *, image_id: str | None = None, **kwargs: Any) -> Any:
        status, _, body = await self._call(method, path, image_id=image_id, **kwargs)
        try:
            return json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ProtocolError(
                f"expected a JSON body, got {body[:80]!r}", region=self.region, image_id=image_id,
                status=status, method=method, path=path.split("?")[0],
            ) from exc  # fmt: skip

    def _image(self, doc: Any, image_id: str | None = None, *, packed: bool = False) -> Image:
        try:
            return Image.from_api(doc, packed=packed)
        except ProtocolError as exc:
            exc.region, exc.image_id = self.region, image_id
            raise

    # === images

    async def list_images(
        self,
        filters: ListFilters | None = None,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        sort_key: str | None = None,
        sort_dir: str | None = None,
        packed: bool = False,
    ) -> AsyncIterator[Image]:
        """Every image matching ``filters``, following ``next`` page by page (1000 a page; 100 once this
        region refused 1000 with a 400); ``packed``: each held packed (``Image``), for a caller that holds a
        whole catalogue."""
        page_size = min(page_size, self.page_size)
        params: list[tuple[str, str]] = [("limit", str(page_size))]
        for key, value in (filters or {}).items():
            if isinstance(value, (list, tuple)):
                params.extend((key, query_value(v)) for v in value)
            else:
                params.append((key, query_value(value)))
        if sort_key:
            params.append(("sort_key", sort_key))
        if sort_dir:
            params.append(("sort_dir", sort_dir))
        seen_markers: set[str] = set()
        while True:
            try:
                doc = await self._json("GET", "/v2/images", params=params)
            except BadRequestError:
                if page_size <= FALLBACK_PAGE_SIZE or any(k == "marker" for k, _ in params):
                    raise
                page_size = self.page_size = FALLBACK_PAGE_SIZE  # a server that refuses large pages
                params = [(k, v) if k != "limit" else (k, str(page_size)) for k, v in params]
                continue
            images = doc.get("images") if isinstance(doc, dict) else None
            if not isinstance(images, list):
                raise ProtocolError("image list has no 'images' array", region=self.region)
            for number, obj in enumerate(images, start=1):
                if number % LIST_SLICE == 0:
                    await anyio.lowlevel.checkpoint()  # a page of 1,000 is checked and wrapped in slices
                yield self._image(obj, packed=packed)
            nxt = doc.get("next")
            if not nxt or not images:
                return
            if not isinstance(nxt, str):
                raise ProtocolError("image list 'next' is not a string", region=self.region)
            # Only the marker is taken from 'next': Glance rebuilds that link from dict(params), which keeps
            # just the last value of a repeated key, so following it would drop all but one 'tag' filter.
            marker = dict(parse_qsl(urlsplit(nxt).query, keep_blank_values=True)).get("marker", "")
            if not marker:
                raise ProtocolError("image list 'next' has no marker", region=self.region)
            params = [(k, v) for k, v in params if k != "marker"] + [("marker", marker)]
            if marker in seen_markers:
                raise ProtocolError(f"image list pagination loops at marker {marker}", region=self.region)
            seen_markers.add(marker)

    async def get_image(self, image_id: str) -> Image:
        """One image (404 NotFoundError if absent or invisible to this tenant)."""
        return self._image(await self._json("GET", f"/v2/images/{image_id}", image_id=image_id), image_id)

    async def create_image(self, fields: Mapping[str, Any]) -> Image:
        """Create an empty (queued) image; returns it as the server reports it.

        Retried like any call only when ``fields`` name the image's ``id``: sent twice, such a POST gets a
        409 instead of making a second image. Without an id it is sent once (see ``copies.create_copy``).
        """
        doc = await self._json("POST", "/v2/images", json=dict(fields), image_id=fields.get("id"),
                               replay="id" in fields)  # fmt: skip
        return self._image(doc)

    async def update_image(self, image_id: str, ops: Sequence[Mapping[str, Any]]) -> Image:
        """Apply JSON-patch ``ops`` (add/replace/remove) with the v2.1 patch media type."""
        doc = await self._json(
            "PATCH", f"/v2/images/{image_id}", image_id=image_id,
            data=json.dumps(list(ops)).encode(), headers={"Content-Type": JSON_PATCH},
        )  # fmt: skip
        return self._image(doc, image_id)

    async def delete_image(self, image_id: str) -> None:
        """Delete an image (403 if protected, 404 if absent)."""
        await self._call("DELETE", f"/v2/images/{image_id}", image_id=image_id)

    async def deactivate_image(self, image_id: str) -> None:
        """Deactivate an active image (204): its data can no longer be downloaded, except by an admin.

        Sent without a body (Glance refuses any with 400) and retried like any call: the server answers 204
        again for an image that is already deactivated. 403 for an image that is not active (queued,
        saving, ...) or that this tenant may see but not change; 404 if absent or invisible."""
        await self._action(image_id, "deactivate")

    async def reactivate_image(self, image_id: str) -> None:
        """Reactivate a deactivated image (204); idempotent like ``deactivate_image``, with the same errors."""
        await self._action(image_id, "reactivate")

    async def _action(self, image_id: str, action: str) -> None:
        # no data= or json=: aiohttp then sends Content-Length: 0, which Glance takes as no body
        await self._call("POST", f"/v2/images/{image_id}/actions/{action}", image_id=image_id)

    # === data

    async def upload_image(
        self, image_id: str, body: AsyncIterable[bytes | memoryview], *, size: int | None = None
    ) -> None:
        """Stream ``body`` into a queued image (204). Never retried: a stream cannot be replayed."""
        path = f"/v2/images/{image_id}/file"
        ctx: dict[str, Any] = {"region": self.region, "image_id": image_id, "method": "PUT", "path": path}
        extra = {"Content-Type": OCTET_STREAM}
        if size is not None:
            extra["Content-Length"] = str(size)
        await self._exchange("PUT", path, ctx, extra=extra, streamed=True, data=body)

    @asynccontextmanager
    async def open_download(
        self, image_id: str, *, offset: int = 0, length: int | None = None, idle_timeout: float | None = None
    ) -> AsyncIterator[Download]:
        """Open the image's data, from ``offset`` with ``Range: bytes=offset-`` when it is not 0 (``length``: at
        most that many bytes, ``bytes=offset-last``; a server that ignores Range sends them all, and the caller
        stops reading). ``idle_timeout`` replaces the session's read-idle timeout for this download."""
        path = f"/v2/images/{image_id}/file"
        ctx: dict[str, Any] = {"region": self.region, "image_id": image_id, "method": "GET", "path": path}
        last = str(offset + length - 1) if length is not None and length > 0 else ""
        extra = {"Range": f"bytes={offset}-{last}"} if offset or last else {}
        options: dict[str, Any] = {}
        if idle_timeout is not None:
            base = self.session.timeout
            options["timeout"] = aiohttp.ClientTimeout(total=None, sock_connect=base.sock_connect,
                                                       sock_read=idle_timeout)  # fmt: skip

        async def attempt() -> aiohttp.ClientResponse:
            return await self._send("GET", path, ctx, extra=extra, **options)

        resp = await self.retry.call(attempt)
        try:
            declared = resp.headers.get("Content-Length")
            yield Download(
                status=resp.status,
                content_length=int(declared) if declared and declared.isdigit() else None,
                content_range=parse_content_range(resp.headers.get("Content-Range")),
                content_md5=resp.headers.get("Content-MD5"),
                request_id=resp.headers.get("x-openstack-request-id"),
                _response=resp,
                _context=ctx,
            )
        finally:
            resp.close()

    # === tags

    async def add_tag(self, image_id: str, tag: str) -> None:
        """Add one tag; non-ASCII tags go through PATCH because Glance mis-decodes them in URL paths."""
        if url_safe_tag(tag):
            await self._call("PUT", f"/v2/images/{image_id}/tags/{quote(tag, safe='')}", image_id=image_id)
            return
        image = await self.get_image(image_id)
        if tag not in image.tags:
            await self.set_tags(image_id, [*image.tags, tag])

    async def delete_tag(self, image_id: str, tag: str) -> None:
        """Remove one tag (404 if the image does not carry it)."""
        if url_safe_tag(tag):
            await self._call("DELETE", f"/v2/images/{image_id}/tags/{quote(tag, safe='')}", image_id=image_id)
            return
        image = await self.get_image(image_id)
        if tag not in image.tags:
            raise NotFoundError(f"tag {tag!r} not found", region=self.region, image_id=image_id, status=404)
        await self.set_tags(image_id, [t for t in image.tags if t != tag])

    async def set_tags(self, image_id: str, tags: Sequence[str]) -> Image:
        """Replace the whole tag set in one PATCH (keeps non-ASCII tags intact)."""
        return await self.update_image(image_id, [{"op": "replace", "path": "/tags", "value": list(tags)}])

    # === members

    async def list_members(self, image_id: str) -> list[Member]:
        """The image's members (the owner sees all; a member sees only itself)."""
        doc = await self._json("GET", f"/v2/images/{image_id}/members", image_id=image_id)
        members = doc.get("members") if isinstance(doc, dict) else None
        if not isinstance(members, list):
            raise ProtocolError("member list has no 'members' array", region=self.region, image_id=image_id)
        return [Member.from_api(m) for m in members]

    async def add_member(self, image_id: str, member_id: str) -> Member:
        """Share the image with tenant ``member_id`` (status pending)."""
        path = f"/v2/images/{image_id}/members"
        return Member.from_api(await self._json("POST", path, image_id=image_id, json={"member": member_id}))

    async def get_member(self, image_id: str, member_id: str) -> Member:
        """One membership."""
        path = f"/v2/images/{image_id}/members/{quote(member_id, safe='')}"
        return Member.from_api(await self._json("GET", path, image_id=image_id))

    async def update_member_status(self, image_id: str, member_id: str, status: str) -> Member:
        """Accept, reject or reset a membership; only the member tenant itself may do this."""
        path = f"/v2/images/{image_id}/members/{quote(member_id, safe='')}"
        return Member.from_api(await self._json("PUT", path, image_id=image_id, json={"status": status}))

    async def delete_member(self, image_id: str, member_id: str) -> None:
        """Stop sharing the image with ``member_id``."""
        path = f"/v2/images/{image_id}/members/{quote(member_id, safe='')}"
        await self._call("DELETE", path, image_id=image_id)

    # === discovery

    async def get_schema(self, name: str) -> dict[str, Any]:
        """A JSON schema: ``image``, ``images``, ``member`` or ``members``."""
        doc = await self._json("GET", f"/v2/schemas/{name}")
        if not isinstance(doc, dict):
            raise ProtocolError(f"schema {name} is not an object", region=self.region)
        return doc
