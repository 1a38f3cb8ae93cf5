"""The aiohttp application of one emulated region: the Image API v2 as Glance 33 speaks it.

Middlewares, outermost first: request id + error rendering (JSON, HTML or text by ``Accept``, as webob
does), token check (401 like keystonemiddleware), then fault injection (latency, status bursts). The
handlers stream image data through worker threads, so memory stays flat whatever the image size.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

import anyio
from aiohttp import web

from .faults import FaultPlan
from .fields import GlanceError
from .identity import Identity
from .listing import list_images
from .patching import PATCH_TYPES, apply_patch, parse_patch
from .schemas import SCHEMAS, versions_document
from .store import Caller, ImageRecord, RegionStore

__all__ = ["RegionContext", "build_region_app"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CHUNK = 1 << 20
WRITE_BATCH = 1 << 20
_PUBLIC_PATHS = frozenset({"/", "/versions", "/healthcheck"})
MAX_REQUEST_ID = 64
#: Route name -> the request kind a status fault can target (see faults.OPS).
ROUTE_OPS = {
    "schemas": "schemas", "list": "list", "create": "create", "get": "get", "patch": "patch",
    "delete": "delete", "download": "download", "upload": "upload", "tags": "tags", "tags_delete": "tags",
    "members": "members", "members_add": "members", "member": "members", "member_update": "members",
    "member_delete": "members",
}  # fmt: skip


@dataclass
class RegionContext:
    """What the handlers of one region need: its name, store, faults and the shared identity."""

    name: str
    store: RegionStore
    faults: FaultPlan
    identity: Identity


CTX: web.AppKey[RegionContext] = web.AppKey("region", RegionContext)
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
CALLER: web.RequestKey[Caller] = web.RequestKey("caller", Caller)


def _json(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=json.dumps(doc).encode(), status=status, content_type="application/json",
                        headers=headers)  # fmt: skip


def _error_response(err: GlanceError, request: web.Request) -> web.Response:
    body, ctype = err.body(request.headers.get("Accept", ""))
    resp = web.Response(status=err.status, body=body, headers=err.headers)
    resp.headers["Content-Type"] = ctype
    return resp


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Echo or mint x-openstack-request-id; render every error the way Glance does."""
    sent = request.headers.get("X-Openstack-Request-ID")
    if sent is not None and len(sent) > MAX_REQUEST_ID:
        # Glance 33 bug kept on purpose: an over-long request id gives a bare 500 without an id
        return _error_response(GlanceError(500), request)
    request_id = sent if sent and sent.startswith("req-") else (f"req-{sent}" if sent else None)
    request_id = request_id or f"req-{uuid.uuid4()}"
    request[REQUEST_ID] = request_id
    try:
        resp = await handler(request)
    except GlanceError as err:
        resp = _error_response(err, request)
    except web.HTTPMethodNotAllowed as exc:
        allow = ", ".join(sorted(exc.allowed_methods))
        err = GlanceError(405, detail=f"The method {request.method} is not allowed for this resource.",
                          headers={"Allow": allow})  # fmt: skip
        resp = _error_response(err, request)
    except web.HTTPNotFound:
        resp = _error_response(GlanceError(404), request)
    if not resp.prepared:
        resp.headers["x-openstack-request-id"] = request_id
    return resp


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """401 for a missing, unknown or expired token, like keystonemiddleware in front of Glance."""
    if request.method == "GET" and request.path in _PUBLIC_PATHS:
        return await handler(request)
    ctx = request.app[CTX]
    info = ctx.identity.lookup(request.headers.get("X-Auth-Token"))
    if info is None:
        raise GlanceError(401, headers={"WWW-Authenticate": f'Keystone uri="{ctx.identity.url}"'})
    request[CALLER] = info.caller
    return await handler(request)


