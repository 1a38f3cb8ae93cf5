"""The aiohttp application of one emulated region: the Image API v2 as Glance 33 speaks it.

Middlewares, outermost first: request id + error rendering (JSON, HTML or text by ``Accept``, as webob
does), token check (401 like keystonemiddleware), then fault injection (latency, status bursts). The
handlers stream image data through worker threads, so memory stays flat whatever the image size.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable, Generator
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import unquote_to_bytes

import anyio
from aiohttp import web
from aiohttp.client_exceptions import ClientConnectionResetError

from .faults import FaultPlan
from .fields import GlanceError
from .identity import Identity
from .listing import list_images, page_links
from .members import (
    add_member,
    delete_member,
    get_member,
    list_members,
    member_from_body,
    member_json,
    status_from_body,
    update_member,
)
from .patching import PATCH_TYPES, apply_patch, parse_patch, patch_media_type_error
from .ranges import requested_range
from .schemas import SCHEMAS, versions_document
from .store import Caller, ImageRecord, RegionStore

__all__ = ["RegionContext", "RegionStats", "build_region_app"]

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
class RegionStats:
    """What one region served, counted at the server (tests prove their scenario with these)."""

    #: Requests by kind (``faults.OPS``), counted before any fault or check.
    requests: dict[str, int] = field(default_factory=dict)
    uploads_started: int = 0
    uploads_completed: int = 0
    #: Uploads that broke off (client gone, dropped, stalled) before all their bytes arrived.
    uploads_aborted: int = 0
    #: Uploads in progress right now, and the bytes they have received so far (>0: one is mid-transfer).
    uploads_active: int = 0
    active_upload_bytes: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    #: Requests refused with 401 (a missing, unknown, expired or revoked token).
    unauthorized: int = 0

    def count(self, op: str) -> None:
        self.requests[op] = self.requests.get(op, 0) + 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RegionContext:
    """What the handlers of one region need: its name, store, faults and the shared identity."""

    name: str
    store: RegionStore
    faults: FaultPlan
    identity: Identity
    stats: RegionStats = field(default_factory=RegionStats)


CTX: web.AppKey[RegionContext] = web.AppKey("region", RegionContext)
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
CALLER: web.RequestKey[Caller] = web.RequestKey("caller", Caller)


#: Methods in the order Glance's router lists them in ``Allow``.
_METHOD_ORDER = ("GET", "POST", "PUT", "PATCH", "DELETE")


def _json(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # Glance serializes with ensure_ascii=False: non-ASCII names and tags travel as raw UTF-8
    return web.Response(body=json.dumps(doc, ensure_ascii=False).encode(), status=status,
                        content_type="application/json", headers=headers)  # fmt: skip


def _error_response(err: GlanceError, request: web.Request) -> web.Response:
    if err.status == 415 and err.template is None:
        # webob's HTTPUnsupportedMediaType template; ${CONTENT_TYPE} stays literal when the header is absent
        ctype = request.headers.get("Content-Type", "${CONTENT_TYPE}")
        err.template = (f"The request media type {ctype} is not supported by this server.\n<br /><br />\n"
                        "${detail}")  # fmt: skip
    body, ctype = err.body(request.headers.get("Accept", ""))
    # webob sends no body for HEAD, and says so with Content-Length: 0
    body = b"" if request.method == "HEAD" else body
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
        allow = ", ".join(m for m in _METHOD_ORDER if m in exc.allowed_methods)
        template = f"The method {request.method} is not allowed for this resource. <br /><br />\n${{detail}}"
        resp = _error_response(GlanceError(405, headers={"Allow": allow}, template=template), request)
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
        ctx.stats.unauthorized += 1
        # keystonemiddleware names the identity service's root, not its /v2.0 endpoint
        root = ctx.identity.url.removesuffix("/v2.0")
        raise GlanceError(401, headers={"WWW-Authenticate": f'Keystone uri="{root}"'})
    request[CALLER] = info.caller
    return await handler(request)


@web.middleware
async def fault_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Latency before every request; status bursts (5xx, 429 with Retry-After) for matching ones; lost
    answers (the request takes effect, then the connection drops) after matching successful ones."""
    ctx = request.app[CTX]
    plan = ctx.faults
    if plan.latency > 0:
        await anyio.sleep(plan.latency)
    op = ROUTE_OPS.get(request.match_info.route.name or "")
    if not op:
        return await handler(request)
    image_id = request.match_info.get("image_id")
    rule = plan.take_status(op, image_id)
    if rule is not None:
        headers = {"Retry-After": f"{rule.retry_after:g}"} if rule.retry_after is not None else None
        raise GlanceError(rule.status, "Injected fault.", headers=headers)
    garbled = plan.take_body(op, image_id)
    if garbled is not None:
        fake = web.Response(status=garbled.status, body=garbled.body.encode() * garbled.repeat)
        fake.headers["Content-Type"] = garbled.content_type
        return fake
    resp = await handler(request)
    if plan.lose_response and 200 <= resp.status < 300 and not resp.prepared:
        key = image_id if op != "create" else _created_name(resp)
        if plan.take_lost(op, key, request.method):
            _abort(request)  # it took effect; the client never hears so
    return resp


