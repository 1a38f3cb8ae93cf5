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
    ServerError,
    UnsupportedMediaTypeError,
)
from pipeline.models import Image

from .cloud import Cloud

DATA = bytes(range(256)) * 4096  # 1 MiB, every byte value
JSON = {"Accept": "application/json"}


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
    doc = (await cloud.raw("GET", f"/v2/images/{img.id}")).json()  # the wire document: Image drops null core fields
    assert "virtual_size" in doc
    assert doc["virtual_size"] is None  # 0 is not recorded


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
        shown = ctype or "${CONTENT_TYPE}"  # webob's template variable stays literal without the header
        assert resp.json()["message"] == (
            f"The request media type {shown} is not supported by this server.\n<br /><br />\n"
            f"Invalid content type {ctype}"
        )
    resp = await cloud.raw("PUT", f"/v2/images/{img.id}/file", data=b"x",
                           headers={"Content-Type": "application/octet-stream; charset=binary"})  # fmt: skip
    assert resp.status == 204  # parameters after the media type are fine


QCOW2_HEAD = b"QFI\xfb\x00\x00\x00\x03" + bytes(16) + (5 << 30).to_bytes(8, "big") + bytes(4064)


@pytest.mark.parametrize(
    ("disk_format", "data", "virtual_size"),
    [
        ("qcow2", QCOW2_HEAD, 5 << 30),
        ("raw", QCOW2_HEAD, len(QCOW2_HEAD)),
        ("ami", b"x" * 1000, None),
    ],
    ids=["qcow2", "qcow2-as-raw", "ami"],
)
async def test_upload_inspection_accepts_matching_data(
    cloud: Cloud, disk_format: str, data: bytes, virtual_size: int | None
) -> None:
    """Bytes that fit the disk_format are accepted, with virtual_size as Glance 33's inspector sets it."""
    # qcow2: the size in the qcow2 header; raw takes anything, sized as bytes; ami is not inspectable
    client = cloud.client()
    img = await client.create_image(cloud.image_fields(disk_format=disk_format))
    await client.upload_image(img.id, chunks(data), size=len(data))
    done = await client.get_image(img.id)
    assert (done.status, done.raw.get("virtual_size")) == ("active", virtual_size)  # Image drops a null core field


@pytest.mark.parametrize("disk_format", ["qcow2", "iso", "vhd"])
async def test_upload_inspection_refuses_mismatching_data(cloud: Cloud, disk_format: str) -> None:
    """Plain bytes labelled qcow2/iso/vhd give 415, leave stale checksums, and poison the image (500)."""
    # Glance 33: the image is queued again but keeps the refused bytes' checksum, and the refused file stays
    # in the store, so the next upload fails with 500 until the image is deleted
    client = cloud.client()
    data = b"x" * 1000
    img = await client.create_image(cloud.image_fields(disk_format=disk_format))
    match = f"Image disk_format {disk_format} does not match stream data raw"
    with pytest.raises(UnsupportedMediaTypeError, match=match):
        await client.upload_image(img.id, chunks(data), size=len(data))
    left = await client.get_image(img.id)
    assert (left.status, left.size, left.checksum) == ("queued", None, hashlib.md5(data).hexdigest())
    assert left.os_hash_value == hashlib.sha512(data).hexdigest()
    with pytest.raises(ServerError):
        await client.upload_image(img.id, chunks(data), size=len(data))
    assert (await client.get_image(img.id)).status == "queued"
    await client.delete_image(img.id)


async def test_no_content_answers(cloud: Cloud) -> None:
    """204s: upload, tag add/delete and image delete say text/html; member delete says no Content-Type."""
    img = await cloud.client().create_image(cloud.image_fields(visibility="shared"))
    await cloud.client().add_member(img.id, cloud.t2)
    path = f"/v2/images/{img.id}"
    html = "text/html; charset=UTF-8"
    for method, sub, kwargs, ctype in [
        ("PUT", "/file", {"data": b"abc", "headers": {"Content-Type": "application/octet-stream"}}, html),
        ("PUT", "/tags/x", {}, html),
        ("DELETE", "/tags/x", {}, html),
        ("DELETE", f"/members/{cloud.t2}", {}, None),
        ("DELETE", "", {}, html),
    ]:  # fmt: skip
        resp = await cloud.raw(method, path + sub, **kwargs)
        assert (resp.status, resp.body, resp.headers.get("Content-Type")) == (204, b"", ctype), (method, sub)


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


