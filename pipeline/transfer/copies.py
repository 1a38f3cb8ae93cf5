"""This job's copies in a target region: creating one so that sending the request twice is harmless, and
deleting one only after re-checking that it is ours (``plan.provenance.is_own_copy``, judged on the image
itself: a server that ignores an unknown property filter must never make imgmig delete anybody else's).
- ``create_copy``: the copy's id is chosen here and journalled before the POST. A request whose answer was
  lost is sent again by the client's retry loop; the second POST then gets 409 "already exists", and the
  copy is looked up by that id and adopted when it carries the provenance we sent. A 409 for an id that
  does not exist (it belonged to a deleted image) picks a new id. A cloud that refuses client-chosen ids
  (400/403 naming ``id``) is remembered per region, and from then on the copy is looked for by its
  provenance before every POST, which is then never replayed blindly.
- ``delete_copy``: unprotect when needed, delete; a 404 means it is already gone (a replayed DELETE).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog

from pipeline.cloud.client import ImageClient
from pipeline.errors import (
    ApiError,
    BadRequestError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    PayloadTooLargeError,
    quota_resource,
)
from pipeline.models import Image
from pipeline.plan.provenance import PROVENANCE_PREFIX, carries, is_own_copy

__all__ = ["create_copy", "delete_copy"]

log = structlog.get_logger("imgmig")
_ID_REFUSED = re.compile(r"(?:'id'|\bid\b)", re.IGNORECASE)


async def _lookup(client: ImageClient, image_id: str) -> Image | None:
    try:
        return await client.get_image(image_id)
    except NotFoundError:
        return None


async def _find_queued(client: ImageClient, fields: Mapping[str, Any]) -> Image | None:
    """A queued image carrying ``fields``' provenance (re-checked here: the server may ignore filters)."""
    filters: dict[str, Any] = {k: v for k, v in fields.items() if k.startswith(PROVENANCE_PREFIX)}
    filters["status"] = "queued"
    if client.auth.tenant_id:
        filters["owner"] = client.auth.tenant_id
    async for image in client.list_images(filters):
        if image.status == "queued" and carries(image, fields):
            return image
    return None


def _refuses_id(exc: ApiError) -> bool:
    return isinstance(exc, BadRequestError | ForbiddenError) and bool(_ID_REFUSED.search(exc.message))


async def create_copy(
    client: ImageClient,
    fields: Mapping[str, Any],
    *,
    journal: Callable[[str], Awaitable[None]],
    fallback: Mapping[str, Any] | None = None,
) -> Image:
    """Create a queued copy with ``fields``; when the target refuses them (400, 403 or 413, not about the id, nor
    a full quota), create it with ``fallback`` instead, and the metadata step after the data applies (or reports)
    the rest. Both bodies carry the same provenance, so either create is safe against lost answers (``_create``)."""
    try:
        return await _create(client, fields, journal=journal)
    except (BadRequestError, ForbiddenError, PayloadTooLargeError) as exc:
        if fallback is None or _refuses_id(exc) or quota_resource(exc) is not None:
            raise
        log.warning("create_fields_refused", region=client.region, error=str(exc),
                    message="created with the minimal body; the metadata step applies the rest")  # fmt: skip
        return await _create(client, fallback, journal=journal)


async def _create(
    client: ImageClient,
    fields: Mapping[str, Any],
    *,
    journal: Callable[[str], Awaitable[None]],
    image_id: str | None = None,
) -> Image:
    """Create a queued copy with ``fields`` (which carry its provenance), safe against lost answers.

    ``journal(id)`` is awaited with the chosen id before each POST that uses one, so a crash between the
    POST and its answer still leaves the id in the journal.
    """
    while client.client_ids is not False:
        image_id = image_id or str(uuid.uuid4())
        await journal(image_id)
        try:
            created = await client.create_image({**fields, "id": image_id})
        except ConflictError:
            existing = await _lookup(client, image_id)
            if existing is None:
                image_id = None  # the id of an image deleted earlier: ids are never reused
                continue
            if carries(existing, fields):
                return existing  # our own earlier POST took effect; its answer was lost
            raise
        except ApiError as exc:
            if _refuses_id(exc):
                client.client_ids = False
                break
            if exc.retryable:  # retries ran out on an answer we never saw: the image may exist
                existing = await _lookup(client, image_id)
                if existing is not None and carries(existing, fields):
                    return existing
            raise
        client.client_ids = created.id == image_id  # a server that ignores the id is treated as refusing it
        return created

    async def look_then_create() -> Image:
        found = await _find_queued(client, fields)
        return found if found is not None else await client.create_image(fields)

    # Without a client id a POST is never sent twice blindly: before each one, look for the copy first.
    return await client.retry.call(look_then_create)


async def delete_copy(client: ImageClient, image: Image, job: str) -> bool:
    """Delete this job's copy ``image`` (unprotecting it first); False, touching nothing, when the image
    does not carry this job's provenance. A 404 counts as deleted (a replayed DELETE)."""
    if not is_own_copy(image, job):
        return False
    try:
        if image.protected:
            await client.update_image(image.id, [{"op": "replace", "path": "/protected", "value": False}])
        await client.delete_image(image.id)
    except NotFoundError:
        pass
    return True
