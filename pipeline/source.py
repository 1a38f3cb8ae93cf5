"""Where image bytes come from: the source region (resumed with Range when the stream breaks) or a spool.

``source_pieces`` reads a source image and survives broken connections: it reopens the download at the
byte it had reached (``Range: bytes=N-``) and checks the 206 ``Content-Range``. If the server ignores
Range (200), it re-reads from byte 0 and discards what it already had. Consumers never see the hiccup;
the end-to-end digest check at EOF proves that the pieces form the source image. Errors here are
``SourceReadError``: they blame the source, never a target.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncGenerator
from pathlib import Path

import aiofiles
import anyio
from aiolimiter import AsyncLimiter

from .errors import ApiError, SourceReadError, TransportError
from .events import BytesRead, Reporter, SourceResumed
from .glance.client import ImageClient
from .hashing import MultiHasher
from .models import Image
from .retry import RetryPolicy

__all__ = ["Bandwidth", "Spool", "read_digests", "source_pieces", "spool_pieces"]

PIECE = 1 << 20
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
    max_resumes: int,
    backoff: RetryPolicy,
    reporter: Reporter,
    bandwidth: Bandwidth | None = None,
    piece: int = PIECE,
) -> AsyncGenerator[bytes, None]:
    """Every byte of ``image`` in order, reconnecting with Range after a broken stream."""
    size = image.size or 0
    pos = 0  # bytes already yielded
    resumes = 0
    while True:
        discard = 0
        try:
            async with client.open_download(image.id, offset=pos) as dl:
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
            if resumes > max_resumes:
                raise SourceReadError(
                    f"source stream broke {resumes} times; last: {exc}",
                    region=client.region,
                    image_id=image.id,
                ) from exc
            reporter.emit(SourceResumed(image.id, pos, resumes, str(exc)))
            await backoff.sleep(backoff.delay(resumes, exc))
        except SourceReadError:
            raise
        except ApiError as exc:
            raise SourceReadError(f"source download failed: {exc}", region=client.region,
                                  image_id=image.id) from exc  # fmt: skip


class Spool:
    """A local copy of one image's bytes, so a target retry need not read the source again."""

    def __init__(self, directory: Path, image_id: str) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = directory / f"{image_id}.spool"
        self.complete = False
        self.written = False
        self.failed: str | None = None
        #: Set when the pass writing the spool has finished it (complete or not).
        self.done = anyio.Event()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._file = os.fdopen(fd, "wb")

    @staticmethod
    def has_room(directory: Path, size: int) -> bool:
        """Free-space check: the image plus a reserve must fit."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        return shutil.disk_usage(directory).free >= size + SPOOL_RESERVE

    def write(self, data: bytes) -> None:
        self._file.write(data)

    def finish(self, ok: bool) -> None:
        """Close the file; it is usable only if every byte arrived and the stream verified."""
        self._file.close()
        self.complete = ok and self.failed is None
        self.done.set()

    def remove(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)
        self.complete = False


async def read_digests(client: ImageClient, image: Image, *, piece: int = 8 * PIECE) -> dict[str, str]:
    """Download ``image`` and hash it (md5 plus its os_hash_algo, default sha512) in a worker thread:
    the digests of what a region really stores, for deep verification."""
    hasher = MultiHasher([image.os_hash_algo or "sha512"])
    async with client.open_download(image.id) as dl:
        async for chunk in dl.iter_chunks(piece):
            await anyio.to_thread.run_sync(hasher.update, chunk)
    return hasher.hexdigests()


async def spool_pieces(spool: Spool, piece: int = 8 * PIECE) -> AsyncGenerator[bytes, None]:
    """The spooled bytes, read without blocking the event loop (aiofiles runs reads in a thread)."""
    async with aiofiles.open(spool.path, "rb") as fh:
        while chunk := await fh.read(piece):
            yield chunk
