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
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream

from pipeline.cloud.client import ImageClient
from pipeline.cloud.retry import RetryBudget, spending
from pipeline.errors import (
    ApiError,
    BadRequestError,
    ForbiddenError,
    FormatRefusedError,
    PayloadTooLargeError,
    SourceReadError,
    SourceVanishedError,
    TLSVerificationError,
    TransferError,
    UnsupportedMediaTypeError,
    VerificationError,
    quota_resource,
)
from pipeline.models import Content, Image
from pipeline.report.events import (
    ImageFinished,
    ImageStarted,
    NullReporter,
    Reporter,
    SpoolFailed,
    TargetFailed,
    TargetQuotaFull,
    TargetRetrying,
)
from pipeline.state.failpoints import failpoint
from pipeline.transfer.fanout import Fanout
from pipeline.transfer.hashing import MultiHasher, judge_stream
from pipeline.transfer.inspection import HOLD, StreamInspector
from pipeline.transfer.source import PIECE, Bandwidth, Head, Spool, prepended, source_pieces, spool_pieces
from pipeline.transfer.targets import (
    EngineHooks,
    EngineSettings,
    ImageContext,
    Pass,
    TargetCopy,
    TargetResult,
    TargetSpec,
)

__all__ = ["Engine", "EngineHooks", "EngineSettings", "TargetResult", "TargetSpec", "stream_unit"]

#: A target's answers that another pass would only get again: the copy ends at the first.
_FINAL_ANSWERS = (
    BadRequestError,
    ForbiddenError,
    UnsupportedMediaTypeError,
    PayloadTooLargeError,
    TLSVerificationError,
)

#: The smallest unit a small image is cut into (see ``stream_unit``).
MIN_UNIT = 256 * 1024
#: Chunks at least this big (or a whole ``chunk_size``, if that is smaller) are hashed in a worker thread,
#: smaller ones (a small image's quarters) on the event loop. md5 + sha512 of 1 MiB take about 2.5 ms of
#: CPU; a hop to a worker thread and back costs CPU of its own (measured with bench (e): at 0 ms, 200 images
#: of 1-4 MiB in quarters cost 0.3 CPU-seconds more through threads than on the loop), which only a chunk
#: that would hold the loop for milliseconds is worth.
HASH_IN_THREAD_FROM = 1 << 20