@web.middleware
async def fault_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Latency before every request; status bursts (5xx, 429 with Retry-After) for matching ones."""
    ctx = request.app[CTX]
    plan = ctx.faults
    if plan.latency > 0:
        await anyio.sleep(plan.latency)
    op = ROUTE_OPS.get(request.match_info.route.name or "")
    if op:
        rule = plan.take_status(op, request.match_info.get("image_id"))
        if rule is not None:
            headers = {"Retry-After": f"{rule.retry_after:g}"} if rule.retry_after is not None else None
            raise GlanceError(rule.status, detail="Injected fault.", headers=headers)
    return await handler(request)


def _caller(request: web.Request) -> Caller:
    return request[CALLER]


async def _body_json(request: web.Request) -> Any:
    try:
        return json.loads(await request.read())
    except ValueError:
        raise GlanceError(400, detail="Malformed JSON in request body.") from None


# === versions and schemas


async def root(request: web.Request) -> web.Response:
    return _json(versions_document(str(request.url.origin())), status=300)


async def versions(request: web.Request) -> web.Response:
    return _json(versions_document(str(request.url.origin())))


async def healthcheck(request: web.Request) -> web.Response:
    return web.Response(text="OK")


async def get_schema(request: web.Request) -> web.Response:
    schema = SCHEMAS.get(request.match_info["name"])
    if schema is None:
        raise GlanceError(404)
    return _json(schema)


# === images


async def list_handler(request: web.Request) -> web.Response:
    store = request.app[CTX].store
    page, marker = list_images(store, _caller(request), request.query)
    query = request.query_string
    doc: dict[str, Any] = {
        "images": [r.to_json() for r in page],
        "first": f"/v2/images?{query}" if query else "/v2/images",
        "schema": "/v2/schemas/images",
    }
    if marker is not None:
        kept = "&".join(p for p in query.split("&") if p and not p.startswith("marker="))
        doc["next"] = f"/v2/images?{kept}&marker={marker}" if kept else f"/v2/images?marker={marker}"
    return _json(doc)


async def create_handler(request: web.Request) -> web.Response:
    body = await _body_json(request)
    if not isinstance(body, dict):
        raise GlanceError(400, detail="Request body must be a JSON object.")
    rec = request.app[CTX].store.create(body, _caller(request))
    headers = {
        "Location": f"http://{request.host}/v2/images/{rec.id}",
        "OpenStack-image-import-methods": "glance-direct",
    }
    return _json(rec.to_json(), status=201, headers=headers)


async def get_handler(request: web.Request) -> web.Response:
    rec = request.app[CTX].store.visible(request.match_info["image_id"], _caller(request))
    return _json(rec.to_json())


async def patch_handler(request: web.Request) -> web.Response:
    ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
    if ctype not in PATCH_TYPES:
        raise GlanceError(415, explanation=f"The request media type {ctype or None} is not supported by this "
                          "server.", headers={"Accept-Patch": ", ".join(PATCH_TYPES)})  # fmt: skip
    store = request.app[CTX].store
    rec = store.owned(request.match_info["image_id"], _caller(request), "modify_image")
    ops = parse_patch(ctype, await _body_json(request))
    new = apply_patch(rec, ops)
    store.images[rec.id] = new
    store.touch(new)
    return _json(new.to_json())


async def delete_handler(request: web.Request) -> web.Response:
    request.app[CTX].store.delete(request.match_info["image_id"], _caller(request))
    return web.Response(status=204, content_type="text/html", charset="UTF-8")


async def tag_handler(request: web.Request) -> web.Response:
    store = request.app[CTX].store
    # Glance 33 quirk kept on purpose: the tag in the URL path is percent-decoded to bytes and read as
    # latin-1, so a non-ASCII tag sent this way is stored mis-decoded (PATCH /tags stores it correctly)
    raw = request.raw_path.split("?")[0].rsplit("/tags/", 1)[1]
    tag = unquote_to_bytes(raw).decode("latin-1")
    image_id, caller = request.match_info["image_id"], _caller(request)
    if request.method == "PUT":
        store.add_tag(image_id, tag, caller)
    else:
        store.delete_tag(image_id, tag, caller)
    return web.Response(status=204, content_type="text/html", charset="UTF-8")


# === members


async def members_handler(request: web.Request) -> web.Response:
    store, caller = request.app[CTX].store, _caller(request)
    image_id = request.match_info["image_id"]
    if request.method == "POST":
        body = await _body_json(request)
        member = body.get("member") if isinstance(body, dict) else None
        return _json(store.add_member(image_id, member, caller).to_json(image_id))
    members = store.list_members(image_id, caller)
    return _json({"members": [m.to_json(image_id) for m in members], "schema": "/v2/schemas/members"})


async def member_handler(request: web.Request) -> web.Response:
    store, caller = request.app[CTX].store, _caller(request)
    image_id, member_id = request.match_info["image_id"], request.match_info["member_id"]
    if request.method == "GET":
        return _json(store.get_member(image_id, member_id, caller).to_json(image_id))
    if request.method == "PUT":
        body = await _body_json(request)
        status = body.get("status") if isinstance(body, dict) else None
        return _json(store.update_member(image_id, member_id, status, caller).to_json(image_id))
    store.delete_member(image_id, member_id, caller)
    return web.Response(status=204)


# === data


class _Pacer:
    """Holds a connection to ``rate`` bytes per second (a WAN link), if a rate is set."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.start = time.monotonic()
        self.bytes = 0

    async def account(self, n: int) -> None:
        if not self.rate:
            return
        self.bytes += n
        ahead = self.bytes / self.rate - (time.monotonic() - self.start)
        if ahead > 0:
            await anyio.sleep(ahead)


