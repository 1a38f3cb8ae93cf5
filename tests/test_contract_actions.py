"""Contract: image deactivation and reactivation (POST /v2/images/{id}/actions/deactivate|reactivate).

As observed on Glance 33: 204 with an empty body, idempotent (no save when the image is already there), 403 from
any status but active (resp. deactivated), no body allowed (400, checked before the lookup), and a deactivated
image's data refused to non-admins while its metadata, tags, members and deletion work as usual.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from pipeline.cloud import PasswordAuth, Secret, new_session
from pipeline.emulator import running_emulator
from pipeline.emulator.faults import LostAnswer
from pipeline.emulator.identity import UserEntry
from pipeline.errors import ConflictError, ForbiddenError, NotFoundError
from pipeline.models import Image

from .cloud import FAST_RETRY, Cloud

JSON = {"Accept": "application/json"}
DATA = hashlib.sha512(b"deactivate").digest() * 64  # 4 KiB
HTML_EMPTY = "text/html; charset=UTF-8"


def explained(message: str) -> str:
    """The JSON message of an error Glance raises with explanation=message."""
    return f"{message}<br /><br />\n\n\n"


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _active(cloud: Cloud, tenant: str | None = None, **fields: object) -> Image:
    client = cloud.client(tenant)
    img = await client.create_image(cloud.image_fields(**fields))
    await client.upload_image(img.id, _chunks(DATA), size=len(DATA))
    return await client.get_image(img.id)


def _action(image_id: str, action: str = "deactivate") -> str:
    return f"/v2/images/{image_id}/actions/{action}"


async def _download(cloud: Cloud, image_id: str, tenant: str | None = None) -> bytes:
    async with cloud.client(tenant).open_download(image_id) as dl:
        return b"".join([chunk async for chunk in dl.iter_chunks(1 << 16)])


async def test_deactivate_and_reactivate_answer_204_and_are_idempotent(cloud: Cloud) -> None:
    """Deactivate gives 204 with an empty text/html body and a deactivated image; again 204 with nothing saved;
    reactivate gives 204 and active, and again 204 with nothing saved."""
    img = await _active(cloud)
    client = cloud.client()
    for action, status in (("deactivate", "deactivated"), ("reactivate", "active")):
        resp = await cloud.raw("POST", _action(img.id, action), headers=JSON)
        assert (resp.status, resp.body) == (204, b"")
        assert resp.headers["Content-Type"] == HTML_EMPTY
        assert resp.headers["x-openstack-request-id"].startswith("req-")
        first = (await client.get_image(img.id)).raw
        assert first["status"] == status
        await anyio.sleep(1.1)  # Glance's timestamps have whole seconds: a save now would move updated_at
        again = await cloud.raw("POST", _action(img.id, action))
        assert (again.status, again.body) == (204, b"")
        after = (await client.get_image(img.id)).raw
        assert (after["status"], after["updated_at"]) == (status, first["updated_at"])
    for key in ("size", "checksum", "os_hash_value", "virtual_size"):
        assert after[key] == img.raw[key]


async def test_actions_need_the_right_status(cloud: Cloud) -> None:
    """A queued image can be neither deactivated nor reactivated (403, naming the status)."""
    img = await cloud.client().create_image(cloud.image_fields())
    for action in ("deactivate", "reactivate"):
        resp = await cloud.raw("POST", _action(img.id, action), headers=JSON)
        assert resp.status == 403
        assert resp.json() == {"message": explained(f"Not allowed to {action} image in status 'queued'"),
                               "code": "403 Forbidden", "title": "Forbidden"}  # fmt: skip
    assert (await cloud.client().get_image(img.id)).status == "queued"


@pytest.mark.parametrize(
    "body",
    [{"json": {}}, {"data": b"null", "headers": {**JSON, "Content-Type": "application/json"}}],
    ids=["json-object", "null"],
)
async def test_a_body_is_refused_before_the_lookup(cloud: Cloud, body: dict[str, object]) -> None:
    """Any body gives 400, on an image that exists (its status unchanged) and on one that does not."""
    img = await _active(cloud)
    kwargs = {"headers": JSON, **body}
    for image_id in (img.id, str(uuid.uuid4())):
        for action in ("deactivate", "reactivate"):
            resp = await cloud.raw("POST", _action(image_id, action), **kwargs)  # type: ignore[arg-type]
            assert resp.status == 400
            assert resp.json()["message"] == explained("A body is not expected with this request.")
    assert (await cloud.client().get_image(img.id)).status == "active"


async def test_empty_request_content_type_is_ignored(cloud: Cloud) -> None:
    """Without a body, any Content-Type (or none) is accepted."""
    img = await _active(cloud)
    for ctype in ("application/json", "text/plain", None):
        headers = {"Content-Type": ctype} if ctype else {}
        resp = await cloud.raw("POST", _action(img.id), headers=headers, skip_auto_headers=["Content-Type"])
        assert resp.status == 204, ctype


async def test_unknown_or_invisible_image_is_404(cloud: Cloud) -> None:
    """An unknown id, a non-UUID id and another tenant's image it cannot see give 404 with Glance's message."""
    img = await _active(cloud, visibility="private")
    for tenant, image_id in ((cloud.t1, str(uuid.uuid4())), (cloud.t1, "not-a-uuid"), (cloud.t2, img.id)):
        for action in ("deactivate", "reactivate"):
            resp = await cloud.raw("POST", _action(image_id, action), tenant=tenant, headers=JSON)
            assert resp.status == 404
            assert resp.json()["message"] == explained(f"No image found with ID {image_id}")


async def test_wrong_method_is_405(cloud: Cloud) -> None:
    """GET or PUT on an action gives 405 with Allow: POST."""
    img = await _active(cloud)
    for method, action in (("GET", "deactivate"), ("PUT", "reactivate")):
        resp = await cloud.raw(method, _action(img.id, action), headers=JSON)
        assert resp.status == 405
        assert resp.headers["Allow"] == "POST"
        assert resp.json()["message"] == f"The method {method} is not allowed for this resource. <br /><br />\n"


async def test_deactivated_data_is_refused(cloud: Cloud) -> None:
    """Download of a deactivated image is 403 (a Range too), upload to it 409; reactivated, the download gives
    the same bytes again."""
    img = await _active(cloud)
    client = cloud.client()
    await client.deactivate_image(img.id)
    message = "The requested image has been deactivated. Image data download is forbidden."
    for extra in ({}, {"Range": "bytes=0-9"}):
        resp = await cloud.raw("GET", f"/v2/images/{img.id}/file", headers={**JSON, **extra})
        assert resp.status == 403
        assert resp.json()["message"] == explained(message)
    with pytest.raises(ForbiddenError, match="has been deactivated"):
        await _download(cloud, img.id)
    resp = await cloud.raw("PUT", f"/v2/images/{img.id}/file", data=b"x" * 16,
                           headers={**JSON, "Content-Type": "application/octet-stream"})  # fmt: skip
    assert resp.status == 409
    assert resp.json()["message"] == explained("Image status transition from deactivated to saving is not allowed")
    with pytest.raises(ConflictError, match="from deactivated to saving"):
        await client.upload_image(img.id, _chunks(DATA), size=len(DATA))
    assert (await client.get_image(img.id)).status == "deactivated"
    await client.reactivate_image(img.id)
    assert await _download(cloud, img.id) == DATA


async def test_metadata_of_a_deactivated_image_can_change(cloud: Cloud) -> None:
    """PATCH (a property, os_hidden, the name), tags and members work on a deactivated image, which stays
    deactivated; only the status itself is read-only."""
    img = await _active(cloud, visibility="shared")
    client = cloud.client()
    await client.deactivate_image(img.id)
    for ops in (
        [{"op": "add", "path": "/x_custom", "value": "1"}],
        [{"op": "replace", "path": "/x_custom", "value": "2"}, {"op": "replace", "path": "/os_hidden", "value": True}],
        [{"op": "remove", "path": "/x_custom"}, {"op": "replace", "path": "/os_hidden", "value": False}],
        [{"op": "replace", "path": "/name", "value": "renamed"}],
    ):
        updated = await client.update_image(img.id, ops)
        assert updated.status == "deactivated"
    assert (updated.name, updated.raw["os_hidden"], "x_custom" in updated.raw) == ("renamed", False, False)
    with pytest.raises(ForbiddenError, match=r"Attribute 'status' is read-only\."):
        await client.update_image(img.id, [{"op": "replace", "path": "/status", "value": "active"}])
    await client.add_tag(img.id, "t1")
    assert (await client.get_image(img.id)).tags == ["t1"]
    await client.delete_tag(img.id, "t1")
    member = await client.add_member(img.id, cloud.t2)
    assert member.status == "pending"
    accepted = await cloud.client(cloud.t2).update_member_status(img.id, cloud.t2, "accepted")
    assert accepted.status == "accepted"
    assert (await cloud.client(cloud.t2).get_image(img.id)).status == "deactivated"


async def test_listing_includes_deactivated_images(cloud: Cloud) -> None:
    """The default list holds deactivated images; ?status=deactivated gives only those."""
    client = cloud.client()
    off, on = await _active(cloud, name="off"), await _active(cloud, name="on")
    await client.deactivate_image(off.id)
    assert {i.id for i in [i async for i in client.list_images()]} == {off.id, on.id}
    assert [i.id async for i in client.list_images({"status": "deactivated"})] == [off.id]
    assert [i.id async for i in client.list_images({"status": "active"})] == [on.id]


async def test_a_member_may_see_but_not_deactivate(cloud: Cloud) -> None:
    """An accepted member of a shared image gets 403 (not authorized) for both actions and for the data of the
    deactivated image; a tenant that cannot see the image gets 404."""
    img = await _active(cloud, visibility="shared")
    await cloud.client().add_member(img.id, cloud.t2)
    member = cloud.client(cloud.t2)
    await member.update_member_status(img.id, cloud.t2, "accepted")
    for action in ("deactivate", "reactivate"):
        resp = await cloud.raw("POST", _action(img.id, action), tenant=cloud.t2, headers=JSON)
        assert resp.status == 403
        assert resp.json()["message"] == explained(f"You are not authorized to complete {action} action.")
    with pytest.raises(NotFoundError, match=f"No image found with ID {img.id}"):
        await cloud.client(cloud.t3).deactivate_image(img.id)
    assert (await member.get_image(img.id)).status == "active"
    await cloud.client().deactivate_image(img.id)
    assert [i.id async for i in member.list_images({"status": "deactivated"})] == [img.id]
    with pytest.raises(ForbiddenError, match="has been deactivated"):
        await _download(cloud, img.id, cloud.t2)


async def test_delete_a_deactivated_image(cloud: Cloud) -> None:
    """A deactivated image can be deleted (unless protected); then both actions give 404."""
    client = cloud.client()
    img = await _active(cloud, protected=True)
    await client.deactivate_image(img.id)
    with pytest.raises(ForbiddenError, match=f"Image {img.id} is protected and cannot be deleted."):
        await client.delete_image(img.id)
    await client.update_image(img.id, [{"op": "replace", "path": "/protected", "value": False}])
    await client.delete_image(img.id)
    for action in ("deactivate", "reactivate"):
        resp = await cloud.raw("POST", _action(img.id, action), headers=JSON)
        assert resp.status == 404
        assert resp.json()["message"] == explained(f"No image found with ID {img.id}")


async def test_client_methods(cloud: Cloud) -> None:
    """ImageClient.deactivate_image / reactivate_image: idempotent, counted as their own request kinds, and
    Glance's refusals as errors."""
    client = cloud.client()
    img = await _active(cloud)
    await client.deactivate_image(img.id)
    await client.deactivate_image(img.id)
    assert (await client.get_image(img.id)).status == "deactivated"
    await client.reactivate_image(img.id)
    await client.reactivate_image(img.id)
    assert (await client.get_image(img.id)).status == "active"
    counts = client.requests.by_region()["KR1"]
    assert (counts["deactivate"], counts["reactivate"]) == (2, 2)
    assert "members" not in counts
    queued = await client.create_image(cloud.image_fields())
    with pytest.raises(ForbiddenError, match="Not allowed to deactivate image in status 'queued'"):
        await client.deactivate_image(queued.id)
    with pytest.raises(NotFoundError, match="No image found with ID"):
        await client.reactivate_image(str(uuid.uuid4()))


