"""The aiohttp application of one emulated region: the Image API v2 as Glance 33 speaks it.

This module holds the route table and the metadata handlers (versions, schemas, images, tags, members);
the middlewares and error rendering live in ``middlewares``, image data streaming in ``transfer``, the image
actions (deactivate, reactivate) in ``actions``, the per-region context and stats in ``context``.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote_to_bytes

from aiohttp import web

from .actions import deactivate_handler, reactivate_handler
from .context import CTX, RegionContext, RegionStats, request_caller
from .fields import GlanceError
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
from .middlewares import auth_middleware, fault_middleware, request_id_middleware, stats_middleware
from .patching import PATCH_TYPES, apply_patch, parse_patch, patch_media_type_error
from .schemas import versions_document
from .transfer import download_handler, upload_handler

__all__ = ["RegionContext", "RegionStats", "build_region_app"]


def _json(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # Glance serializes with ensure_ascii=False: non-ASCII names and tags travel as raw UTF-8
    return web.Response(body=json.dumps(doc, ensure_ascii=False).encode(), status=status,
                        content_type="application/json", headers=headers)  # fmt: skip


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
    schema = request.app[CTX].store.schema(request.match_info["name"])
    if schema is None:
        raise GlanceError(404)
    return _json(schema)


# === images


async def list_handler(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    page, marker = list_images(ctx.store, request_caller(request), request.query,
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
    rec = ctx.store.create(body, request_caller(request))
    headers = {
        "Location": f"http://{request.host}/v2/images/{rec.id}",
        "OpenStack-image-import-methods": "glance-direct",
    }
    return _json(rec.to_json(), status=201, headers=headers)


async def get_handler(request: web.Request) -> web.Response:
    rec = request.app[CTX].store.visible(request.match_info["image_id"], request_caller(request))
    return _json(rec.to_json())


async def patch_handler(request: web.Request) -> web.Response:
    ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
    if ctype not in PATCH_TYPES:
        raise patch_media_type_error(ctype)
    # Glance's deserializer checks the whole patch before the controller looks the image up
    store = request.app[CTX].store
    ops = parse_patch(ctype, await _body_json(request), store.image_schema())
    rec = store.owned(request.match_info["image_id"], request_caller(request), "modify_image")
    new = apply_patch(rec, ops)
    if ops:
        store.images[rec.id] = new
        store.touch(new)
    if new.owner != rec.owner:  # 'add /owner' gave the image away (see patching._set_core)
        raise GlanceError(403, f"Forbidding request, image {rec.id} not visible")
    return _json(new.to_json())


async def delete_handler(request: web.Request) -> web.Response:
    request.app[CTX].store.delete(request.match_info["image_id"], request_caller(request))
    return web.Response(status=204, content_type="text/html", charset="UTF-8")


async def tag_handler(request: web.Request) -> web.Response:
    store = request.app[CTX].store
    # Glance 33 quirk kept on purpose: the tag in the URL path is percent-decoded to bytes and read as
    # latin-1, so a non-ASCII tag sent this way is stored mis-decoded (PATCH /tags stores it correctly)
    raw = request.raw_path.split("?")[0].rsplit("/tags/", 1)[1]
    tag = unquote_to_bytes(raw).decode("latin-1")
    image_id, caller = request.match_info["image_id"], request_caller(request)
    if request.method == "PUT":
        store.add_tag(image_id, tag, caller)
    else:
        store.delete_tag(image_id, tag, caller)
    return web.Response(status=204, content_type="text/html", charset="UTF-8")


# === members


async def members_handler(request: web.Request) -> web.Response:
    store, caller = request.app[CTX].store, request_caller(request)
    image_id = request.match_info["image_id"]
    if request.method == "POST":
        member = member_from_body(await _body_json(request))
        return _json(member_json(add_member(store, image_id, member, caller), image_id, member))
    members = list_members(store, image_id, caller)
    return _json({"members": [m.to_json(image_id) for m in members], "schema": "/v2/schemas/members"})


async def member_handler(request: web.Request) -> web.Response:
    store, caller = request.app[CTX].store, request_caller(request)
    image_id, member_id = request.match_info["image_id"], request.match_info["member_id"]
    if request.method == "GET":
        return _json(get_member(store, image_id, member_id, caller).to_json(image_id))
    if request.method == "PUT":
        status = status_from_body(await _body_json(request))
        return _json(update_member(store, image_id, member_id, status, caller).to_json(image_id))
    delete_member(store, image_id, member_id, caller)
    return web.Response(status=204)


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
        web.post(img + "/actions/deactivate", deactivate_handler, name="deactivate"),
        web.post(img + "/actions/reactivate", reactivate_handler, name="reactivate"),
    ])  # fmt: skip
    return app
