"""Where image bytes come from: the source region (resumed with Range when the stream breaks) or a spool.

``source_pieces`` reads a source image and survives broken connections: it reopens the download at the
byte it had reached (``Range: bytes=N-``) and checks the 206 ``Content-Range``. If the server ignores
Range (200), it re-reads from byte 0 and discards what it already had. Consumers never see the hiccup;
the end-to-end digest check at EOF proves that the pieces form the source image. Errors here are
``SourceReadError``: they blame the source, never a target.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import aiofiles
import anyio
from aiolimiter import AsyncLimiter
from anyio.streams.memory import MemoryObjectReceiveStream

from pipeline.cloud.client import ImageClient
from pipeline.cloud.retry import RetryPolicy
from pipeline.errors import (
    ApiError,
    ForbiddenError,
    NotFoundError,
    SourceForbiddenError,
    SourceReadError,
    SourceVanishedError,
    TransportError,
)
from pipeline.models import Content, Image
from pipeline.report.events import BytesRead, Reporter, SourceResumed
from pipeline.transfer.hashing import MultiHasher
from pipeline.transfer.inspection import StreamInspector

__all__ = [
    "PIECE",
    "Bandwidth",
    "Head",
    "Spool",
    "prepended",
    "read_digests",
    "source_gone",
    "source_pieces",
    "spool_pieces",
]

#: The most a source read asks aiohttp for at once; aiohttp lets its read buffer grow to twice that.
PIECE = 1 << 20
#: What to do about a refused download (NHN's current guide, Download Image).
DOWNLOAD_HINT = (
    "NHN Cloud serves an image's data only when its nhncloud_allow_download attribute is true and you have "
    "the ADMIN or MEMBER role: PATCH the attribute to true, or set [source] enable_download = true"
)
SPOOL_RESERVE = 64 << 20


class Bandwidth:
    """A token bucket of ``rate`` bytes per second (aiolimiter); no limit when rate is None."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self._limiter = AsyncLimiter(rate, 1.0) if rate else None

    async def take(self, n: int) -> None:
        """Wait until ``n`` bytes may pass (split into pieces the bucket can hold)."""
        if self._limiter is None or self.rate is None:
            return
        while n > 0:
            part = min(n, self.rate)
            await self._limiter.acquire(part)
            n -= int(part)


async def source_pieces(
    client: ImageClient,
    image: Image,
    *,
    may_resume: Callable[[], bool],
    backoff: RetryPolicy,
    reporter: Reporter,
    bandwidth: Bandwidth | None = None,
    piece: int = PIECE,
    idle_timeout: float | None = None,
) -> AsyncGenerator[bytes, None]:
    """Every byte of ``image`` in order, reconnecting with Range after a broken stream while
    ``may_resume()`` allows it (it spends the retry budgets of the targets being fed). ``idle_timeout``
    is the source's own stall timeout: how long the download may send nothing before it is reopened."""
    size = image.size or 0
    pos = 0  # bytes already yielded
    resumes = 0
    while True:
        discard = 0
        try:
            async with client.open_download(image.id, offset=pos, idle_timeout=idle_timeout) as dl:
                if not dl.has_data:
                    raise SourceReadError("source answered 204: the image has no data", region=client.region,
                                          image_id=image.id)  # fmt: skip
                if pos and dl.status == 206:
                    first, _, total = dl.content_range or (-1, -1, None)
                    if first != pos or (total is not None and total != size):
                        raise SourceReadError(
                            f"source answered Content-Range {dl.content_range} for Range bytes={pos}-",
                            region=client.region, image_id=image.id,
                        )  # fmt: skip
                elif pos:
                    # the server ignored Range: restart the read from byte 0 and skip what we have
                    discard = pos
                    reporter.emit(SourceResumed(image.id, 0, resumes, "server ignored Range", restarted=True))
                async for chunk in dl.iter_chunks(piece):
                    if discard:
                        if len(chunk) <= discard:
                            discard -= len(chunk)
                            continue
                        chunk, discard = chunk[discard:], 0
                    if bandwidth is not None:
                        await bandwidth.take(len(chunk))
                    pos += len(chunk)
                    reporter.emit(BytesRead(image.id, len(chunk)))
                    yield chunk
            if pos < size:
                raise TransportError(f"source stream ended at byte {pos} of {size}", region=client.region,
                                     image_id=image.id)  # fmt: skip
            return
        except TransportError as exc:
            resumes += 1
            if not may_resume():
                raise SourceReadError(
                    f"source stream broke {resumes} times (retry budget spent); last: {exc}",
                    region=client.region,
                    image_id=image.id,
                ) from exc
            reporter.emit(SourceResumed(image.id, pos, resumes, str(exc)))
            await backoff.sleep(backoff.delay(resumes, exc))
        except SourceReadError:
            raise
        except ForbiddenError as exc:
            raise SourceForbiddenError(f"source download refused: {exc}. {DOWNLOAD_HINT}", region=client.region,
                                       image_id=image.id) from exc  # fmt: skip
        except NotFoundError as exc:
            await _vanished(client, image, exc)
            raise SourceReadError(f"source download failed: {exc}", region=client.region,
                                  image_id=image.id) from exc  # fmt: skip
        except ApiError as exc:
            raise SourceReadError(f"source download failed: {exc}", region=client.region,
                                  image_id=image.id) from exc  # fmt: skip


async def source_gone(client: ImageClient, image_id: str) -> bool:
    """Whether a 404 about a source image is confirmed by a GET of it (404 too: the image was deleted). The image
    being there, or the GET failing otherwise, is False: the 404 stays an ordinary failure, retried like any."""
    try:
        await client.get_image(image_id)
    except NotFoundError:
        return True
    except ApiError:
        return False
    return False


