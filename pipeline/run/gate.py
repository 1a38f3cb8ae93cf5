"""NHN Cloud's download permission on source images (``nhncloud_allow_download``), switched on for a copy
and back afterwards, crash-safe.

With ``[source] enable_download = true``, a source whose download is not allowed is opened just before it
is read and restored as soon as it is done in every target (verified or failed, also when the run is
cancelled). The intent is journalled before the PATCH that opens it, and the restore after the PATCH that
closes it; a run killed in between leaves the source in ``JournalState.open_sources``, and the next run
restores every such source first, before it discovers or plans anything (even when that image is no
longer selected). Restoring only ever puts back the journalled original value.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import structlog

from pipeline.cloud.client import ImageClient
from pipeline.errors import ApiError, NotFoundError
from pipeline.models import Image
from pipeline.plan.planner import ALLOW_DOWNLOAD
from pipeline.state.failpoints import failpoint
from pipeline.state.journal import Journal

__all__ = ["download_enabled", "restore_left_open"]

log = structlog.get_logger("imgmig")
#: How long a restore may take when the run is being cancelled (it is shielded).
RESTORE_GRACE = 30.0


def _restore_ops(original: str | None) -> list[dict[str, Any]]:
    if original is None:
        return [{"op": "remove", "path": f"/{ALLOW_DOWNLOAD}"}]
    return [{"op": "add", "path": f"/{ALLOW_DOWNLOAD}", "value": original}]


async def _restore(
    client: ImageClient, journal: Journal, image_id: str, original: str | None, *, left_open: bool = False
) -> None:
    """Put the original value back (only if the source still shows ours), then journal the restore."""
    try:
        current = await client.get_image(image_id)
    except NotFoundError:
        current = None  # the source is gone: nothing to put back
    if current is not None and current.raw.get(ALLOW_DOWNLOAD) != original:
        await client.update_image(image_id, _restore_ops(original))
    journal.record("source", image_id=image_id, download="restored")
    log.info("source_download_restored", image_id=image_id, attribute=ALLOW_DOWNLOAD, value=original,
             changed=current is not None and current.raw.get(ALLOW_DOWNLOAD) != original,
             gone=current is None, left_open=left_open)  # fmt: skip


@asynccontextmanager
async def download_enabled(client: ImageClient, journal: Journal, image: Image) -> AsyncIterator[None]:
    """Allow ``image`` to be downloaded for the duration of the block, then restore its original value."""
    original = image.raw.get(ALLOW_DOWNLOAD)
    journal.record("source", image_id=image.id, download="opening", original=original)  # intent first
    try:
        await client.update_image(image.id, [{"op": "add", "path": f"/{ALLOW_DOWNLOAD}", "value": "true"}])
    except ApiError:
        with anyio.move_on_after(RESTORE_GRACE, shield=True):  # it may have taken effect all the same
            try:
                await _restore(client, journal, image.id, original)
            except ApiError:
                pass  # still open in the journal: the next run restores it first
        raise
    log.info("source_download_enabled", image_id=image.id, attribute=ALLOW_DOWNLOAD, value="true",
             original=original, message="switched on while the image is read; restored afterwards")  # fmt: skip
    failpoint("source_opened")
    try:
        yield
    finally:
        with anyio.move_on_after(RESTORE_GRACE, shield=True):
            try:
                await _restore(client, journal, image.id, original)
            except ApiError as exc:  # left in the journal: the next run restores it first
                log.warning("source_restore_failed", image_id=image.id, error=str(exc),
                            message="the next run restores it before anything else")  # fmt: skip


async def restore_left_open(client: ImageClient, journal: Journal) -> dict[str, str]:
    """Restore every source an earlier run left open; returns image id -> why it could not be restored."""
    problems: dict[str, str] = {}
    for image_id, original in list(journal.state.open_sources.items()):
        try:
            await _restore(client, journal, image_id, original, left_open=True)  # an earlier run left it on
        except ApiError as exc:
            problems[image_id] = f"could not restore {ALLOW_DOWNLOAD}={original!r} on source {image_id}: {exc}"
    return problems