def stream_unit(chunk_size: int, size: int) -> int:
    """The unit an image travels to its targets in: ``chunk_size``, or for an image smaller than four chunks a
    quarter of it (at least ``MIN_UNIT``). The held-back last unit is what keeps an unjudged stream from
    completing an upload; with a whole small image as one chunk, its upload could start only after its
    download ended, so a many-small-images job would download and upload one after the other."""
    return min(chunk_size, max(MIN_UNIT, size // 4))


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
        #: Targets whose quota is full, and why: nothing more is sent to them in this run.
        self.full: dict[str, str] = {}

    def quota_full(self, region: str, error: BaseException) -> None:
        """Mark ``region`` full for the rest of the run (reported once, with the server's words)."""
        if region in self.full:
            return
        resource = quota_resource(error) or "quota"
        message = getattr(error, "message", None) or str(error)
        self.full[region] = f"target {region} is over its {resource} quota: nothing more is sent to it in this run"
        self.reporter.emit(TargetQuotaFull(region, resource, message, self.full[region]))

    async def copy_image(
        self,
        source: ImageClient,
        image: Image,
        specs: Sequence[TargetSpec],
        *,
        hooks: EngineHooks | None = None,
        results: dict[str, TargetResult] | None = None,
    ) -> dict[str, TargetResult]:
        """Copy ``image`` to every target; returns one TargetResult per region (also filled on cancel)."""
        results = results if results is not None else {}
        shared = ImageContext(self.settings, self.reporter, image, hooks or EngineHooks())
        targets = []
        for spec in specs:
            known = spec.existing.id if spec.existing else spec.pending_id
            results[spec.region] = TargetResult(spec.region, target_id=known,
                                                budget=RetryBudget(self.settings.retries))  # fmt: skip
            targets.append(TargetCopy(spec, results[spec.region], shared, self.region_bandwidth.get(spec.region)))
        self.reporter.emit(ImageStarted(image.id, image.name, shared.size, tuple(t.region for t in targets)))
        with anyio.CancelScope(shield=True):  # a spool file once created is always removed below
            spool = await Spool.open_behind(self.settings.spool_dir, image.id, shared.size)
        copy: _ImageCopy | None = None
        try:
            async with anyio.create_task_group() as tg:
                copy = _ImageCopy(self, source, shared, targets, spool, tg)
                ready = await copy.prepare_first()
                if ready:
                    tg.start_soon(copy.take_pass, ready)
        except BaseException:
            for t in targets:  # synchronous: reported even while being cancelled
                if t.result.state == "pending":
                    t.finish("cancelled", "cancelled mid-transfer")
            raise
        finally:
            if copy is not None:
                await copy.drop_head()
            if spool is not None:
                with anyio.CancelScope(shield=True):  # its close and unlink off the loop, even when cancelled
                    await anyio.to_thread.run_sync(spool.remove)
        self.reporter.emit(ImageFinished(image.id, all(t.result.done for t in targets)))
        return results


class _ImageCopy:
    """The copy of one image to its targets: its passes (one source read each, fanned out) and its retries, all
    inside the task group of ``Engine.copy_image``. Each target's own work is its ``TargetCopy``'s."""

    def __init__(self, engine: Engine, source: ImageClient, shared: ImageContext, targets: list[TargetCopy],
                 spool: Spool | None, tg: TaskGroup) -> None:  # fmt: skip
        self.engine = engine
        self.settings = engine.settings
        self.reporter = engine.reporter
        self.source = source
        self.shared = shared
        self.image = shared.image
        self.size = shared.size
        self.targets = targets
        #: The spool of this image's verified stream, when ``spool_dir`` is set (retries read it, not the source).
        self.spool = spool
        self.tg = tg
        #: Set once the source turned out to be gone: no target sends anything more for it.
        self.vanished: SourceVanishedError | None = None
        #: The first pass's source stream, opened while the targets are prepared (``prepare_first``).
        self.head: Head | None = None
        #: Whether the source stream may be reopened (spending the retry budgets of the targets it feeds): until
        #: a pass takes the head, every target still pending; then that pass's own rule.
        self._resume: Callable[[], bool] = self._pending_may_resume

    # === target preparation

    async def prepare_first(self) -> list[TargetCopy]:
        """``prepare_all``, with the source's download opened at the same time (``fetch_head``): its first
        piece waits in ``head`` for the first pass, so a copy costs one round trip less (creating the target
        images and opening the source no longer take turns). Not when no target can take data anyway."""
        if self.vanished is not None or all(t.region in self.engine.full for t in self.targets):
            return await self.prepare_all()
        ready: list[TargetCopy] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.fetch_head)
            ready = await self.prepare_all()
            if not ready:  # nothing to feed: stop reading (an error of the head's is then nobody's)
                tg.cancel_scope.cancel()
        if not ready:
            await self.drop_head()
        return ready

    async def fetch_head(self) -> None:
        """Open the source's download and read its first piece into ``head``; an error is kept there for the
        first pass to meet, exactly where it would have met it opening the source itself."""
        pieces = self._source_pieces(lambda: self._resume())
        head = Head(pieces)
        try:
            head.first = await pieces.__anext__()
        except StopAsyncIteration:
            head.pieces = None  # no bytes at all: the pass sees an empty stream (and judges it)
        except Exception as exc:  # handed to the pass, which sorts source errors from fatal ones
            head.pieces, head.error = None, exc
        self.head = head

    async def drop_head(self) -> None:
        """Close a head no pass took (no target was ready, or the copy was cancelled first)."""
        head, self.head = self.head, None
        if head is not None and head.pieces is not None:
            with anyio.CancelScope(shield=True):
                await head.pieces.aclose()

    def _pending_may_resume(self) -> bool:
        fed = [t for t in self.targets if t.result.state == "pending"]
        if not fed or any(t.budget.remaining <= 0 for t in fed):
            return False
        return all(t.budget.take() for t in fed)

    def _source_pieces(self, may_resume: Callable[[], bool]) -> AsyncGenerator[bytes, None]:
        return source_pieces(
            self.source, self.image, may_resume=may_resume, backoff=self.settings.backoff, reporter=self.reporter,
            bandwidth=self.engine.source_bandwidth, idle_timeout=self.settings.source_stall_timeout,
            piece=min(stream_unit(self.settings.chunk_size, self.size), PIECE),
        )  # fmt: skip

    async def prepare_all(self) -> list[TargetCopy]:
        """Give every target its receiving image, at once; the ones ready for the first pass."""
        ready: set[str] = set()

        async def prepare(t: TargetCopy) -> None:
            if await self._prepared(t):
                ready.add(t.region)

        async with anyio.create_task_group() as tg:
            for t in self.targets:
                tg.start_soon(prepare, t)
        return [t for t in self.targets if t.region in ready]

    async def _prepared(self, t: TargetCopy) -> bool:
        """``t.prepare()`` on the target's budget; a failure to prepare is retried like any target failure, unless
        retrying cannot help (``_gives_up``). A target whose quota is full is not asked at all."""
        full = self.engine.full.get(t.region)
        if full is not None:
            t.finish("failed", full, blame="target")
            return False
        if self.vanished is not None:  # a target retried after the source vanished: nothing more to send
            await t.discard()
            t.finish("vanished", str(self.vanished), blame="source")
            return False
        with spending(t.budget):
            try:
                return await t.prepare()
            except ApiError as exc:  # e.g. a 5xx storm or a garbled answer
                t.result.attempts += 1
                t.result.error, t.result.blame = f"cannot prepare target image: {exc}", "target"
                if self._gives_up(t, exc):
                    t.finish("failed", self.engine.full.get(t.region, t.result.error), blame="target")
                else:
                    self.tg.start_soon(self._retry, [t])
                return False

    def _gives_up(self, t: TargetCopy, error: BaseException) -> bool:
        """Whether a target failure ends this copy now instead of another pass: a full quota (the whole target,
        for the rest of the run: ``Engine.quota_full``), or an answer that a new pass would only get again (an
        invalid request, a refusal, a format the target will not take, a certificate that does not verify).
        Anything else gets another pass: retryable errors, state races (409, 404), garbled answers. A full
        ``image_count_uploading`` frees up as other uploads end, so that one is retried too."""
        resource = quota_resource(error)
        if resource == "image_count_uploading":
            return False
        if resource is not None:
            self.engine.quota_full(t.region, error)
            return True
        return isinstance(error, _FINAL_ANSWERS)

    # === passes

    async def take_pass(self, targets: list[TargetCopy]) -> None:
        """One read (source or spool) feeding ``targets``; failures are scheduled for retry."""
        run = Pass(self.size)
        by_region = {t.region: t for t in targets}

        def stalled(name: str) -> None:
            # a target that takes no data may be stuck inside a socket write: cancel its upload
            target = by_region.get(name)
            if target is not None:
                target.scope.cancel()

        fan = Fanout(self.settings.buffer_depth, stall_timeout=self.settings.stall_timeout, on_stall=stalled)
        algorithms = {self.image.os_hash_algo or "sha512"}
        for t in targets:
            algorithms |= set(t.spec.algorithms)
            t.begin_pass()
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

        source_failed: list[TargetCopy] = []
        verified = False
        head, self.head = (None, None) if from_spool else (self.head, None)
        async with anyio.create_task_group() as uploads:
            for t in targets:
                uploads.start_soon(self._upload, t, fan, fan.add(t.region), run, source_failed)
            if write_spool and spool is not None:
                spool.written = True
                uploads.start_soon(spool.fill, fan.add("#spool"))
            try:
                if from_spool and spool is not None:
                    pieces = spool_pieces(spool)
                elif head is not None:  # the stream opened while the targets were prepared
                    self._resume = may_resume
                    if head.error is not None:
                        raise head.error
                    pieces = prepended(head.first, head.pieces)
                else:
                    pieces = self._source_pieces(may_resume)
                async with contextlib.aclosing(pieces):
                    verdict = await self._produce(pieces, fan, hasher, run)
                if not verdict.ok:
                    raise VerificationError(f"{'spool' if from_spool else 'source'} stream {verdict.verdict.value}: "
                                            f"{verdict.reason}", region=self.source.region,
                                            image_id=self.image.id)  # fmt: skip
                verified = True
            except (SourceReadError, VerificationError, FormatRefusedError, OSError) as exc:
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

    async def _produce(self, pieces: AsyncIterator[bytes], fan: Fanout, hasher: MultiHasher, run: Pass) -> Any:
        """Chunk, hash and broadcast; hold the last chunk back until the whole stream is judged, and every chunk
        until the inspector has judged the head (``inspection``; up to ``HOLD``, then the last waits for it)."""
        chunk_size = stream_unit(self.settings.chunk_size, self.size)
        parts: list[bytes] = []
        have = 0
        held: list[bytes] = []  # the chunks not sent yet: the last one, or the head while it is being judged
        inspector = StreamInspector() if self.settings.inspect and self.shared.verdict is None else None

        async def emit(chunk: bytes) -> None:
            await self._hash(hasher, chunk)
            if inspector is not None and not inspector.decided:
                inspector.feed(chunk)
                if inspector.decided:
                    self._judged(inspector)
            held.append(chunk)
            if inspector is None or inspector.decided or sum(len(c) for c in held) > HOLD:
                while len(held) > 1:
                    await fan.send(held.pop(0))

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
        if inspector is not None and not inspector.decided:
            inspector.finish()
            self._judged(inspector)
        verdict = judge_stream(self.image.content, Content(hasher.bytes, hasher.hexdigests()))
        if verdict.ok:
            run.digests = hasher.hexdigests()
            run.unverified_source = verdict.unverified_source
            self.shared.digests = dict(run.digests)
            for chunk in held:
                await fan.send(chunk)
        return verdict

    def _judged(self, inspector: StreamInspector) -> None:
        """Keep the inspector's verdict (later passes, the journal); refuse an unsafe or mislabelled image."""
        verdict = self.shared.verdict = inspector.verdict(self.image.raw.get("disk_format"),
                                                          self.image.raw.get("container_format"))  # fmt: skip
        self.shared.hooks.inspected(verdict)
        if verdict.refused(self.settings.allow_format_mismatch):
            raise FormatRefusedError(f"refused: {verdict.reason}", region=self.source.region, image_id=self.image.id)
        if verdict.mismatch:
            for t in self.targets:
                t.result.warnings.append(f"{verdict.reason}: copied as labelled ([copy] allow_format_mismatch)")

    async def _hash(self, hasher: MultiHasher, chunk: bytes) -> None:
        if self.settings.hash_in_thread and len(chunk) >= min(HASH_IN_THREAD_FROM, self.settings.chunk_size):
            await anyio.to_thread.run_sync(hasher.update, chunk)
        else:
            hasher.update(chunk)

    # === one target's upload

    async def _upload(
        self, t: TargetCopy, fan: Fanout, rx: MemoryObjectReceiveStream[bytes], run: Pass,
        source_failed: list[TargetCopy],
    ) -> None:  # fmt: skip
        with spending(t.budget):
            error: TransferError | ApiError | None = await t.stream(fan, rx, run)
            if t.abort is not None:
                if isinstance(t.abort, TransferError):  # else the pass is being torn down: not a failure
                    t.result.error, t.result.blame = str(t.abort), "source"
                    self.reporter.emit(TargetFailed(self.image.id, t.region, t.result.attempts, str(t.abort),
                                                    "source"))  # fmt: skip
                    if t.abort.retryable:
                        source_failed.append(t)
                    elif isinstance(t.abort, SourceVanishedError):  # nothing of it may stay behind
                        self.vanished = t.abort
                        await t.discard()
                        t.finish("vanished", str(t.abort), blame="source")
                    elif isinstance(t.abort, FormatRefusedError):  # unsafe or mislabelled: no copy anywhere
                        await t.discard()
                        t.finish("refused", str(t.abort), blame="source")
                    else:  # e.g. the source refuses the download: another pass cannot help
                        t.finish("failed", str(t.abort), blame="source")
                return
            if error is None or (t.sent == run.size and run.digests):
                # finished, or every byte went out and only the answer is missing (lost, or the connection
                # broke after the last byte): the target itself says whether the upload took effect
                failpoint("uploaded")
                problem = await t.verify(run)
                if problem is None:
                    return
                error = error or problem
            t.result.error, t.result.blame = str(error), "target"
            self.reporter.emit(TargetFailed(self.image.id, t.region, t.result.attempts, str(error), "target"))
            if not self._gives_up(t, error):
                self.tg.start_soon(self._retry, [t])
                return
            # a queued copy that will not be uploaded again holds nothing: it goes (after a 415, Glance 33 would
            # answer 500 to every later upload into it anyway)
            await t.discard()
            t.finish("failed", self.engine.full.get(t.region, t.result.error), blame="target")

    # === retries

    async def _retry(self, targets: list[TargetCopy]) -> None:
        """Retry ``targets`` in a new pass: together after a source failure, alone after a target one.
        Each new pass spends one retry of the target's budget."""
        alive = []
        for t in targets:
            if t.budget.take():
                alive.append(t)
            else:
                t.finish("failed", t.result.error, blame=t.result.blame)
        if not alive:
            return
        attempt = max(t.result.attempts for t in alive)
        delay = self.settings.backoff.delay(attempt, None)
        for t in alive:
            self.reporter.emit(TargetRetrying(self.image.id, t.region, attempt + 1, t.result.error or "", delay))
        await self.settings.backoff.sleep(delay)
        ready = [t for t in alive if await self._prepared(t)]
        if ready:
            await self.take_pass(ready)
