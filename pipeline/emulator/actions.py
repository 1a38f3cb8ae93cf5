"""Image actions (/v2/images/{id}/actions/deactivate|reactivate), as Glance 33's ``image_actions`` does them.

Both routes take no body (Glance's ``body_reject``): a request with one is refused with 400 before the image
is even looked up. Then come the lookup (404), the policy (403) and the domain transition
(``RegionStore.set_activation``). The answer is 204 with an empty body, typed like Glance's other bodiless
answers.
"""

from __future__ import annotations

from aiohttp import web

from .context import CTX, request_caller
from .fields import GlanceError

__all__ = ["deactivate_handler", "reactivate_handler"]


def _has_body(request: web.Request) -> bool:
    """Glance's view of a body: Content-Length above 0, or chunked transfer (even a zero-length one)."""
    if "chunked" in request.headers.get("Transfer-Encoding", "").lower():
        return True
    return (request.content_length or 0) > 0


async def _act(request: web.Request, action: str) -> web.Response:
    if _has_body(request):
        raise GlanceError(400, "A body is not expected with this request.")
    request.app[CTX].store.set_activation(request.match_info["image_id"], request_caller(request), action)
    return web.Response(status=204, content_type="text/html", charset="UTF-8")


async def deactivate_handler(request: web.Request) -> web.Response:
    return await _act(request, "deactivate")


async def reactivate_handler(request: web.Request) -> web.Response:
    return await _act(request, "reactivate")
