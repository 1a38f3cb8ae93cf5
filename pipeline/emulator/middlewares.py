"""The middlewares of one region's application, and the rendering of errors the way Glance does.

Middlewares, outermost first: request counting, request id + error rendering (JSON, HTML or text by
``Accept``, as webob does), token check (401 like keystonemiddleware), then fault injection (latency,
status bursts, garbled bodies, lost answers).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable

import anyio
from aiohttp import web

from .context import CALLER, CTX, REQUEST_ID
from .fields import GlanceError
from .quotas import LimitExceeded
from .transfer import abort_connection

__all__ = [
    "MAX_REQUEST_ID",
    "ROUTE_OPS",
    "Handler",
    "auth_middleware",
    "fault_middleware",
    "request_id_middleware",
    "stats_middleware",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_PUBLIC_PATHS = frozenset({"/", "/versions", "/healthcheck"})
MAX_REQUEST_ID = 64
#: Route name -> the request kind a status fault can target (see faults.OPS).
ROUTE_OPS = {
    "schemas": "schemas", "list": "list", "create": "create", "get": "get", "patch": "patch",
    "delete": "delete", "download": "download", "upload": "upload", "tags": "tags", "tags_delete": "tags",
    "members": "members", "members_add": "members", "member": "members", "member_update": "members",
    "member_delete": "members", "deactivate": "deactivate", "reactivate": "reactivate",
}  # fmt: skip

#: Methods in the order Glance's router lists them in ``Allow``.
_METHOD_ORDER = ("GET", "POST", "PUT", "PATCH", "DELETE")


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
    """Echo or mint x-openstack-request-id; render every error the way Glance does (counting quota refusals)."""
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
        if isinstance(err, LimitExceeded):
            request.app[CTX].stats.refused(err.resource)
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
    op = ROUTE_OPS.get(request.match_info.route.name or "")
    if op in plan.arrivals:
        plan.arrivals[op].set()
    if op in plan.holds:
        await plan.holds[op].wait()
    if plan.latency > 0:
        await anyio.sleep(plan.latency)
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
            abort_connection(request)  # it took effect; the client never hears so
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
    if not op:
        return await handler(request)
    ctx = request.app[CTX]
    stats = ctx.stats
    stats.count(op)
    stats.began(op)
    writes = request.method not in ("GET", "HEAD")
    if writes:
        ctx.store.version += 1  # a listing walk in progress recomputes its order (see listing)
    try:
        return await handler(request)
    finally:
        stats.ended(op)
        if writes:
            ctx.store.version += 1