async def wait_status(cloud: Cloud, image_id: str, status: str, *, leave: bool = False) -> Image:
    """Poll until the image is in ``status`` (``leave=True``: until it is no longer in it)."""
    with anyio.fail_after(10):
        # the server changes the status on its own; there is nothing to wait on but the API itself
        while ((img := await cloud.client().get_image(image_id)).status == status) == leave:  # noqa: ASYNC110
            await anyio.sleep(0.02)
    return img


async def test_broken_upload_returns_image_to_queued(cloud: Cloud) -> None:
    """An upload shows 'saving'; if the client dies, the image returns to queued, empty; a retry works."""
    # the server notices the broken connection a moment after the client does, so wait for 'saving' to end
    client = cloud.client()
    img = await client.create_image(cloud.image_fields())

    async def dying() -> AsyncIterator[bytes]:
        yield DATA[:100_000]
        await wait_status(cloud, img.id, "saving")
        raise ConnectionResetError("client died")

    with pytest.raises((ConnectionLostError, ConnectionResetError)):
        await client.upload_image(img.id, dying(), size=len(DATA))
    again = await wait_status(cloud, img.id, "saving", leave=True)
    assert (again.status, again.size, again.checksum) == ("queued", None, None)
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
    resp = await cloud.raw("GET", f"/v2/images/{img.id}/file")
    assert resp.headers["Content-Type"] == "application/octet-stream"
    for absent in ("Accept-Ranges", "ETag", "Last-Modified", "Transfer-Encoding"):
        assert absent not in resp.headers, absent


async def test_stream_copy_between_regions_keeps_the_digests(cloud: Cloud) -> None:
    """A download from KR1 piped into an upload to KR2 (same image id) gives identical md5 and sha512."""
    src = await active_image(cloud)
    dst = await cloud.client(region="KR2").create_image(cloud.image_fields(id=src.id))
    async with cloud.client().open_download(src.id) as dl:
        await cloud.client(region="KR2").upload_image(dst.id, dl.iter_chunks(65536), size=src.size)
    copied = await cloud.client(region="KR2").get_image(src.id)
    assert (copied.id, copied.checksum, copied.os_hash_value) == (src.id, src.checksum, src.os_hash_value)


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
        ("bytes=-9999999", 206, DATA),
        ("bytes=100-9999999", 206, DATA[100:]),
        ("Bytes = 3-5", 206, DATA[3:6]),
        (f"bytes={len(DATA)}-", 416, "Invalid start position in Range header. Start position MUST be in the "
                                     f"inclusive range [0, {len(DATA) - 1}]."),
        ("bytes=0-1,5-6", 400, "Requests with multiple ranges are not supported in Glance. You may make "
                               "multiple single-range requests instead."),
        ("pages=1-2", 416, "Invalid Range header."),
        ("bytes=20-10", 416, "Invalid Range header."),
    ],
    ids=["closed", "suffix", "suffix-too-long", "end-past-size", "spaces-and-case", "past-end", "multi",
         "unparseable", "reversed"],
)  # fmt: skip
async def test_download_range_forms(cloud: Cloud, range_header: str, status: int, expected: bytes | str) -> None:
    """Single ranges give 206 (clipped), a start past the end or garbage 416, several ranges 400."""
    # webob parses the header: "bytes" in any case, spaces allowed
    img = await active_image(cloud)
    resp = await cloud.raw("GET", f"/v2/images/{img.id}/file",
                           headers={"Range": range_header, "Accept": "application/json"})  # fmt: skip
    assert resp.status == status
    if isinstance(expected, bytes):
        assert resp.body == expected
        first = len(DATA) - len(expected)
        if range_header.startswith(("bytes=1", "Bytes")):
            first = DATA.index(expected)
        assert resp.headers["Content-Range"] == f"bytes {first}-{first + len(expected) - 1}/{len(DATA)}"
    else:
        assert expected in resp.json()["message"]


@pytest.mark.parametrize(
    ("content_range", "status", "expected"),
    [
        ("bytes 10-19/*", 206, DATA[10:20]),
        (f"bytes 10-19/{len(DATA)}", 206, DATA[10:20]),
        ("bytes 10-19", 416, "Invalid Content-Range header."),
        ("bytes 19-10/*", 416, "Invalid Content-Range header."),
        (f"bytes 10-{len(DATA)}/*", 416, "Invalid stop position in Content-Range header. The stop position "
                                         f"MUST be in the inclusive range [0, {len(DATA) - 1}]."),
    ],
    ids=["open-length", "with-length", "no-length", "reversed", "stop-past-end"],
)  # fmt: skip
async def test_download_legacy_content_range_request_header(
    cloud: Cloud, content_range: str, status: int, expected: bytes | str
) -> None:
    """Glance still honours a Content-Range request header (legacy) when there is no Range header."""
    img = await active_image(cloud)
    resp = await cloud.raw("GET", f"/v2/images/{img.id}/file",
                           headers={"Content-Range": content_range, **JSON})  # fmt: skip
    assert resp.status == status
    if isinstance(expected, bytes):
        assert resp.body == expected
        assert resp.headers["Content-Range"] == f"bytes 10-19/{len(DATA)}"
    else:
        assert expected in resp.json()["message"]
    both = {"Range": "bytes=0-1", "Content-Range": "bytes 10-19/*"}
    assert (await cloud.raw("GET", f"/v2/images/{img.id}/file", headers=both)).body == DATA[:2]


