"""Image data (/v2/images/{id}/file): upload and download streaming, and the faults played on the bytes.

The handlers stream image data through worker threads, so memory stays flat whatever the image size.
"""

from __future__ import annotations

import time
from collections.abc import Generator

import anyio
from aiohttp import web
from aiohttp.client_exceptions import ClientConnectionResetError

from .context import CTX, REQUEST_ID, request_caller
from .faults import FaultPlan
from .fields import GlanceError
from .ranges import requested_range
from .store import ImageRecord

__all__ = ["CHUNK", "UPLOAD_STALL_LIMIT", "WRITE_BATCH", "abort_connection", "download_handler", "upload_handler"]

CHUNK = 1 << 20
WRITE_BATCH = 1 << 20


class _Pacer:
    """Holds a connection to ``rate`` bytes per second (a WAN link), if a rate is set."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.start = time.monotonic()
        self.bytes = 0

    async def account(self, n: int) -> None:
        if not self.rate:
            return
        self.bytes += n
        ahead = self.bytes / self.rate - (time.monotonic() - self.start)
        if ahead > 0:
            await anyio.sleep(ahead)


#: A stalled upload is aborted after this long, as uwsgi's ``socket-timeout = 10`` does in front of Glance.
UPLOAD_STALL_LIMIT = 10.0


async def _stall(request: web.Request, limit: float = 600.0) -> None:
    """Send or read nothing more until the client gives up, or ``limit`` seconds pass."""
    with anyio.move_on_after(limit):
        # aiohttp has no event for "the client went away", so the transport is polled
        while request.transport is not None and not request.transport.is_closing():  # noqa: ASYNC110
            await anyio.sleep(0.1)


def abort_connection(request: web.Request) -> None:
    """Reset the connection (RST): whatever is still buffered is lost."""
    if request.transport is not None:
        request.transport.abort()


def _hang_up(request: web.Request) -> None:
    """Close the connection after what was written so far (FIN): the client gets exactly those bytes."""
    if request.transport is not None:
        request.transport.close()


#: What a client that goes away mid-body looks like from the server side.
_GONE = (ConnectionError, ClientConnectionResetError)


def _announced_size(request: web.Request) -> int | None:
    """The upload's size as Glance's deserializer reads it: x-openstack-image-size, else Content-Length."""
    header = request.headers.get("x-openstack-image-size")
    if header is None:
        return request.content_length or None
    try:
        return int(header)
    except ValueError:
        raise GlanceError(400, "Invalid or missing image size in request headers.") from None


async def upload_handler(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    ctype = request.headers.get("Content-Type")
    if (ctype or "").split(";")[0].strip() != "application/octet-stream":
        raise GlanceError(415, detail=f"Invalid content type {ctype}")
    size = _announced_size(request)
    plan, ok, stats = ctx.faults, False, ctx.stats
    rec, writer = ctx.store.begin_upload(request.match_info["image_id"], request_caller(request),
                                         discard=plan.discard_uploads, size=size)  # fmt: skip
    pacer = _Pacer(plan.bandwidth)
    received = 0
    buf = bytearray()
    stats.uploads_started += 1
    stats.first_upload_at.setdefault(rec.owner, time.time())
    stats.uploads_active += 1
    try:
        async for chunk in request.content.iter_chunked(CHUNK):
            end = received + len(chunk)
            for faults, kind in ((plan.drop_upload, "drop_upload"), (plan.stall_upload, "stall_upload")):
                if FaultPlan.take_byte(faults, rec.id, received, end) is not None:
                    plan.record(kind)
                    if kind == "stall_upload":
                        await _stall(request, UPLOAD_STALL_LIMIT)
                    abort_connection(request)
                    return web.Response(status=500)
            chunk = plan.corrupted(plan.corrupt_upload, "corrupt_upload", rec.id, chunk, received)
            received = end
            stats.bytes_received += len(chunk)
            stats.active_upload_bytes += len(chunk)
            buf += chunk
            if len(buf) >= WRITE_BATCH:
                data, buf = bytes(buf), bytearray()
                await anyio.to_thread.run_sync(writer.write, data)
            await pacer.account(len(chunk))
        if buf:
            await anyio.to_thread.run_sync(writer.write, bytes(buf))
        ok = True
    except _GONE:
        return web.Response(status=400)  # the client went away mid-upload; nobody reads this answer
    finally:
        stats.uploads_active -= 1
        stats.active_upload_bytes -= received
        if ok:
            stats.uploads_completed += 1
            stats.completed_by_image[rec.id] = stats.completed_by_image.get(rec.id, 0) + 1
        else:
            stats.uploads_aborted += 1
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(lambda: ctx.store.finish_upload(rec, writer, ok=ok))
    return web.Response(status=204, content_type="text/html", charset="UTF-8")


async def download_handler(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    rec: ImageRecord = ctx.store.visible(request.match_info["image_id"], request_caller(request))
    ctx.store.check_download(rec, request_caller(request))  # 403 for a deactivated image (admins excepted)
    if rec.status not in ("active", "deactivated") or rec.size is None:
        return web.Response(status=204)
    plan, size = ctx.faults, rec.size
    span = None
    if not plan.ignore_range:
        span = requested_range(request.headers.get("Range"), request.headers.get("Content-Range"), size)
    (start, end), status = span or (0, size), 200 if span is None else 206
    resp = web.StreamResponse(status=status)
    resp.content_type = "application/octet-stream"
    resp.content_length = end - start
    resp.headers["Content-MD5"] = rec.checksum or ""
    if status == 206:
        resp.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    resp.headers["x-openstack-request-id"] = request[REQUEST_ID]
    if rec.synthetic_seed is None and rec.data_path is None:
        raise GlanceError(500, "the emulator discarded this image's data (discard_uploads knob)")
    await resp.prepare(request)
    chunk_size = CHUNK if not plan.bandwidth else max(16 << 10, min(CHUNK, int(plan.bandwidth / 50)))
    pieces = ctx.store.read_chunks(rec, start, end, chunk_size)
    try:
        await _send_pieces(request, resp, rec, pieces, start)
    except _GONE:
        pass  # the client went away mid-image
    finally:
        pieces.close()  # the client may leave mid-image: close the image file now, not at GC time
    return resp


async def _send_pieces(
    request: web.Request, resp: web.StreamResponse, rec: ImageRecord, pieces: Generator[bytes], pos: int
) -> None:
    """Write the image's pieces from offset ``pos``, applying the download fault knobs on the way."""
    plan = request.app[CTX].faults
    pacer = _Pacer(plan.bandwidth)
    while True:
        if rec.synthetic_seed:
            piece = next(pieces, None)
        else:
            piece = await anyio.to_thread.run_sync(next, pieces, None)
        if piece is None:
            break
        stop = pos + len(piece)
        piece = plan.corrupted(plan.corrupt_download, "corrupt_download", rec.id, piece, pos)
        for faults, kind in ((plan.drop_download, "drop_download"), (plan.stall_download, "stall_download")):
            cut = FaultPlan.take_byte(faults, rec.id, pos, stop)
            if cut is not None:
                plan.record(kind)
                if cut > pos:
                    await resp.write(piece[: cut - pos])
                if kind == "stall_download":
                    await _stall(request)
                    abort_connection(request)
                else:
                    _hang_up(request)
                return
        await resp.write(piece)
        request.app[CTX].stats.bytes_sent += len(piece)
        await pacer.account(len(piece))
        pos = stop
    await resp.write_eof()
