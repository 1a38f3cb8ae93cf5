"""One copy of an image in one target (``TargetCopy``), as the engine drives it: the receiving image (created so
that a resent request is harmless, reused when queued, checked when active, deleted only when ours), one upload
per pass fed by the fan-out with its own stall watchdog, and the read-back that verifies it. The engine is one
image; a ``TargetCopy`` is one copy. ``engine`` schedules passes and retries.
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
from pipeline.cloud.transport import BodyError
from pipeline.errors import ApiError, NotFoundError, TargetWriteError, TransferError, VerificationError
from pipeline.models import Content, Image, Verdict, source_content
from pipeline.plan.provenance import is_own_copy
from pipeline.report.events import BytesWritten, Reporter, TargetFinished
from pipeline.state.failpoints import failpoint
from pipeline.transfer.copies import create_copy
from pipeline.transfer.fanout import Fanout
from pipeline.transfer.hashing import Evidence, judge_target
from pipeline.transfer.inspection import FormatVerdict
from pipeline.transfer.source import Bandwidth, read_digests

__all__ = [
    "EngineHooks",
    "EngineSettings",
    "ImageContext",
    "Pass",
    "TargetCopy",
    "TargetResult",
    "TargetSpec",
    "next_chunk",
]

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
    #: The job's names (its name and previous names): only images carrying one (``imgmig_job``) are ever deleted.
    job: str | tuple[str, ...] | None = None
    #: Inspect each image's head as it streams and refuse an unsafe or mislabelled one (``inspection``).
    inspect: bool = True
    #: ``[copy] allow_format_mismatch``: content that differs from its label is copied, with a warning.
    allow_format_mismatch: bool = False


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
    #: Warnings about the copy that do not stop it (a format mismatch let through: ``allow_format_mismatch``).
    warnings: list[str] = field(default_factory=list)
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

    def inspected(self, verdict: FormatVerdict) -> None:
        """The inspector judged the image's head (once per image; before any byte reached a target)."""
        return None


@dataclass
class Pass:
    """One read of the source feeding a group of targets."""

    size: int
    digests: dict[str, str] = field(default_factory=dict)
    unverified_source: bool = False

    @property
    def content(self) -> Content:
        """What this pass sent: its size and the digests computed from its stream (once it verified)."""
        return Content(self.size, self.digests)


@dataclass(slots=True)
class ImageContext:
    """What every copy of one image shares: the run's settings and reporter, the image, the journal hooks, and the
    digests of the last stream that verified (what a copy of this image must hold)."""

    settings: EngineSettings
    reporter: Reporter
    image: Image
    hooks: EngineHooks
    digests: dict[str, str] = field(default_factory=dict)
    #: What the inspector made of the image's head (``inspection``), once a stream had it decided.
    verdict: FormatVerdict | None = None

    @property
    def size(self) -> int:
        return self.image.size or 0