async def _stall(request: web.Request) -> None:
    """Send nothing more until the client gives up (bounded at 10 minutes)."""
    with anyio.move_on_after(600):
        while request.transport is not None and not request.transport.is_closing():
            await anyio.sleep(0.1)


def _abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()


async def upload_handler(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    ctype = request.headers.get("Content-Type")
    if (ctype or "").split(";")[0].strip() != "application/octet-stream":
        raise GlanceError(415, explanation=f"The request media type {ctype or '${CONTENT_TYPE}'} is not "
                          "supported by this server.", detail=f"Invalid content type {ctype}")  # fmt: skip
    rec, writer = ctx.store.begin_upload(request.match_info["image_id"], _caller(request))
    plan, ok = ctx.faults, False
    pacer = _Pacer(plan.bandwidth)
    received = 0
    buf = bytearray()
    try:
        async for chunk in request.content.iter_chunked(CHUNK):
            end = received + len(chunk)
            for faults, kind in ((plan.drop_upload, "drop_upload"), (plan.stall_upload, "stall_upload")):
                if FaultPlan.take_byte(faults, rec.id, received, end) is not None:
                    plan.record(kind)
                    if kind == "stall_upload":
                        await _stall(request)
                    _abort(request)
                    return web.Response(status=500)
            received = end
            buf += chunk
            if len(buf) >= WRITE_BATCH:
                data, buf = bytes(buf), bytearray()
                await anyio.to_thread.run_sync(writer.write, data)
            await pacer.account(len(chunk))
        if buf:
            await anyio.to_thread.run_sync(writer.write, bytes(buf))
        ok = True
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(lambda: ctx.store.finish_upload(rec, writer, ok=ok))
    return web.Response(status=204, content_type="text/html", charset="UTF-8")


def _parse_range(header: str, size: int) -> tuple[int, int]:
    """[start, end) for a Range header, with Glance's status codes for bad ranges."""
    if not header.startswith("bytes=") or not header[6:].strip():
        raise GlanceError(416, detail="Invalid Range header.")
    spec = header[6:].strip()
    if "," in spec:
        raise GlanceError(400, detail="Requests with multiple ranges are not supported in Glance. You may "
                                      "make multiple single-range requests instead.")  # fmt: skip
    first, sep, last = spec.partition("-")
    try:
        if not sep:
            raise ValueError(spec)
        if first == "":
            start, end = max(0, size - int(last)), size
        else:
            start = int(first)
            end = size if last == "" else min(size, int(last) + 1)
    except ValueError:
        raise GlanceError(416, detail="Invalid Range header.") from None
    if start >= size or start < 0 or end <= start:
        raise GlanceError(416, detail="Invalid start position in Range header. Start position MUST be in the "
                                      f"inclusive range [0, {max(size - 1, 0)}].")  # fmt: skip
    return start, end


async def download_handler(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    rec: ImageRecord = ctx.store.visible(request.match_info["image_id"], _caller(request))
    if rec.status != "active" or rec.size is None:
        return web.Response(status=204)
    plan, size = ctx.faults, rec.size
    range_header = request.headers.get("Range")
    start, end, status = 0, size, 200
    if range_header and not plan.ignore_range:
        start, end = _parse_range(range_header, size)
        status = 206
    resp = web.StreamResponse(status=status)
    resp.content_type = "application/octet-stream"
    resp.content_length = end - start
    resp.headers["Content-MD5"] = rec.checksum or ""
    if status == 206:
        resp.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    resp.headers["x-openstack-request-id"] = request[REQUEST_ID]
    await resp.prepare(request)
    pacer = _Pacer(plan.bandwidth)
    chunk_size = CHUNK if not plan.bandwidth else max(16 << 10, min(CHUNK, int(plan.bandwidth / 50)))
    pieces = ctx.store.read_chunks(rec, start, end, chunk_size)
    pos = start
    while True:
        piece = next(pieces, None) if rec.synthetic_seed else await anyio.to_thread.run_sync(next, pieces, None)
        if piece is None:
            break
        stop = pos + len(piece)
        corrupt = FaultPlan.take_byte(plan.corrupt_download, rec.id, pos, stop)
        if corrupt is not None:
            plan.record("corrupt_download")
            mutable = bytearray(piece)
            mutable[corrupt - pos] ^= 0xFF
            piece = bytes(mutable)
        for faults, kind in ((plan.drop_download, "drop_download"), (plan.stall_download, "stall_download")):
            cut = FaultPlan.take_byte(faults, rec.id, pos, stop)
            if cut is not None:
                plan.record(kind)
                if cut > pos:
                    await resp.write(piece[: cut - pos])
                if kind == "stall_download":
                    await _stall(request)
                _abort(request)
                return resp
        await resp.write(piece)
        await pacer.account(len(piece))
        pos = stop
    await resp.write_eof()
    return resp


def build_region_app(ctx: RegionContext) -> web.Application:
    """One region's Image API v2 application."""
    app = web.Application(
        middlewares=[request_id_middleware, auth_middleware, fault_middleware],
        client_max_size=32 * 1024 * 1024,
    )
    app[CTX] = ctx
    img = "/v2/images/{image_id}"
    app.add_routes([
        web.get("/", root, allow_head=False),
        web.get("/versions", versions, allow_head=False),
        web.get("/healthcheck", healthcheck, allow_head=False),
        web.get("/v2/schemas/{name}", get_schema, name="schemas", allow_head=False),
        web.get("/v2/images", list_handler, name="list", allow_head=False),
        web.post("/v2/images", create_handler, name="create"),
        web.get(img, get_handler, name="get", allow_head=False),
        web.patch(img, patch_handler, name="patch"),
        web.delete(img, delete_handler, name="delete"),
        web.get(img + "/file", download_handler, name="download", allow_head=False),
        web.put(img + "/file", upload_handler, name="upload"),
        web.put(img + "/tags/{tag:.+}", tag_handler, name="tags"),
        web.delete(img + "/tags/{tag:.+}", tag_handler, name="tags_delete"),
        web.get(img + "/members", members_handler, name="members", allow_head=False),
        web.post(img + "/members", members_handler, name="members_add"),
        web.get(img + "/members/{member_id}", member_handler, name="member", allow_head=False),
        web.put(img + "/members/{member_id}", member_handler, name="member_update"),
        web.delete(img + "/members/{member_id}", member_handler, name="member_delete"),
    ])  # fmt: skip
    return app