def _created_name(resp: web.StreamResponse) -> str | None:
    """The name of the image a create answer describes (the key of a create's ``first_per_image``)."""
    body = getattr(resp, "body", None)
    try:
        doc = json.loads(body) if isinstance(body, bytes) else None
    except ValueError:
        return None
    name = doc.get("name") if isinstance(doc, dict) else None
    return name if isinstance(name, str) else None


@web.middleware
async def stats_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every request by kind, before anything can refuse it."""
    op = ROUTE_OPS.get(request.match_info.route.name or "")
    if op:
        request.app[CTX].stats.count(op)
    return await handler(request)


def _caller(request: web.Request) -> Caller:
    return request[CALLER]


async def _body_json(request: web.Request) -> Any:
    try:
        return json.loads(await request.read())
    except ValueError:
        raise GlanceError(400, "Malformed JSON in request body.") from None


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
    ctx = request.app[CTX]
    page, marker = list_images(ctx.store, _caller(request), request.query,
                               ignore_properties=ctx.faults.ignore_property_filters)  # fmt: skip
    links = page_links(request.query, marker)
    doc: dict[str, Any] = {"images": [r.to_json() for r in page], "first": links["first"],
                           "schema": "/v2/schemas/images"}  # fmt: skip
    if "next" in links:
        doc["next"] = links["next"]
    return _json(doc)


async def create_handler(request: web.Request) -> web.Response:
    body = await _body_json(request)
    ctx = request.app[CTX]
    if ctx.faults.refuse_client_ids and isinstance(body, dict) and "id" in body:
        raise GlanceError(403, "Attribute 'id' is read-only.")  # a cloud that does not let clients pick ids
    rec = ctx.store.create(body, _caller(request))
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
        raise patch_media_type_error(ctype)
    # Glance's deserializer checks the whole patch before the controller looks the image up
    ops = parse_patch(ctype, await _body_json(request))
    store = request.app[CTX].store
    rec = store.owned(request.match_info["image_id"], _caller(request), "modify_image")
    new = apply_patch(rec, ops)
    if ops:
        store.images[rec.id] = new
        store.touch(new)
    if new.owner != rec.owner:  # 'add /owner' gave the image away (see patching._set_core)
        raise GlanceError(403, f"Forbidding request, image {rec.id} not visible")
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
        member = member_from_body(await _body_json(request))
        return _json(member_json(add_member(store, image_id, member, caller), image_id, member))
    members = list_members(store, image_id, caller)
    return _json({"members": [m.to_json(image_id) for m in members], "schema": "/v2/schemas/members"})


async def member_handler(request: web.Request) -> web.Response:
    store, caller = request.app[CTX].store, _caller(request)
    image_id, member_id = request.match_info["image_id"], request.match_info["member_id"]
    if request.method == "GET":
        return _json(get_member(store, image_id, member_id, caller).to_json(image_id))
    if request.method == "PUT":
        status = status_from_body(await _body_json(request))
        return _json(update_member(store, image_id, member_id, status, caller).to_json(image_id))
    delete_member(store, image_id, member_id, caller)
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


#: A stalled upload is aborted after this long, as uwsgi's ``socket-timeout = 10`` does in front of Glance.
UPLOAD_STALL_LIMIT = 10.0


async def _stall(request: web.Request, limit: float = 600.0) -> None:
    """Send or read nothing more until the client gives up, or ``limit`` seconds pass."""
    with anyio.move_on_after(limit):
        # aiohttp has no event for "the client went away", so the transport is polled
        while request.transport is not None and not request.transport.is_closing():  # noqa: ASYNC110
            await anyio.sleep(0.1)


def _abort(request: web.Request) -> None:
    """Reset the connection (RST): whatever is still buffered is lost."""
    if request.transport is not None:
        request.transport.abort()


def _hang_up(request: web.Request) -> None:
    """Close the connection after what was written so far (FIN): the client gets exactly those bytes."""
    if request.transport is not None:
        request.transport.close()


#: What a client that goes away mid-body looks like from the server side.
_GONE = (ConnectionError, ClientConnectionResetError)


async def upload_handler(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    ctype = request.headers.get("Content-Type")
    if (ctype or "").split(";")[0].strip() != "application/octet-stream":
        raise GlanceError(415, detail=f"Invalid content type {ctype}")
    plan, ok, stats = ctx.faults, False, ctx.stats
    rec, writer = ctx.store.begin_upload(request.match_info["image_id"], _caller(request),
                                         discard=plan.discard_uploads)  # fmt: skip
    pacer = _Pacer(plan.bandwidth)
    received = 0
    buf = bytearray()
    stats.uploads_started += 1
    stats.uploads_active += 1
    try:
        async for chunk in request.content.iter_chunked(CHUNK):
            end = received + len(chunk)
            for faults, kind in ((plan.drop_upload, "drop_upload"), (plan.stall_upload, "stall_upload")):
                if FaultPlan.take_byte(faults, rec.id, received, end) is not None:
                    plan.record(kind)
                    if kind == "stall_upload":
                        await _stall(request, UPLOAD_STALL_LIMIT)
                    _abort(request)
                    return web.Response(status=500)
            corrupt = FaultPlan.take_byte(plan.corrupt_upload, rec.id, received, end)
            if corrupt is not None:
                plan.record("corrupt_upload")
                flipped = bytearray(chunk)
                flipped[corrupt - received] ^= 0xFF
                chunk = bytes(flipped)
            received = end
            stats.bytes_received += len(chunk)
            stats.active_upload_bytes += len(chunk)
            buf += chunk
            if len(buf) >= WRITE_BATCH:
                data, buf = bytes(buf), bytearray()
                await anyio.to_thread.run_sync(writer.write, data)
            await pacer.account(len(chunk))
        if buf:
            await anyio.to_thread.run_sync(writer.write, bytes(buf))
        ok = True
    except _GONE:
        return web.Response(status=400)  # the client went away mid-upload; nobody reads this answer
    finally:
        stats.uploads_active -= 1
        stats.active_upload_bytes -= received
        if ok:
            stats.uploads_completed += 1
        else:
            stats.uploads_aborted += 1
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(lambda: ctx.store.finish_upload(rec, writer, ok=ok))
    return web.Response(status=204, content_type="text/html", charset="UTF-8")


async def download_handler(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    rec: ImageRecord = ctx.store.visible(request.match_info["image_id"], _caller(request))
    ctx.store.check_download(rec, _caller(request))
    if rec.status != "active" or rec.size is None:
        return web.Response(status=204)
    plan, size = ctx.faults, rec.size
    span = None
    if not plan.ignore_range:
        span = requested_range(request.headers.get("Range"), request.headers.get("Content-Range"), size)
    (start, end), status = span or (0, size), 200 if span is None else 206
    resp = web.StreamResponse(status=status)
    resp.content_type = "application/octet-stream"
    resp.content_length = end - start
    resp.headers["Content-MD5"] = rec.checksum or ""
    if status == 206:
        resp.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    resp.headers["x-openstack-request-id"] = request[REQUEST_ID]
    if rec.synthetic_seed is None and rec.data_path is None:
        raise GlanceError(500, "the emulator discarded this image's data (discard_uploads knob)")
    await resp.prepare(request)
    chunk_size = CHUNK if not plan.bandwidth else max(16 << 10, min(CHUNK, int(plan.bandwidth / 50)))
    pieces = ctx.store.read_chunks(rec, start, end, chunk_size)
    try:
        await _send_pieces(request, resp, rec, pieces, start)
    except _GONE:
        pass  # the client went away mid-image
    finally:
        pieces.close()  # the client may leave mid-image: close the image file now, not at GC time
    return resp


async def _send_pieces(
    request: web.Request, resp: web.StreamResponse, rec: ImageRecord, pieces: Generator[bytes], pos: int
) -> None:
    """Write the image's pieces from offset ``pos``, applying the download fault knobs on the way."""
    plan = request.app[CTX].faults
    pacer = _Pacer(plan.bandwidth)
    while True:
        if rec.synthetic_seed:
            piece = next(pieces, None)
        else:
            piece = await anyio.to_thread.run_sync(next, pieces, None)
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
                else:
                    _hang_up(request)
                return
        await resp.write(piece)
        request.app[CTX].stats.bytes_sent += len(piece)
        await pacer.account(len(piece))
        pos = stop
    await resp.write_eof()


def build_region_app(ctx: RegionContext) -> web.Application:
    """One region's Image API v2 application."""
    app = web.Application(
        middlewares=[stats_middleware, request_id_middleware, auth_middleware, fault_middleware],
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