class TargetCopy:
    """One copy of one image in one target, from its receiving image to its verification. It owns its state: the
    spec and result, the current pass's abort reason and byte count, and the watchdog's view of its upload. The
    engine's image copy decides which passes it takes part in and when it is retried."""

    def __init__(self, spec: TargetSpec, result: TargetResult, shared: ImageContext,
                 bandwidth: Bandwidth | None = None) -> None:  # fmt: skip
        self.spec = spec
        self.result = result
        self.shared = shared
        self.bandwidth = bandwidth
        #: Why the current pass's source stream ended early, set by the producer (the upload then aborts).
        self.abort: BaseException | None = None
        #: Cancels the current pass's upload (a stall); a fresh one per pass.
        self.scope = anyio.CancelScope()
        #: Bytes of the current pass handed to the upload.
        self.sent = 0
        #: When the upload last made progress (anyio clock), for the stall watchdog.
        self.progress_at = 0.0
        #: True while the upload owes data to the target (a chunk in hand or waiting): only then can it stall.
        self.owed = False

    def __repr__(self) -> str:
        return f"TargetCopy({self.region!r}, {self.result.state})"

    @property
    def region(self) -> str:
        return self.spec.region

    @property
    def budget(self) -> RetryBudget:
        return self.result.budget

    def begin_pass(self) -> None:
        """Take part in a new pass: a fresh abort reason, byte count and cancel scope, one more attempt."""
        self.abort, self.sent, self.scope = None, 0, anyio.CancelScope()
        self.result.attempts += 1

    # === the receiving image

    async def prepare(self) -> bool:
        """Ensure a queued target image exists; False when it already holds a verified copy."""
        client, result = self.spec.client, self.result
        existing: Image | None = None
        if result.target_id is not None:
            try:
                existing = await self._settle(await client.get_image(result.target_id))
            except NotFoundError:
                result.target_id = None
        if existing is not None and not self._ours(existing):
            existing, result.target_id = None, None  # never reuse, let alone delete, what is not ours
        if existing is not None:
            if existing.status == "queued":
                return True
            if existing.status == "active" and self._holds_source(existing):
                evidence = Evidence(existing.size or 0, dict(self.shared.digests), _reported(existing),
                                    not self.shared.image.publishes_digest)  # fmt: skip
                result.image = existing
                self.finish("done", None, evidence)
                return False
            await self.delete(existing)

        async def journal(image_id: str) -> None:
            await self.shared.hooks.creating(self.region, image_id)

        created = await create_copy(client, self.spec.create_fields, journal=journal,
                                    fallback=self.spec.fallback_fields)  # fmt: skip
        failpoint("created")
        result.target_id = created.id
        await self.shared.hooks.created(self.region, created.id)
        return True

    def _ours(self, image: Image) -> bool:
        job = self.shared.settings.job
        return job is None or is_own_copy(image, job, self.shared.image.id)

    def _holds_source(self, copy: Image) -> bool:
        """Whether an active copy holds this image's bytes (``models.source_content``: its published digests, or
        for a source that publishes none, the digests of this run's verified stream)."""
        return source_content(self.shared.image, self.shared.digests).held_by(copy.content).ok

    async def _settle(self, image: Image) -> Image:
        """Wait (bounded) for an image caught mid-upload ('saving') to become queued or active."""
        with anyio.move_on_after(SETTLE_TIMEOUT):
            while image.status == "saving":
                await anyio.sleep(0.5)
                image = await self.spec.client.get_image(image.id)
        return image

    async def discard(self) -> None:
        """Delete this copy's receiving image unless it holds a verified copy: a queued image no pass will fill
        (shielded and bounded; one left behind carries this job's provenance, and a later run's sweep removes
        it)."""
        target_id = self.result.target_id
        if target_id is None or self.result.done:
            return
        with anyio.move_on_after(DELETE_GRACE, shield=True):
            try:
                image = await self.spec.client.get_image(target_id)
            except NotFoundError:
                self.result.target_id = None
                return
            except ApiError:
                return
            if image.status != "active":
                await self.delete(image)

    async def delete(self, image: Image) -> None:
        """Delete a bad copy of ours; shielded and bounded so cancellation cannot leave it half-done."""
        with anyio.move_on_after(DELETE_GRACE, shield=True):
            try:
                if self._ours(image):
                    await self.spec.client.delete_image(image.id)
            except NotFoundError:
                pass
            except ApiError as exc:
                # it carries this job's provenance, so the next run's orphan sweep removes it
                self.result.error = f"could not delete bad copy {image.id}: {exc}"
                return
            self.result.deleted.append(image.id)
            if self.result.target_id == image.id:
                self.result.target_id = None
            await self.shared.hooks.deleted(self.region, image.id)

    # === the upload and its verification

    async def stream(
        self, fan: Fanout, rx: MemoryObjectReceiveStream[bytes], run: Pass
    ) -> ApiError | TransferError | None:
        """Stream this pass's chunks into the target's queued image; the error, or None.

        Only what an upload can meet becomes this target's failure: the transport, the API (TLS and a refused
        token included) and the stream itself. Anything else (a fatal error, a bug) propagates."""
        target_id, image_id, size = self.result.target_id, self.shared.image.id, run.size
        if target_id is None:  # prepare() gives every target of a pass its receiving image
            missing = TargetWriteError("no receiving image to upload into", region=self.region, image_id=image_id)
            rx.close()
            fan.detach(self.region, str(missing))
            return missing
        # The request starts only once its first chunk is here: aiohttp sends the headers (and so the
        # token, which the server checks then) with the first body bytes, and a target connection held
        # open while a slow source gets going could hit the server's own idle timeout.
        first = await next_chunk(rx)
        if first is None and (self.abort is not None or size > 0):
            rx.close()
            if self.abort is not None:
                return None
            return TargetWriteError("the stream ended before any byte", region=self.region, image_id=image_id)
        self.result.phases.setdefault("upload", time.time())
        error: ApiError | TransferError | None = None
        self.progress_at, self.owed = anyio.current_time(), False
        with self.scope:
            async with anyio.create_task_group() as guard:
                guard.start_soon(self._watch_progress)
                try:
                    await self.spec.client.upload_image(target_id, self._body(first, rx, size), size=size)
                except (ApiError, TransferError) as exc:
                    error = exc
                finally:
                    rx.close()
                    guard.cancel_scope.cancel()
                    if error is not None:
                        fan.detach(self.region, f"upload failed: {error}")
        if self.scope.cancelled_caught and error is None:
            error = TargetWriteError("upload stalled: the target took no data for "
                                     f"{self.shared.settings.stall_timeout:g} s", region=self.region,
                                     image_id=image_id)  # fmt: skip
            fan.detach(self.region, str(error))
        return error

    async def _body(
        self, first: bytes | None, rx: MemoryObjectReceiveStream[bytes], size: int
    ) -> AsyncIterator[bytes | memoryview]:
        """The upload's body (``_chunks``); what it raises travels through aiohttp as a ``BodyError``, so the
        upload raises it as itself: the pass's own abort, a stream cut short, or a bug."""
        try:
            async for piece in self._chunks(first, rx, size):
                yield piece
        except Exception as exc:
            raise BodyError(exc) from exc

    async def _chunks(
        self, first: bytes | None, rx: MemoryObjectReceiveStream[bytes], size: int
    ) -> AsyncIterator[bytes | memoryview]:
        """The pass's chunks as they come, sliced for the socket, throttled by the region's bandwidth, timed for
        the watchdog."""
        chunk, limiter, image_id = first, self.bandwidth, self.shared.image.id
        while chunk is not None:
            if limiter is not None:
                await limiter.take(len(chunk))  # our own throttle: not a stall either
            self.owed, self.progress_at = True, anyio.current_time()
            # hand the chunk to aiohttp in slices (views, no copies): the socket's write buffer then
            # never holds a copy of a whole chunk per target
            with memoryview(chunk) as view:
                for i in range(0, len(view), WRITE_SLICE):
                    yield view[i : i + WRITE_SLICE]
                    self.progress_at = anyio.current_time()
            failpoint("uploading")
            self.sent += len(chunk)
            self.result.bytes = max(self.result.bytes, self.sent)
            self.shared.reporter.emit(BytesWritten(image_id, self.region, len(chunk)))
            self.owed = False  # waiting for the source: not this target's stall
            chunk = await next_chunk(rx)
        if self.abort is not None:
            raise self.abort  # aborting the request leaves the target image queued, never active
        if self.sent != size:
            raise TargetWriteError(f"upload stream ended at {self.sent} of {size} bytes", region=self.region,
                                   image_id=image_id)  # fmt: skip

    async def _watch_progress(self) -> None:
        """Cancel an upload that owes the target data but moves no byte for the stall timeout: a target
        that stops reading leaves the client blocked in a socket write, where no read timeout applies.
        Time spent waiting for the source (nothing owed) never counts."""
        limit = self.shared.settings.stall_timeout
        while True:
            await anyio.sleep(min(1.0, limit / 4))
            now = anyio.current_time()
            if not self.owed:
                self.progress_at = now
            elif now - self.progress_at > limit:
                self.scope.cancel()
                return

    async def verify(self, run: Pass) -> TransferError | None:
        """GET the target and compare with the digests computed in flight; None when verified."""
        client, target_id, image_id = self.spec.client, self.result.target_id, self.shared.image.id
        if target_id is None:
            return TargetWriteError("no target image to verify", region=self.region, image_id=image_id)
        self.result.phases["verify"] = time.time()
        sent = run.content
        try:
            reported = await self._settle(await client.get_image(target_id))
            verdict = judge_target(reported.raw, sent)
            if verdict.verdict is Verdict.INCOMPLETE and reported.status == "active":
                # the target hashes with an algorithm we did not compute: read the copy back and hash it. What it
                # stores must be what was sent; then its own digests are judged with the read-back ones too
                read = await read_digests(client, reported, piece=self.shared.settings.chunk_size)
                verdict = sent.held_by(read)
                if verdict.ok:
                    verdict = judge_target(reported.raw, Content(run.size, {**read.digests, **sent.digests}))
        except (ApiError, OSError) as exc:  # this target's trouble stays this target's
            return TargetWriteError(f"cannot read back the target image: {exc}", region=self.region,
                                    image_id=image_id)  # fmt: skip
        if verdict.ok:
            failpoint("verified")
            self.result.image = reported  # the metadata step starts from it: no second read
            self.finish("done", None, Evidence(run.size, run.digests, _reported(reported), run.unverified_source))
            return None
        if reported.status == "active":
            await self.delete(reported)  # wrong content: never leave it behind
        return VerificationError(f"target verification failed: {verdict.reason}", region=self.region,
                                 image_id=image_id)  # fmt: skip

    # === outcome

    def finish(self, state: str, error: str | None, evidence: Evidence | None = None, *,
               blame: str | None = None) -> None:  # fmt: skip
        """Record this copy's outcome (done, failed or cancelled) and report it."""
        result = self.result
        result.state, result.error = state, error
        if blame is not None:
            result.blame = blame
        if evidence is not None:
            result.evidence = evidence
        self.shared.reporter.emit(TargetFinished(
            self.shared.image.id, self.region, state, result.target_id, result.attempts, result.bytes, error,
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
