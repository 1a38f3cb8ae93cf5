"""One image's targets, as the engine drives them: the receiving image (created so that a resent request is
harmless, reused when queued, checked when active, deleted only when ours), one upload fed by the fan-out
with its own stall watchdog, and the read-back that verifies it. ``engine`` schedules passes and retries.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from pipeline.cloud.client import ImageClient
from pipeline.cloud.retry import RetryBudget, RetryPolicy
from pipeline.errors import ApiError, ImgmigError, NotFoundError, TargetWriteError, VerificationError
from pipeline.models import Image
from pipeline.plan.provenance import is_own_copy
from pipeline.report.events import BytesWritten, Reporter, TargetFinished
from pipeline.state.failpoints import failpoint
from pipeline.transfer.copies import create_copy
from pipeline.transfer.fanout import Fanout
from pipeline.transfer.hashing import Evidence, Verdict, judge_target
from pipeline.transfer.source import Bandwidth, read_digests

__all__ = ["EngineHooks", "EngineSettings", "Pass", "Target", "TargetResult", "TargetSpec", "TargetWork", "next_chunk"]

MiB = 1 << 20
DELETE_GRACE = 30.0
WRITE_SLICE = 1 << 20
SETTLE_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class EngineSettings:
    chunk_size: int = 8 * MiB
    buffer_depth: int = 4
    #: The retry budget of each image x target (``[transfer] retries``): retries of any kind, at any level.
    retries: int = 5
    #: A target owed data that takes none for this long is cut loose as stalled.
    stall_timeout: float = 120.0
    #: The source may send nothing for this long before its stream is reopened (it is the source's
    #: read-idle timeout; targets waiting on it meanwhile are not stalled).
    source_stall_timeout: float = 120.0
    spool_dir: Path | None = None
    backoff: RetryPolicy = field(default_factory=RetryPolicy)
    #: Hash in a worker thread (hashlib releases the GIL) so uploads keep flowing meanwhile.
    hash_in_thread: bool = True
    #: The job's name: only images carrying it (``imgmig_job``) are ever deleted.
    job: str | None = None


@dataclass(slots=True)
class TargetSpec:
    """One target of one image: where to write, and how to create the receiving image."""

    region: str
    client: ImageClient
    create_fields: Mapping[str, Any]
    #: The body sent instead when the target refuses ``create_fields`` (what it refused is applied, or
    #: reported, by the metadata step after the data); None: no fallback.
    fallback_fields: Mapping[str, Any] | None = None
    #: A copy that already exists (from an interrupted run): reused when queued, checked when active.
    existing: Image | None = None
    #: os_hash_algo values this region is known to use, computed in flight besides md5 + the source's.
    algorithms: frozenset[str] = frozenset()
    #: An id the journal says an earlier run was creating (its answer may never have arrived).
    pending_id: str | None = None


@dataclass(slots=True)
class TargetResult:
    """What happened to one image x target; ``state`` is pending, done, failed or cancelled."""

    region: str
    state: str = "pending"
    target_id: str | None = None
    attempts: int = 0
    bytes: int = 0
    error: str | None = None
    blame: str | None = None
    evidence: Evidence | None = None
    deleted: list[str] = field(default_factory=list)
    #: The verified copy as the target reported it when it was judged done.
    image: Image | None = None
    #: When each phase last began (Unix time): "upload" (the first attempt's first byte), "verify".
    phases: dict[str, float] = field(default_factory=dict)
    #: The image x target's retry budget; the metadata step after the copy spends from it too.
    budget: RetryBudget = field(default_factory=lambda: RetryBudget(0))

    @property
    def done(self) -> bool:
        return self.state == "done"


class EngineHooks:
    """Called as target images come and go, so the caller can journal them at once (crash safety)."""

    async def creating(self, region: str, image_id: str) -> None:
        return None

    async def created(self, region: str, image_id: str) -> None:
        return None

    async def deleted(self, region: str, image_id: str) -> None:
        return None


@dataclass
class Target:
    spec: TargetSpec
    result: TargetResult
    abort: BaseException | None = None
    scope: anyio.CancelScope | None = None
    sent: int = 0
    #: When the upload last made progress (anyio clock), for the stall watchdog.
    progress_at: float = 0.0
    #: True while the upload owes data to the target (a chunk in hand or waiting): only then can it stall.
    owed: bool = False

    @property
    def region(self) -> str:
        return self.spec.region

    @property
    def budget(self) -> RetryBudget:
        return self.result.budget


@dataclass
class Pass:
    """One read of the source feeding a group of targets."""

    size: int
    digests: dict[str, str] = field(default_factory=dict)
    unverified_source: bool = False


class TargetWork:
    """What the engine does to one target of the image it copies (the engine's image copy inherits it)."""

    settings: EngineSettings
    reporter: Reporter
    image: Image
    size: int
    hooks: EngineHooks
    #: The digests of the last stream that verified: what a copy of this image must hold.
    digests: dict[str, str]
    region_bandwidth: Mapping[str, Bandwidth]

    # === the receiving image

    async def _prepare(self, t: Target) -> bool:
        """Ensure a queued target image exists; False when it already holds a verified copy."""
        client, result = t.spec.client, t.result
        existing: Image | None = None
        if result.target_id is not None:
            try:
                existing = await self._settle(client, await client.get_image(result.target_id))
            except NotFoundError:
                result.target_id = None
        if existing is not None and not self._ours(existing):
            existing, result.target_id = None, None  # never reuse, let alone delete, what is not ours
        if existing is not None:
            if existing.status == "queued":
                return True
            if existing.status == "active" and self._holds_source(existing):
                evidence = Evidence(existing.size or 0, dict(self.digests), _reported(existing),
                                    not self.image.checksum)  # fmt: skip
                t.result.image = existing
                self._finish(t, "done", None, evidence)
                return False
            await self._delete(t, existing)

        async def journal(image_id: str) -> None:
            await self.hooks.creating(t.region, image_id)

        created = await create_copy(client, t.spec.create_fields, journal=journal, fallback=t.spec.fallback_fields)
        failpoint("created")
        result.target_id = created.id
        await self.hooks.created(t.region, created.id)
        return True

    def _ours(self, image: Image) -> bool:
        job = self.settings.job
        return job is None or is_own_copy(image, job, self.image.id)

    def _holds_source(self, copy: Image) -> bool:
        """Whether an active copy holds this image's bytes: its published digests, or (for a source that
        publishes none) the digests of this run's verified stream."""
        if self.image.publishes_digest:
            return copy.same_data_as(self.image)
        return bool(self.digests) and judge_target(copy.raw, self.size, self.digests).ok

    async def _settle(self, client: ImageClient, image: Image) -> Image:
        """Wait (bounded) for an image caught mid-upload ('saving') to become queued or active."""
        with anyio.move_on_after(SETTLE_TIMEOUT):
            while image.status == "saving":
                await anyio.sleep(0.5)
                image = await client.get_image(image.id)
        return image

    async def _delete(self, t: Target, image: Image) -> None:
        """Delete a bad copy of ours; shielded and bounded so cancellation cannot leave it half-done."""
        with anyio.move_on_after(DELETE_GRACE, shield=True):
            try:
                if self._ours(image):
                    await t.spec.client.delete_image(image.id)
            except NotFoundError:
                pass
            except ApiError as exc:
                # it carries this job's provenance, so the next run's orphan sweep removes it
                t.result.error = f"could not delete bad copy {image.id}: {exc}"
                return
            t.result.deleted.append(image.id)
            if t.result.target_id == image.id:
                t.result.target_id = None
            await self.hooks.deleted(t.region, image.id)

    # === one target's upload and its verification

    async def _stream(
        self, t: Target, fan: Fanout, rx: MemoryObjectReceiveStream[bytes], run: Pass
    ) -> BaseException | None:
        """Stream this pass's chunks into the target's queued image; the error, or None."""
        limiter = self.region_bandwidth.get(t.region)
        image_id, size = self.image.id, run.size
        # The request starts only once its first chunk is here: aiohttp sends the headers (and so the
        # token, which the server checks then) with the first body bytes, and a target connection held
        # open while a slow source gets going could hit the server's own idle timeout.
        first = await next_chunk(rx)
        if first is None and (t.abort is not None or size > 0):
            rx.close()
            return None if t.abort is not None else TargetWriteError("the stream ended before any byte",
                                                                    region=t.region, image_id=image_id)  # fmt: skip

        async def body() -> AsyncIterator[bytes | memoryview]:
            chunk = first
            while chunk is not None:
                if limiter is not None:
                    await limiter.take(len(chunk))  # our own throttle: not a stall either
                t.owed, t.progress_at = True, anyio.current_time()
                # hand the chunk to aiohttp in slices (views, no copies): the socket's write buffer then
                # never holds a copy of a whole chunk per target
                with memoryview(chunk) as view:
                    for i in range(0, len(view), WRITE_SLICE):
                        yield view[i : i + WRITE_SLICE]
                        t.progress_at = anyio.current_time()
                failpoint("uploading")
                t.sent += len(chunk)
                t.result.bytes = max(t.result.bytes, t.sent)
                self.reporter.emit(BytesWritten(image_id, t.region, len(chunk)))
                t.owed = False  # waiting for the source: not this target's stall
                chunk = await next_chunk(rx)
            if t.abort is not None:
                raise t.abort  # aborting the request leaves the target image queued, never active
            if t.sent != size:
                raise TargetWriteError(f"upload stream ended at {t.sent} of {size} bytes", region=t.region,
                                       image_id=image_id)  # fmt: skip

        assert t.result.target_id is not None
        t.result.phases.setdefault("upload", time.time())
        error: BaseException | None = None
        t.progress_at, t.owed = anyio.current_time(), False
        with anyio.CancelScope() as scope:
            t.scope = scope
            async with anyio.create_task_group() as guard:
                guard.start_soon(self._watch_progress, t, scope)
                try:
                    await t.spec.client.upload_image(t.result.target_id, body(), size=size)
                except Exception as exc:
                    if isinstance(exc, ImgmigError) and exc.fatal:
                        raise
                    error = exc
                finally:
                    rx.close()
                    guard.cancel_scope.cancel()
                    if error is not None:
                        fan.detach(t.region, f"upload failed: {error}")
        if scope.cancelled_caught and error is None:
            error = TargetWriteError("upload stalled: the target took no data for "
                                     f"{self.settings.stall_timeout:g} s", region=t.region,
                                     image_id=image_id)  # fmt: skip
            fan.detach(t.region, str(error))
        return error

    async def _watch_progress(self, t: Target, scope: anyio.CancelScope) -> None:
        """Cancel an upload that owes the target data but moves no byte for the stall timeout: a target
        that stops reading leaves the client blocked in a socket write, where no read timeout applies.
        Time spent waiting for the source (nothing owed) never counts."""
        limit = self.settings.stall_timeout
        while True:
            await anyio.sleep(min(1.0, limit / 4))
            now = anyio.current_time()
            if not t.owed:
                t.progress_at = now
            elif now - t.progress_at > limit:
                scope.cancel()
                return

    async def _verify(self, t: Target, run: Pass) -> BaseException | None:
        """GET the target and compare with the digests computed in flight; None when verified."""
        client, target_id = t.spec.client, t.result.target_id
        assert target_id is not None
        t.result.phases["verify"] = time.time()
        try:
            reported = await self._settle(client, await client.get_image(target_id))
            digests = dict(run.digests)
            verdict = judge_target(reported.raw, run.size, digests)
            if verdict.verdict is Verdict.INCOMPLETE and reported.status == "active":
                # the target hashes with an algorithm we did not compute: read the copy back and hash it
                digests.update(await read_digests(client, reported, piece=self.settings.chunk_size))
                verdict = judge_target(reported.raw, run.size, digests)
        except (ApiError, OSError) as exc:  # this target's trouble stays this target's
            return TargetWriteError(f"cannot read back the target image: {exc}", region=t.region,
                                    image_id=self.image.id)  # fmt: skip
        if verdict.ok:
            failpoint("verified")
            t.result.image = reported  # the metadata step starts from it: no second read
            self._finish(t, "done", None, Evidence(run.size, run.digests, _reported(reported), run.unverified_source))
            return None
        if reported.status == "active":
            await self._delete(t, reported)  # wrong content: never leave it behind
        return VerificationError(f"target verification failed: {verdict.reason}", region=t.region,
                                 image_id=self.image.id)  # fmt: skip

    # === outcomes

    def _finish(
        self,
        t: Target,
        state: str,
        error: str | None,
        evidence: Evidence | None = None,
        *,
        blame: str | None = None,
    ) -> None:
        result = t.result
        result.state, result.error = state, error
        if blame is not None:
            result.blame = blame
        if evidence is not None:
            result.evidence = evidence
        self.reporter.emit(TargetFinished(
            self.image.id, t.region, state, result.target_id, result.attempts, result.bytes, error,
            evidence.to_json() if evidence else {},
        ))  # fmt: skip


async def next_chunk(rx: MemoryObjectReceiveStream[bytes]) -> bytes | None:
    """The next chunk of a target's stream, or None at its end."""
    try:
        try:
            return rx.receive_nowait()  # one is waiting: no need to yield to the loop for it
        except anyio.WouldBlock:
            return await rx.receive()
    except (anyio.EndOfStream, anyio.ClosedResourceError):
        return None


def _reported(image: Image) -> dict[str, Any]:
    return {k: image.raw.get(k) for k in ("id", "status", "size", "checksum", "os_hash_algo", "os_hash_value")}
