"""The transfer engine: copy one image to N targets from a single source read, verified on the fly.

For each image: make sure every target has an image to receive the bytes (create it, or reuse a queued
one), then read the source once and fan the chunks out to every target's upload. The digests of the
stream are computed as it flows; the last chunk is held back until the whole stream has been judged, so
a corrupt or incomplete source never completes an upload. Each target is then checked against what it
reports (status, size, checksum, os_hash_value). A target that fails is detached and retried alone (from
the spool if there is one, else from the source), a target whose copy ended active with the wrong
content is deleted and redone, and nothing unverified is ever reported done.

Blame goes to the right side. Only time during which an upload is owed data (a chunk waits for it, or it
is in the middle of writing one) counts towards its stall timeout: waiting for a slow or throttled source
is not the target's fault. An upload whose answer was lost after every byte was sent is checked at the
target before it is called failed. Nothing that happens to one target (its verification read, the spool)
cancels another target or the run; only fatal errors (a dead credential, the journal) stop everything.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream

from pipeline.cloud.client import ImageClient
from pipeline.cloud.retry import RetryBudget, RetryPolicy, spending
from pipeline.errors import (
    ApiError,
    ImgmigError,
    NotFoundError,
    SourceReadError,
    TargetWriteError,
    TransferError,
    VerificationError,
)
from pipeline.models import Image
from pipeline.report.events import (
    BytesWritten,
    ImageFinished,
    ImageStarted,
    NullReporter,
    Reporter,
    SpoolFailed,
    TargetFailed,
    TargetFinished,
    TargetRetrying,
)
from pipeline.state.failpoints import failpoint
from pipeline.transfer.copies import create_copy, is_own_copy
from pipeline.transfer.fanout import Fanout
from pipeline.transfer.hashing import Evidence, Expected, MultiHasher, Verdict, judge_stream, judge_target
from pipeline.transfer.source import Bandwidth, Spool, read_digests, source_pieces, spool_pieces

__all__ = ["Engine", "EngineHooks", "EngineSettings", "TargetResult", "TargetSpec"]

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
class _Target:
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
class _Pass:
    """One read of the source feeding a group of targets."""

    size: int
    digests: dict[str, str] = field(default_factory=dict)
    unverified_source: bool = False


class Engine:
    """Copies images; one instance per run, shared by every image in flight."""

    def __init__(
        self,
        settings: EngineSettings,
        *,
        reporter: Reporter | None = None,
        source_bandwidth: Bandwidth | None = None,
        region_bandwidth: Mapping[str, Bandwidth] | None = None,
    ) -> None:
        self.settings = settings
        self.reporter = reporter or NullReporter()
        self.source_bandwidth = source_bandwidth
        self.region_bandwidth = dict(region_bandwidth or {})

    async def copy_image(
        self,
        source: ImageClient,
        image: Image,
        targets: Sequence[TargetSpec],
        *,
        hooks: EngineHooks | None = None,
        results: dict[str, TargetResult] | None = None,
    ) -> dict[str, TargetResult]:
        """Copy ``image`` to every target; returns one TargetResult per region (also filled on cancel)."""
        results = results if results is not None else {}
        copy = _ImageCopy(self, source, image, hooks or EngineHooks())
        for spec in targets:
            known = spec.existing.id if spec.existing else spec.pending_id
            results[spec.region] = TargetResult(spec.region, target_id=known,
                                                budget=RetryBudget(self.settings.retries))  # fmt: skip
            copy.targets.append(_Target(spec, results[spec.region]))
        await copy.run()
        return results


class _ImageCopy:
    """The copy of one image: its passes, uploads and retries, all inside one task group."""

    def __init__(self, engine: Engine, source: ImageClient, image: Image, hooks: EngineHooks) -> None:
        self.engine = engine
        self.settings = engine.settings
        self.reporter = engine.reporter
        self.source = source
        self.image = image
        self.size = image.size or 0
        self.hooks = hooks
        self.targets: list[_Target] = []
        self.spool: Spool | None = None
        #: The digests of the last stream that verified: what a copy of this image must hold.
        self.digests: dict[str, str] = {}
        self._tg: TaskGroup | None = None

    @property
    def tg(self) -> TaskGroup:
        assert self._tg is not None
        return self._tg

    async def run(self) -> None:
        image = self.image
        self.reporter.emit(ImageStarted(image.id, image.name, self.size, tuple(t.region for t in self.targets)))
        self.spool = Spool.open(self.settings.spool_dir, image.id, self.size)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                ready = await self._prepare_all()
                if ready:
                    tg.start_soon(self._pass, ready)
        except BaseException:
            for t in self.targets:  # synchronous: reported even while being cancelled
                if t.result.state == "pending":
                    self._finish(t, "cancelled", "cancelled mid-transfer")
            raise
        finally:
            if self.spool is not None:
                self.spool.remove()
        self.reporter.emit(ImageFinished(image.id, all(t.result.done for t in self.targets)))

    # === target preparation

    async def _prepare_all(self) -> list[_Target]:
        ready: set[str] = set()

        async def prepare(t: _Target) -> None:
            with spending(t.budget):
                try:
                    if await self._prepare(t):
                        ready.add(t.region)
                except ApiError as exc:  # e.g. a 5xx storm or a garbled answer: retried like any target failure
                    t.result.attempts += 1
                    t.result.error, t.result.blame = f"cannot prepare target image: {exc}", "target"
                    self.tg.start_soon(self._retry, [t])

        async with anyio.create_task_group() as tg:
            for t in self.targets:
                tg.start_soon(prepare, t)
        return [t for t in self.targets if t.region in ready]

    async def _prepare(self, t: _Target) -> bool:
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
                self._finish(t, "done", None, evidence)
                return False
            await self._delete(t, existing)

        async def journal(image_id: str) -> None:
            await self.hooks.creating(t.region, image_id)

        created = await create_copy(client, t.spec.create_fields, journal=journal)
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

    async def _delete(self, t: _Target, image: Image) -> None:
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

    # === passes

    async def _pass(self, targets: list[_Target]) -> None:
        """One read (source or spool) feeding ``targets``; failures are scheduled for retry."""
        run = _Pass(self.size)
        by_region = {t.region: t for t in targets}

        def stalled(name: str) -> None:
            # a target that takes no data may be stuck inside a socket write: cancel its upload
            target = by_region.get(name)
            if target is not None and target.scope is not None:
                target.scope.cancel()

        fan = Fanout(self.settings.buffer_depth, stall_timeout=self.settings.stall_timeout, on_stall=stalled)
        algorithms = {self.image.os_hash_algo or "sha512"}
        for t in targets:
            algorithms |= set(t.spec.algorithms)
            t.abort, t.sent = None, 0
            t.result.attempts += 1
        hasher = MultiHasher(algorithms)
        spool = self.spool
        if spool is not None and spool.written and not spool.done.is_set():
            await spool.done.wait()  # a retry reads the spool being written rather than the source again
        from_spool = spool is not None and spool.complete
        write_spool = spool is not None and not from_spool and spool.failed is None and not spool.written

        def may_resume() -> bool:
            # a reopened source stream is a retry for every target it feeds: each must have budget left
            fed = [t for t in targets if t.region in fan.attached]
            if not fed or any(t.budget.remaining <= 0 for t in fed):
                return False
            return all(t.budget.take() for t in fed)

        source_failed: list[_Target] = []
        verified = False
        async with anyio.create_task_group() as uploads:
            for t in targets:
                uploads.start_soon(self._upload, t, fan, fan.add(t.region), run, source_failed)
            if write_spool and spool is not None:
                spool.written = True
                uploads.start_soon(spool.fill, fan.add("#spool"))
            try:
                if from_spool and spool is not None:
                    pieces = spool_pieces(spool)
                else:
                    pieces = source_pieces(
                        self.source, self.image, may_resume=may_resume, backoff=self.settings.backoff,
                        reporter=self.reporter, bandwidth=self.engine.source_bandwidth,
                        idle_timeout=self.settings.source_stall_timeout,
                    )  # fmt: skip
                async with contextlib.aclosing(pieces):
                    verdict = await self._produce(pieces, fan, hasher, run)
                if not verdict.ok:
                    raise VerificationError(f"{'spool' if from_spool else 'source'} stream {verdict.verdict.value}: "
                                            f"{verdict.reason}", region=self.source.region,
                                            image_id=self.image.id)  # fmt: skip
                verified = True
            except (SourceReadError, VerificationError, OSError) as exc:
                if isinstance(exc, OSError):  # the spool could not be read back: never use it again
                    exc = SourceReadError(f"spool read failed: {exc}", image_id=self.image.id)
                for t in targets:
                    if t.region in fan.attached:
                        t.abort = exc
                if spool is not None and from_spool:  # a spool that cannot be read back is never reused
                    spool.complete, spool.failed = False, str(exc)
            except BaseException as exc:  # fatal or cancelled: the uploads stop, and nothing is retried
                for t in targets:
                    t.abort = exc
                raise
            finally:
                fan.close()
        if write_spool and spool is not None:
            spool.settle(verified=verified)  # complete only with every byte of a verified stream
        if spool is not None and spool.failed and not spool.reported and (write_spool or from_spool):
            spool.reported = True
            self.reporter.emit(SpoolFailed(self.image.id, spool.failed))
        retry_group = [t for t in source_failed if t.result.state == "pending"]
        if retry_group:
            self.tg.start_soon(self._retry, retry_group)

    async def _produce(self, pieces: AsyncIterator[bytes], fan: Fanout, hasher: MultiHasher, run: _Pass) -> Any:
        """Chunk, hash and broadcast; hold the last chunk back until the whole stream is judged."""
        chunk_size = self.settings.chunk_size
        parts: list[bytes] = []
        have = 0
        held: bytes | None = None

        async def emit(chunk: bytes) -> None:
            nonlocal held
            await self._hash(hasher, chunk)
            if held is not None:
                await fan.send(held)
            held = chunk

        async for piece in pieces:
            while have + len(piece) >= chunk_size:
                take = chunk_size - have
                parts.append(piece[:take])
                piece = piece[take:]
                chunk, parts, have = b"".join(parts), [], 0  # one copy per chunk, no growing buffer
                await emit(chunk)
            if piece:
                parts.append(piece)
                have += len(piece)
        if parts:
            await emit(b"".join(parts))
        image = self.image
        expected = Expected(image.size, image.checksum, image.os_hash_algo, image.os_hash_value)
        verdict = judge_stream(expected, hasher.bytes, hasher.hexdigests())
        if verdict.ok:
            run.digests = hasher.hexdigests()
            run.unverified_source = verdict.unverified_source
            self.digests = dict(run.digests)
            if held is not None:
                await fan.send(held)
        return verdict

    async def _hash(self, hasher: MultiHasher, chunk: bytes) -> None:
        if self.settings.hash_in_thread and len(chunk) >= 256 * 1024:
            await anyio.to_thread.run_sync(hasher.update, chunk)
        else:
            hasher.update(chunk)

    # === one target's upload

    async def _upload(
        self, t: _Target, fan: Fanout, rx: MemoryObjectReceiveStream[bytes], run: _Pass,
        source_failed: list[_Target],
    ) -> None:  # fmt: skip
        with spending(t.budget):
            error = await self._stream(t, fan, rx, run)
            if t.abort is not None:
                if isinstance(t.abort, TransferError):  # else the pass is being torn down: not a failure
                    t.result.error, t.result.blame = str(t.abort), "source"
                    self.reporter.emit(TargetFailed(self.image.id, t.region, t.result.attempts, str(t.abort),
                                                    "source"))  # fmt: skip
                    if t.abort.retryable:
                        source_failed.append(t)
                    else:  # e.g. the source refuses the download: another pass cannot help
                        self._finish(t, "failed", str(t.abort), blame="source")
                return
            if error is None or (t.sent == run.size and run.digests):
                # finished, or every byte went out and only the answer is missing (lost, or the connection
                # broke after the last byte): the target itself says whether the upload took effect
                failpoint("uploaded")
                problem = await self._verify(t, run)
                if problem is None:
                    return
                error = error or problem
            t.result.error, t.result.blame = str(error), "target"
            self.reporter.emit(TargetFailed(self.image.id, t.region, t.result.attempts, str(error), "target"))
            self.tg.start_soon(self._retry, [t])

    async def _stream(
        self, t: _Target, fan: Fanout, rx: MemoryObjectReceiveStream[bytes], run: _Pass
    ) -> BaseException | None:
        """Stream this pass's chunks into the target's queued image; the error, or None."""
        limiter = self.engine.region_bandwidth.get(t.region)
        image_id, size = self.image.id, run.size
        # The request starts only once its first chunk is here: aiohttp sends the headers (and so the
        # token, which the server checks then) with the first body bytes, and a target connection held
        # open while a slow source gets going could hit the server's own idle timeout.
        first = await _next_chunk(rx)
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
                chunk = await _next_chunk(rx)
            if t.abort is not None:
                raise t.abort  # aborting the request leaves the target image queued, never active
            if t.sent != size:
                raise TargetWriteError(f"upload stream ended at {t.sent} of {size} bytes", region=t.region,
                                       image_id=image_id)  # fmt: skip

        assert t.result.target_id is not None
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

    async def _watch_progress(self, t: _Target, scope: anyio.CancelScope) -> None:
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

    async def _verify(self, t: _Target, run: _Pass) -> BaseException | None:
        """GET the target and compare with the digests computed in flight; None when verified."""
        client, target_id = t.spec.client, t.result.target_id
        assert target_id is not None
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
            self._finish(t, "done", None, Evidence(run.size, run.digests, _reported(reported), run.unverified_source))
            return None
        if reported.status == "active":
            await self._delete(t, reported)  # wrong content: never leave it behind
        return VerificationError(f"target verification failed: {verdict.reason}", region=t.region,
                                 image_id=self.image.id)  # fmt: skip

    # === retries

    async def _retry(self, targets: list[_Target]) -> None:
        """Retry ``targets`` in a new pass: together after a source failure, alone after a target one.
        Each new pass spends one retry of the target's budget."""
        alive = []
        for t in targets:
            if t.budget.take():
                alive.append(t)
            else:
                self._finish(t, "failed", t.result.error, blame=t.result.blame)
        if not alive:
            return
        attempt = max(t.result.attempts for t in alive)
        delay = self.settings.backoff.delay(attempt, None)
        for t in alive:
            self.reporter.emit(TargetRetrying(self.image.id, t.region, attempt + 1, t.result.error or "", delay))
        await self.settings.backoff.sleep(delay)
        ready: list[_Target] = []
        for t in alive:
            with spending(t.budget):
                try:
                    if await self._prepare(t):
                        ready.append(t)
                except ApiError as exc:
                    t.result.attempts += 1
                    t.result.error, t.result.blame = f"cannot prepare target image: {exc}", "target"
                    self.tg.start_soon(self._retry, [t])
        if ready:
            await self._pass(ready)

    # === outcomes

    def _finish(
        self,
        t: _Target,
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


async def _next_chunk(rx: MemoryObjectReceiveStream[bytes]) -> bytes | None:
    """The next chunk of a target's stream, or None at its end."""
    try:
        return await rx.receive()
    except (anyio.EndOfStream, anyio.ClosedResourceError):
        return None


def _reported(image: Image) -> dict[str, Any]:
    return {k: image.raw.get(k) for k in ("id", "status", "size", "checksum", "os_hash_algo", "os_hash_value")}