async def test_range_on_an_empty_image_is_416(cloud: Cloud) -> None:
    """A 0-byte image downloads as 200 with no body, but any Range gives 416 '[0, -1]'."""
    img = await active_image(cloud, b"")
    whole = await cloud.raw("GET", f"/v2/images/{img.id}/file")
    assert (whole.status, whole.body, whole.headers["Content-Length"]) == (200, b"", "0")
    resp = await cloud.raw("GET", f"/v2/images/{img.id}/file",
                           headers={"Range": "bytes=0-", "Accept": "application/json"})  # fmt: skip
    assert resp.status == 416
    assert "inclusive range [0, -1]" in resp.json()["message"]
    assert resp.json()["title"] == "Request Range Not Satisfiable"


async def test_download_range_past_end_raises(cloud: Cloud) -> None:
    """The client maps 416 to RangeNotSatisfiableError."""
    img = await active_image(cloud, b"abc")
    with pytest.raises(RangeNotSatisfiableError, match="Range"):
        async with cloud.client().open_download(img.id, offset=3):
            pass


async def test_download_of_queued_image_is_204(cloud: Cloud) -> None:
    """An image without data answers 204, no body, no Content-Type; the client reports has_data False."""
    img = await cloud.client().create_image(cloud.image_fields())
    resp = await cloud.raw("GET", f"/v2/images/{img.id}/file")
    assert (resp.status, resp.body, "Content-Type" in resp.headers) == (204, b"", False)
    async with cloud.client().open_download(img.id) as dl:
        assert dl.status == 204
        assert not dl.has_data
        assert [c async for c in dl.iter_chunks(1024)] == []


async def test_members_download_in_any_status_and_others_get_404(cloud: Cloud) -> None:
    """A pending or rejected member can download a shared image; a non-member gets 404."""
    img = await active_image(cloud, visibility="shared")
    await cloud.client(cloud.t1).add_member(img.id, cloud.t2)
    async with cloud.client(cloud.t2).open_download(img.id, offset=5) as dl:
        assert dl.status == 206
    await cloud.client(cloud.t2).update_member_status(img.id, cloud.t2, "rejected")
    async with cloud.client(cloud.t2).open_download(img.id, offset=5) as dl:
        assert dl.status == 206
    with pytest.raises(NotFoundError):
        async with cloud.client(cloud.t3).open_download(img.id):
            pass


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("HEAD", "/v2/images", "GET, POST"),
        ("HEAD", "/v2/images/{id}", "GET, PATCH, DELETE"),
        ("HEAD", "/v2/images/{id}/file", "GET, PUT"),
        ("POST", "/v2/images/{id}", "GET, PATCH, DELETE"),
        ("GET", "/v2/images/{id}/tags/x", "PUT, DELETE"),
        ("DELETE", "/v2/images/{id}/members", "GET, POST"),
        ("PATCH", "/v2/images/{id}/members/x", "GET, PUT, DELETE"),
        ("POST", "/v2/schemas/image", "GET"),
    ],
    ids=[
        "head-list",
        "head-image",
        "head-file",
        "post-image",
        "get-tag",
        "delete-members",
        "patch-member",
        "post-schema",
    ],
)
async def test_wrong_method_is_405_with_allow(cloud: Cloud, method: str, path: str, allow: str) -> None:
    """HEAD is supported nowhere; a wrong method gets 405, Allow in Glance's order, webob's template."""
    img = await cloud.client().create_image(cloud.image_fields(visibility="shared"))
    resp = await cloud.raw(method, path.format(id=img.id), headers={"Accept": "application/json"})
    assert resp.status == 405
    assert resp.headers["Allow"] == allow
    if method != "HEAD":
        expected = f"The method {method} is not allowed for this resource. <br /><br />\n"
        assert resp.json()["message"] == expected


async def test_unknown_path_is_404(cloud: Cloud) -> None:
    """An unknown path gives 404 'The resource could not be found.'"""
    resp = await cloud.raw("GET", "/v2/nothing-here", headers={"Accept": "application/json"})
    assert resp.status == 404
    assert "could not be found" in resp.json()["message"]
