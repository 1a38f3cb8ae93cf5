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
- ``retire`` (a grace-period prune) and ``reactivated`` (the first write of a restore): each write only when it is
  not done yet, so a replay completes what a lost answer or a crash left.
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
from pipeline.plan.provenance import PROV_RETIRED_AT, PROVENANCE_PREFIX, carries, is_own_copy, iso_time
from pipeline.state.failpoints import failpoint

__all__ = ["create_copy", "delete_copy", "in_effect", "patch_replayed", "reactivated", "retire"]

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


async def delete_copy(client: ImageClient, image: Image, job: str | tuple[str, ...]) -> bool:
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


def in_effect(op: Mapping[str, Any], image: Image) -> bool:
    """Whether the JSON-patch ``op`` already holds on ``image`` (a replayed PATCH whose first answer was lost)."""
    key = op["path"][1:].replace("~1", "/").replace("~0", "~")
    if op["op"] == "remove":
        return key not in image.raw
    return key in image.raw and image.raw[key] == op["value"]


async def patch_replayed(client: ImageClient, image_id: str, ops: list[dict[str, Any]]) -> None:
    """PATCH ``ops``; a refusal is no error when every op holds already (the client sent the PATCH again after its
    first answer was lost, and a ``remove`` of what is gone gets a 409)."""
    try:
        await client.update_image(image_id, ops)
    except (BadRequestError, ConflictError, ForbiddenError):
        current = await client.get_image(image_id)
        if not all(in_effect(op, current) for op in ops):
            raise


async def retire(client: ImageClient, copy: Image, job: str | tuple[str, ...], *, deactivate: bool,
                 now: float) -> bool:  # fmt: skip
    """Retire this job's copy ``copy``: mark it (``imgmig_retired_at``) and hide it in one PATCH, then deactivate
    it (``deactivate``). What is done already is not sent again (a replay after a lost answer or a crash finds the
    marker and completes the rest). False, touching nothing, when the image does not carry this job's provenance."""
    current = await client.get_image(copy.id)
    if not is_own_copy(current, job):
        return False
    ops: list[dict[str, Any]] = []
    if PROV_RETIRED_AT not in current.raw:
        ops.append({"op": "add", "path": f"/{PROV_RETIRED_AT}", "value": iso_time(now)})
    if current.raw.get("os_hidden") is not True:
        ops.append({"op": "replace", "path": "/os_hidden", "value": True})
    if ops:
        await patch_replayed(client, copy.id, ops)
        failpoint("retiring")
    if deactivate and current.status == "active":
        await client.deactivate_image(copy.id)
    return True


async def reactivated(client: ImageClient, copy: Image) -> Image:
    """``copy`` active again (reactivated when deactivated), as the target reports it now: the first write of a
    restore. The marker goes afterwards, with the metadata (a crash in between leaves a copy still marked, which
    the next run restores again)."""
    current = await client.get_image(copy.id)
    if current.status == "deactivated":
        await client.reactivate_image(copy.id)
        failpoint("reactivated")
        current = await client.get_image(copy.id)
    return current
