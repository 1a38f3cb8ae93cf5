"""``imgmig plan --inspect``: the format verdict of each selected source before any run, from its head.

Each source's head is read with a Range request of at most ``inspection.HOLD`` bytes (a server that ignores Range
is read up to that bound, and the connection closed) and judged as a run would judge it. A verdict is journalled
with the source's checksum (on the image's journal entry, under the job's lock), so later plans and runs reuse it
without reading again, as long as the checksum is the same. A source whose download is not allowed
(``nhncloud_allow_download``) is "not inspected", with the reason.
"""

from __future__ import annotations

from typing import Any

import anyio

from pipeline.cloud.client import ImageClient
from pipeline.cloud.transport import new_session
from pipeline.cloud.wire import Download
from pipeline.config import JobSpec
from pipeline.errors import ApiError
from pipeline.models import Image
from pipeline.plan.intent import Intent
from pipeline.plan.planner import ALLOW_DOWNLOAD, Plan, download_allowed, skip_reason
from pipeline.run.inventory import Clients, Inventory, discover, retry_policy, transport_config
from pipeline.state.journal import Journal
from pipeline.state.lock import JobLock
from pipeline.transfer.inspection import HOLD, SLICE, StreamInspector

__all__ = ["plan_inspected"]

#: Heads read at once.
READS = 4
#: The first Range request's size: enough for the inspector to decide on every format but a few (it decides at
#: 256 KiB); the rest, up to ``HOLD``, is asked for only when it has not.
FIRST = 1024 * 1024


async def read_head(client: ImageClient, image: Image, limit: int = HOLD, first: int = FIRST) -> dict[str, Any]:
    """The verdict on ``image``'s head (``read``: the bytes read): a Range request for its first ``first`` bytes,
    then, only if the inspector has not decided, one for the rest up to ``limit``. A server that ignores Range is
    read up to ``limit`` in one go, and its connection closed there. Undecided at the bound (a format that needs
    the end of the image) says so: a run judges it as it streams."""
    inspector = StreamInspector()
    if not image.size:  # nothing to read (a Range on an empty image is not satisfiable): an empty image is raw
        inspector.finish()
        verdict = inspector.verdict(image.raw.get("disk_format"), image.raw.get("container_format"))
        return {**verdict.to_json(), "inspected": True, "read": 0}
    async with client.open_download(image.id, length=first) as download:
        ranged = download.status == 206
        await _fed(download, inspector, first if ranged else limit)
    if ranged and not inspector.decided and inspector.seen < min(limit, image.size or 0):
        async with client.open_download(image.id, offset=inspector.seen, length=limit - inspector.seen) as download:
            if download.status == 206:
                await _fed(download, inspector, limit)
    if not inspector.decided and inspector.seen >= (image.size or 0):
        inspector.finish()  # the whole image was read: the inspector decides at its end
    if not inspector.decided:
        return {
            "inspected": False,
            "read": inspector.seen,
            "reason": f"not decided from its first {inspector.seen} bytes: judged when a run streams it",
        }
    verdict = inspector.verdict(image.raw.get("disk_format"), image.raw.get("container_format"))
    return {**verdict.to_json(), "inspected": True, "read": inspector.seen}


async def _fed(download: Download, inspector: StreamInspector, bound: int) -> None:
    """Feed ``inspector`` from ``download`` until it decides or has seen ``bound`` bytes (then stop reading)."""
    async for chunk in download.iter_chunks(4 * SLICE):
        inspector.feed(chunk[: max(0, bound - inspector.seen)])
        if inspector.decided or inspector.seen >= bound:
            return


def _not_inspectable(image: Image, spec: JobSpec) -> str | None:
    if not image.checksum:
        return "the source publishes no checksum to keep a verdict for: judged when a run streams it"
    why = skip_reason(image, spec.copy)
    if why is not None:
        return f"not copied: {why}"
    if not download_allowed(image) and not spec.source.enable_download:
        return (f"NHN Cloud does not allow downloading it ({ALLOW_DOWNLOAD} is {image.raw.get(ALLOW_DOWNLOAD)!r}; "
                "[source] enable_download would switch it on for a run)")  # fmt: skip
    return None


async def plan_inspected(spec: JobSpec) -> tuple[Plan, Inventory, dict[str, dict[str, Any]]]:
    """The plan (as ``imgmig plan``), and each selected source's verdict: journalled already (``journalled``, no
    byte read), read now (``read``: how many bytes; then journalled), or not inspected (``inspected`` false, with
    the reason)."""
    state = Journal.read(spec.run.journal_dir, spec.name, packed=True)
    verdicts: dict[str, dict[str, Any]] = {}
    async with new_session(transport_config(spec)) as session:
        inventory = await discover(spec, Clients(spec, session, retry_policy(spec)), state.schemas)
        plan = Intent(spec, inventory, state).plan()
        todo = []
        for image in inventory.images:
            known = state.inspected(image.id, image.checksum)
            why = _not_inspectable(image, spec) if known is None else None
            if known is not None:
                verdicts[image.id] = {**known, "inspected": True, "read": 0, "journalled": True}
            elif why is not None:
                verdicts[image.id] = {"inspected": False, "reason": why, "read": 0}
            else:
                todo.append(image)
        limiter = anyio.CapacityLimiter(READS)

        async def inspect(image: Image) -> None:
            async with limiter:
                try:
                    verdicts[image.id] = await read_head(inventory.source, image)
                except ApiError as exc:
                    verdicts[image.id] = {"inspected": False, "reason": f"cannot read its head: {exc}", "read": 0}

        async with anyio.create_task_group() as tg:
            for image in todo:
                tg.start_soon(inspect, image)
    judged = [i for i in todo if verdicts[i.id].get("inspected")]
    if judged:  # kept with each source's checksum: the next plan or run reads nothing for them
        with JobLock(spec.run.journal_dir, spec.name).held():
            journal = Journal.open(spec.run.journal_dir, spec.name)
            try:
                for image in judged:
                    found = {
                        k: v for k, v in verdicts[image.id].items() if k not in ("inspected", "read", "journalled")
                    }
                    journal.record("image", image_id=image.id, inspected={**found, "checksum": image.checksum})
                journal.sync()
            finally:
                journal.close()
    return plan, inventory, {i.id: verdicts[i.id] for i in inventory.images if i.id in verdicts}