# === emulator only


async def test_lost_answer_to_deactivate_is_retried(emulator_cloud: Cloud) -> None:
    """The deactivate takes effect, its answer is lost; the client sends it again and gets 204 (idempotent). The
    server saw the request twice."""
    emu = emulator_cloud.emulator
    assert emu is not None
    img = await _active(emulator_cloud)
    emu.faults("KR1").lose_response.append(LostAnswer(op="deactivate", image_id=img.id))
    client = emulator_cloud.client()
    await client.deactivate_image(img.id)
    assert emu.faults("KR1").fired["lose_response_deactivate"] == 1
    assert emu.regions["KR1"].stats.requests["deactivate"] == 2
    assert client.requests.by_region()["KR1"]["deactivate"] == 2
    assert emu.store("KR1").images[img.id].status == "deactivated"
    emu.faults("KR1").lose_response.append(LostAnswer(op="reactivate", image_id=img.id))
    await client.reactivate_image(img.id)
    assert emu.regions["KR1"].stats.requests["reactivate"] == 2
    assert emu.store("KR1").images[img.id].status == "active"


async def test_roles(tmp_path: Path) -> None:
    """Glance's policy: the admin role (here without member) may act and still downloads a deactivated image; a
    reader-only user of the owner's project gets 403. (The emulator does not model an admin's view of other
    projects' images: on Glance an admin may act on any image.)"""
    owner = uuid.uuid4().hex
    users = {
        "owner": UserEntry("pw", (owner,)),
        "reader": UserEntry("pw", (owner,), roles=("reader",)),
        "root": UserEntry("pw", (owner,), roles=("admin",)),
    }
    async with (
        running_emulator(("KR1",), data_dir=tmp_path / "emu", users=users, download_rule=False) as emu,
        new_session() as session,
    ):
        cloud = Cloud("emulator", emu.identity_url, dict(emu.urls), session, emulator=emu)
        tokens = {}
        for name in users:
            auth = PasswordAuth(emu.identity_url, owner, name, Secret("pw"), retry=FAST_RETRY)
            tokens[name] = (await auth.token(session)).id.reveal()
        rec = emu.store("KR1").add_bytes(owner, DATA, {"visibility": "shared"})
        resp = await cloud.raw("POST", _action(rec.id), token=tokens["reader"], headers=JSON)
        assert resp.status == 403
        assert resp.json()["message"] == explained("You are not authorized to complete deactivate action.")
        resp = await cloud.raw("POST", _action(rec.id), token=tokens["root"])
        assert resp.status == 204
        assert rec.status == "deactivated"
        resp = await cloud.raw("GET", f"/v2/images/{rec.id}/file", token=tokens["owner"], headers=JSON)
        assert resp.status == 403
        resp = await cloud.raw("GET", f"/v2/images/{rec.id}/file", token=tokens["root"])
        assert (resp.status, resp.body) == (200, DATA)