async def _vanished(client: ImageClient, image: Image, exc: NotFoundError) -> None:
    """A 404 for the source's data that a GET of the image confirms (``source_gone``): the image was deleted
    (``SourceVanishedError``: nothing to retry); otherwise the caller raises it as an ordinary read failure."""
    if await source_gone(client, image.id):
        raise SourceVanishedError(f"the source image {image.id} was deleted during the run ({exc})",
                                  region=client.region, image_id=image.id) from exc  # fmt: skip


class Spool:
    """A local copy of one image's bytes, so a target retry need not read the source again.

    It is used only when it is ``complete``: every byte of a stream that verified was written. A spool
    writer that was detached early (a slow disk), that failed (a full disk), or that fed a stream which
    did not verify leaves it incomplete, and retries then read the source instead. Any OSError of the
    spool stays inside it: the copy goes on without a spool.
    """

    def __init__(self, directory: Path, image_id: str, size: int, *, file: BinaryIO | None = None) -> None:
        self.path = directory / f"{image_id}.spool"
        self.size = size
        self.complete = False
        self.written = False
        self.failed: str | None = None
        #: Whether the failure has been reported (once per image).
        self.reported = False
        self.bytes = 0
        #: Set when the pass writing the spool has finished it (complete or not).
        self.done = anyio.Event()
        self._file = file if file is not None else _create(directory, image_id)

    @classmethod
    def open(cls, directory: Path | None, image_id: str, size: int) -> Spool | None:
        """A spool for this image when ``directory`` is set and has room for it (plus a reserve), else None."""
        if directory is None:
            return None
        file = _room_for(directory, image_id, size)
        return cls(directory, image_id, size, file=file) if file is not None else None

    @classmethod
    async def open_behind(cls, directory: Path | None, image_id: str, size: int) -> Spool | None:
        """``open``, with its disk work (the directory, the free-space check, the file) in a worker thread."""
        if directory is None:
            return None
        file = await anyio.to_thread.run_sync(_room_for, directory, image_id, size)
        return cls(directory, image_id, size, file=file) if file is not None else None

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self.bytes += len(data)

    async def fill(self, rx: MemoryObjectReceiveStream[bytes]) -> None:
        """Write every chunk of ``rx`` (in a worker thread); a write error stops writing, not the copy."""
        async with rx:
            async for chunk in rx:
                if self.failed:
                    continue
                try:
                    await anyio.to_thread.run_sync(self.write, chunk)
                except OSError as exc:  # e.g. the spool disk filled up: carry on without a spool
                    self.failed = f"spool write failed: {exc}"
        with contextlib.suppress(OSError):
            self._file.close()

    def settle(self, *, verified: bool) -> None:
        """After the pass that wrote it: complete only if every byte of a verified stream is in it."""
        with contextlib.suppress(OSError):
            self._file.close()
        self.complete = verified and self.failed is None and self.bytes == self.size
        if not self.complete and self.failed is None:
            self.failed = f"spool incomplete ({self.bytes} of {self.size} bytes)" if verified else "stream failed"
        self.done.set()

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            if not self._file.closed:
                self._file.close()
            self.path.unlink(missing_ok=True)
        self.complete = False


def _create(directory: Path, image_id: str) -> BinaryIO:
    """The spool file, 0600 in a 0700 directory."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(directory / f"{image_id}.spool", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    return os.fdopen(fd, "wb")


def _room_for(directory: Path, image_id: str, size: int) -> BinaryIO | None:
    """The spool file when the directory has room for ``size`` bytes plus a reserve; None otherwise, or when the
    directory cannot be used (no spool rather than no copy)."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if shutil.disk_usage(directory).free < size + SPOOL_RESERVE:
            return None
        return _create(directory, image_id)
    except OSError:
        return None


async def read_digests(
    client: ImageClient, image: Image, *, also: Iterable[str | None] = (), piece: int = 8 * PIECE,
    inspector: StreamInspector | None = None,
) -> Content:  # fmt: skip
    """Download ``image`` and hash it (md5, its os_hash_algo, default sha512, and the algorithms ``also`` names)
    in a worker thread: the size and digests of what a region really stores, for deep verification; ``inspector``
    is fed the same bytes (``inspection``: it stops taking them once it has decided)."""
    hasher = MultiHasher([image.os_hash_algo or "sha512", *(a for a in also if a)])
    async with client.open_download(image.id) as dl:
        async for chunk in dl.iter_chunks(piece):
            if inspector is not None:
                inspector.feed(chunk)
            await anyio.to_thread.run_sync(hasher.update, chunk)
    if inspector is not None:
        inspector.finish()
    return Content(hasher.bytes, hasher.hexdigests())


async def spool_pieces(spool: Spool, piece: int = 8 * PIECE) -> AsyncGenerator[bytes, None]:
    """The spooled bytes, read without blocking the event loop (aiofiles runs reads in a thread)."""
    async with aiofiles.open(spool.path, "rb") as fh:
        while chunk := await fh.read(piece):
            yield chunk


@dataclass
class Head:
    """A source stream opened ahead of its pass: the generator, its first piece, or the error it met."""

    pieces: AsyncGenerator[bytes, None] | None
    first: bytes | None = None
    error: Exception | None = None


async def prepended(first: bytes | None, rest: AsyncGenerator[bytes, None] | None) -> AsyncGenerator[bytes, None]:
    """``first``, then the rest of the stream it was read from (closed with this generator)."""
    async with contextlib.AsyncExitStack() as stack:
        if rest is not None:
            await stack.enter_async_context(contextlib.aclosing(rest))
        if first is not None:
            yield first
        if rest is not None:
            async for piece in rest:
                yield piece
