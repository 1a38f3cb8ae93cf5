"""Contract: image data upload and download (streaming, Range, state machine, failures)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import anyio
import pytest

from pipeline.errors import (
    BadRequestError,
    ConflictError,
    ConnectionLostError,
    NotFoundError,
    RangeNotSatisfiableError,
)
from pipeline.models import Image

from .cloud import Cloud

DATA = bytes(range(256)) * 4096  # 1 MiB, every byte value


async def chunks(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def active_image(cloud: Cloud, data: bytes = DATA, **fields: object) -> Image:
    client = cloud.client()
    img = await client.create_image(cloud.image_fields(**fields))
    await client.upload_image(img.id, chunks(data), size=len(data))
    return await client.get_image(img.id)


async def test_upload_makes_image_active_with_digests(cloud: Cloud) -> None:
    """A streamed upload gives 204, then active with size, md5 checksum and sha512 os_hash_value."""
    img = await active_image(cloud)
    assert img.status == "active"
    assert img.size == len(DATA)
    assert img.checksum == hashlib.md5(DATA).hexdigest()
    assert img.os_hash_algo == "sha512"
    assert img.os_hash_value == hashlib.sha512(DATA).hexdigest()
    assert img.raw["virtual_size"] == len(DATA)  # raw: virtual size = size


async def test_upload_chunked_without_length(cloud: Cloud) -> None:
    """An upload without Content-Length (chunked transfer encoding) works the same."""
    client = cloud.client()
    img = await client.create_image(cloud.image_fields())
    await client.upload_image(img.id, chunks(DATA, 1000))
    assert (await client.get_image(img.id)).checksum == hashlib.md5(DATA).hexdigest()


async def test_upload_zero_bytes(cloud: Cloud) -> None:
    """A 0-byte upload makes an active image of size 0 with the md5 of nothing."""
    img = await active_image(cloud, b"")
    assert (img.status, img.size, img.checksum) == ("active", 0, "d41d8cd98f00b204e9800998ecf8427e")


async def test_upload_needs_octet_stream(cloud: Cloud) -> None:
    """Any Content-Type other than application/octet-stream gives 415."""
    img = await cloud.client().create_image(cloud.image_fields())
    for ctype in ("application/json", None):
        headers = {"Accept": "application/json"}
        if ctype:
            headers["Content-Type"] = ctype
        resp = await cloud.raw(
            "PUT", f"/v2/images/{img.id}/file", data=b"x", headers=headers, skip_auto_headers=["Content-Type"]
        )
        assert resp.status == 415, ctype
        assert "not supported" in resp.json()["message"]


async def test_upload_to_active_image_is_409(cloud: Cloud) -> None:
    """Uploading again to an active image gives 409 (status transition not allowed)."""
    img = await active_image(cloud)
    with pytest.raises(ConflictError, match="active to saving"):
        await cloud.client().upload_image(img.id, chunks(b"again"), size=5)


async def test_upload_needs_formats(cloud: Cloud) -> None:
    """Without disk_format and container_format, an upload gives 400."""
    img = await cloud.client().create_image(cloud.image_fields(disk_format=None, container_format=None))
    with pytest.raises(BadRequestError, match="must be set prior to saving data"):
        await cloud.client().upload_image(img.id, chunks(b"x"), size=1)


async def test_broken_upload_returns_image_to_queued(cloud: Cloud) -> None:
    """When the client dies mid-upload, the image goes back to queued without data, and a retry works."""
    client = cloud.client()
    img = await client.create_image(cloud.image_fields())

    async def dying() -> AsyncIterator[bytes]:
        yield DATA[:100_000]
        raise ConnectionResetError("client died")

    with pytest.raises((ConnectionLostError, ConnectionResetError)):
        await client.upload_image(img.id, dying(), size=len(DATA))
    with anyio.fail_after(10):
        while (again := await client.get_image(img.id)).status != "queued":
            await anyio.sleep(0.05)
    assert again.size is None
    assert again.checksum is None
    await client.upload_image(img.id, chunks(DATA), size=len(DATA))
    assert (await client.get_image(img.id)).checksum == hashlib.md5(DATA).hexdigest()


async def read_all(cloud: Cloud, image_id: str, offset: int = 0) -> tuple[int, bytes, object]:
    async with cloud.client().open_download(image_id, offset=offset) as dl:
        data = b"".join([c async for c in dl.iter_chunks(65536)])
        return dl.status, data, dl


async def test_download_whole_image(cloud: Cloud) -> None:
    """GET file gives 200, the exact bytes, Content-Length and a hex MD5 in Content-MD5."""
    img = await active_image(cloud)
    status, data, dl = await read_all(cloud, img.id)
    assert status == 200
    assert data == DATA
    assert dl.content_length == len(DATA)  # type: ignore[attr-defined]
    assert dl.content_md5 == hashlib.md5(DATA).hexdigest()  # type: ignore[attr-defined]


async def test_download_range_from_offset(cloud: Cloud) -> None:
    """Range: bytes=N- gives 206, Content-Range N-(size-1)/size, and the tail of the image."""
    img = await active_image(cloud)
    status, data, dl = await read_all(cloud, img.id, offset=300_000)
    assert status == 206
    assert data == DATA[300_000:]
    assert dl.content_range == (300_000, len(DATA) - 1, len(DATA))  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("range_header", "status", "expected"),
    [
        ("bytes=10-19", 206, DATA[10:20]),
        ("bytes=-100", 206, DATA[-100:]),
        (f"bytes={len(DATA)}-", 416, None),
        ("bytes=0-1,5-6", 400, None),
        ("pages=1-2", 416, None),
    ],
    ids=["closed", "suffix", "past-end", "multi", "unparseable"],
)
async def test_download_range_forms(cloud: Cloud, range_header: str, status: int, expected: bytes | None) -> None:
    """Single ranges give 206; a start past the end or garbage gives 416; several ranges give 400."""
    img = await active_image(cloud)
    resp = await cloud.raw("GET", f"/v2/images/{img.id}/file", headers={"Range": range_header})
    assert resp.status == status
    if expected is not None:
        assert resp.body == expected


async def test_download_range_past_end_raises(cloud: Cloud) -> None:
    """The client maps 416 to RangeNotSatisfiableError."""
    img = await active_image(cloud, b"abc")
    with pytest.raises(RangeNotSatisfiableError, match="Range"):
        async with cloud.client().open_download(img.id, offset=3):
            pass


async def test_download_of_queued_image_is_204(cloud: Cloud) -> None:
    """An image without data answers 204 with no body; the client reports has_data False."""
    img = await cloud.client().create_image(cloud.image_fields())
    async with cloud.client().open_download(img.id) as dl:
        assert dl.status == 204
        assert not dl.has_data
        assert [c async for c in dl.iter_chunks(1024)] == []


async def test_members_download_in_any_status_and_others_get_404(cloud: Cloud) -> None:
    """A pending member can download a shared image; a non-member gets 404."""
    img = await active_image(cloud, visibility="shared")
    await cloud.client(cloud.t1).add_member(img.id, cloud.t2)
    async with cloud.client(cloud.t2).open_download(img.id, offset=5) as dl:
        assert dl.status == 206
    with pytest.raises(NotFoundError):
        async with cloud.client(cloud.t3).open_download(img.id):
            pass


async def test_head_is_not_allowed(cloud: Cloud) -> None:
    """HEAD is not supported: 405 with an Allow header listing the methods of that path."""
    img = await active_image(cloud)
    resp = await cloud.raw("HEAD", f"/v2/images/{img.id}/file")
    assert resp.status == 405
    assert {"GET", "PUT"} <= {m.strip() for m in resp.headers["Allow"].split(",")}


async def test_unknown_path_is_404(cloud: Cloud) -> None:
    """An unknown path gives 404 'The resource could not be found.'"""
    resp = await cloud.raw("GET", "/v2/nothing-here", headers={"Accept": "application/json"})
    assert resp.status == 404
    assert "could not be found" in resp.json()["message"]
