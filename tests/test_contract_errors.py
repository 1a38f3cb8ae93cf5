"""Contract: error bodies (JSON, HTML, text), request ids, and low-level retries against faults."""

from __future__ import annotations

import pytest

from pipeline.cloud.retry import RetryPolicy
from pipeline.cloud.transport import server_message
from pipeline.emulator import StatusFault
from pipeline.errors import NotFoundError, RateLimitedError, ServerError

from .cloud import Cloud

MISSING = "/v2/images/5a7c1e8e-0000-4000-8000-000000000000"


async def test_error_body_follows_accept(cloud: Cloud) -> None:
    """With Accept JSON the error is {message, code, title}; without, HTML; the client reads both."""
    as_json = await cloud.raw("GET", MISSING, headers={"Accept": "application/json"})
    assert as_json.status == 404
    assert as_json.headers["Content-Type"].startswith("application/json")
    doc = as_json.json()
    assert doc["code"] == "404 Not Found"
    assert doc["title"] == "Not Found"
    as_html = await cloud.raw("GET", MISSING)
    assert as_html.headers["Content-Type"].startswith("text/html")
    assert b"<title>404 Not Found</title>" in as_html.body
    for resp in (as_json, as_html):
        message = server_message(resp.body, resp.headers["Content-Type"])
        assert message.startswith("No image found with ID 5a7c1e8e")
        assert "<" not in message


async def test_request_id_is_echoed_with_prefix(cloud: Cloud) -> None:
    """x-openstack-request-id is on every response; a client-sent id is echoed with a req- prefix."""
    resp = await cloud.raw("GET", "/v2/images", headers={"X-Openstack-Request-ID": "abc"})
    assert resp.headers["x-openstack-request-id"] == "req-abc"
    resp = await cloud.raw("GET", "/v2/images", headers={"X-Openstack-Request-ID": "req-given"})
    assert resp.headers["x-openstack-request-id"] == "req-given"
    err = await cloud.raw("GET", MISSING)
    assert err.headers["x-openstack-request-id"].startswith("req-")


async def test_overlong_request_id_is_a_bare_500(cloud: Cloud) -> None:
    """Glance 33 bug: a request id over 64 characters gives 500 without any request id."""
    ok = await cloud.raw("GET", "/v2/images", headers={"X-Openstack-Request-ID": "r" * 60})
    assert ok.status == 200
    resp = await cloud.raw("GET", "/v2/images", headers={"X-Openstack-Request-ID": "r" * 65, "Accept": "text/plain"})
    assert resp.status == 500
    assert "x-openstack-request-id" not in resp.headers
    assert (
        resp.body == b"500 Internal Server Error\n\nThe server has either erred or is incapable of performing "
        b"the requested operation.\n\n   "
    )


async def test_errors_carry_region_image_status_and_request_id(cloud: Cloud) -> None:
    """An ApiError names region, image id, HTTP status, the server's message and its request id."""
    image_id = MISSING.rsplit("/", 1)[1]
    with pytest.raises(NotFoundError) as info:
        await cloud.client(region="KR2").get_image(image_id)
    err = info.value
    assert (err.region, err.image_id, err.status) == ("KR2", image_id, 404)
    assert err.request_id
    assert err.request_id.startswith("req-")
    assert "No image found" in str(err)
    assert "KR2" in str(err)


async def test_503_burst_with_retry_after_is_retried(emulator_cloud: Cloud) -> None:
    """Two 503s with Retry-After are retried (honouring the header) and the call succeeds."""
    assert emulator_cloud.emulator is not None
    emulator_cloud.emulator.faults("KR1").statuses.append(StatusFault(503, op="list", count=2, retry_after=0.05))
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    client = emulator_cloud.client()
    client.retry = RetryPolicy(attempts=4, sleep=sleep)
    assert [i async for i in client.list_images()] == []
    assert waits == [0.05, 0.05]


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429, 408])
async def test_retryable_statuses_are_retried(emulator_cloud: Cloud, status: int) -> None:
    """5xx, 429 and 408 are retried by the low-level policy."""
    assert emulator_cloud.emulator is not None
    emulator_cloud.emulator.faults("KR1").statuses.append(StatusFault(status, op="get", count=1))
    img = await emulator_cloud.client().create_image(emulator_cloud.image_fields())
    assert (await emulator_cloud.client().get_image(img.id)).id == img.id
    assert emulator_cloud.emulator.faults("KR1").fired[f"status_{status}"] == 1


async def test_retries_are_bounded(emulator_cloud: Cloud) -> None:
    """When every attempt fails, the last error surfaces after exactly `attempts` tries."""
    assert emulator_cloud.emulator is not None
    emulator_cloud.emulator.faults("KR1").statuses.append(StatusFault(429, op="list", count=10, retry_after=0))
    with pytest.raises(RateLimitedError):
        [i async for i in emulator_cloud.client().list_images()]
    assert emulator_cloud.emulator.faults("KR1").fired["status_429"] == 5


async def test_uploads_are_never_retried_by_the_client(emulator_cloud: Cloud) -> None:
    """A 503 on upload surfaces at once (one attempt): the runner, not the HTTP layer, retries uploads."""
    assert emulator_cloud.emulator is not None
    client = emulator_cloud.client()
    img = await client.create_image(emulator_cloud.image_fields())
    emulator_cloud.emulator.faults("KR1").statuses.append(StatusFault(503, op="upload", count=5))

    async def body():  # type: ignore[no-untyped-def]
        yield b"data"

    with pytest.raises(ServerError):
        await client.upload_image(img.id, body(), size=4)
    assert emulator_cloud.emulator.faults("KR1").fired["status_503"] == 1
    assert (await client.get_image(img.id)).status == "queued"
