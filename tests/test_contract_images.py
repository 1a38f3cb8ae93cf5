"""Contract: create, get, list (filters, sorting, pagination), update (JSON patch) and delete of images."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from pipeline.errors import (
    BadRequestError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from pipeline.glance.client import JSON_PATCH

from .cloud import Cloud

# === create


async def test_create_returns_queued_image_with_glance_fields(cloud: Cloud) -> None:
    """POST /v2/images answers 201 with the full image, queued, owned by the caller, with links."""
    resp = await cloud.raw("POST", "/v2/images", json=cloud.image_fields(name="new", os_distro="ubuntu"))
    assert resp.status == 201
    doc = resp.json()
    assert resp.headers["Location"].endswith(f"/v2/images/{doc['id']}")
    assert doc["status"] == "queued"
    assert doc["owner"] == cloud.t1
    assert doc["os_distro"] == "ubuntu"
    assert doc["self"] == f"/v2/images/{doc['id']}"
    assert doc["file"] == f"/v2/images/{doc['id']}/file"
    assert doc["schema"] == "/v2/schemas/image"
    for key in ("size", "checksum", "os_hash_algo", "os_hash_value", "virtual_size"):
        assert doc[key] is None
    assert (doc["min_ram"], doc["min_disk"], doc["protected"], doc["os_hidden"]) == (0, 0, False, False)


async def test_create_accepts_client_chosen_id_once(cloud: Cloud) -> None:
    """A client-chosen UUID is kept; the same id again, or a deleted image's id, gives 409."""
    client = cloud.client()
    image_id = str(uuid.uuid4())
    img = await client.create_image(cloud.image_fields(id=image_id))
    assert img.id == image_id
    with pytest.raises(ConflictError, match="already exists"):
        await client.create_image(cloud.image_fields(id=image_id))
    await client.delete_image(image_id)
    with pytest.raises(ConflictError, match="already exists"):
        await client.create_image(cloud.image_fields(id=image_id))


async def test_same_id_may_exist_in_another_region(cloud: Cloud) -> None:
    """Regions are independent: one UUID can be created in KR1 and KR2, and is 404 in JP1."""
    image_id = str(uuid.uuid4())
    await cloud.client(region="KR1").create_image(cloud.image_fields(id=image_id))
    await cloud.client(region="KR2").create_image(cloud.image_fields(id=image_id))
    with pytest.raises(NotFoundError):
        await cloud.client(region="JP1").get_image(image_id)


async def test_create_deduplicates_tags(cloud: Cloud) -> None:
    """Tags are a set: duplicates disappear (their order is not guaranteed)."""
    img = await cloud.client().create_image(cloud.image_fields(tags=["t1", "t2", "t1"]))
    assert sorted(img.tags) == ["t1", "t2"]


async def test_create_malformed_json_is_400(cloud: Cloud) -> None:
    """A body that is not JSON gives 400 'Malformed JSON in request body.'"""
    resp = await cloud.raw("POST", "/v2/images", data=b"{nope", headers={"Accept": "application/json"})
    assert resp.status == 400
    assert "Malformed JSON" in resp.json()["message"]


@pytest.mark.parametrize(
    ("extra", "error", "match"),
    [
        ({"status": "active"}, ForbiddenError, "read-only"),
        ({"checksum": "abc"}, ForbiddenError, "read-only"),
        ({"size": 5}, ForbiddenError, "read-only"),
        ({"created_at": "2020-01-01T00:00:00Z"}, ForbiddenError, "read-only"),
        ({"locations": []}, ForbiddenError, "reserved"),
        ({"deleted_at": "x"}, ForbiddenError, "reserved"),
        ({"os_glance_import": "x"}, ForbiddenError, "reserved"),
        ({"owner": "someone-else"}, ForbiddenError, "not permitted to create images owned by"),
        ({"visibility": "public"}, ForbiddenError, "publicize_image"),
        ({"disk_format": "bogus"}, BadRequestError, "is not one of"),
        ({"container_format": "bogus"}, BadRequestError, "is not one of"),
        ({"name": "n" * 256}, BadRequestError, "too long"),
        ({"min_ram": -1}, BadRequestError, "Cannot be a negative value"),
        ({"os_distro": 5}, BadRequestError, "is not of type 'string'"),
        ({"k" * 256: "v"}, BadRequestError, "greater than 255"),
        ({"tags": ["x" * 256]}, BadRequestError, "too long"),
    ],
    ids=["status", "checksum", "size", "created_at", "locations", "deleted_at", "os_glance", "owner",
         "public", "disk_format", "container_format", "long-name", "neg-min-ram", "int-prop", "long-key",
         "long-tag"],
)  # fmt: skip
async def test_create_rejects_invalid_fields(cloud: Cloud, extra: dict[str, Any], error: type, match: str) -> None:
    """Read-only, reserved and invalid fields are refused with Glance's status and message."""
    with pytest.raises(error, match=match):
        await cloud.client().create_image(cloud.image_fields(**extra))


async def test_create_ignores_hash_fields(cloud: Cloud) -> None:
    """Glance 33 quirk: os_hash_algo/os_hash_value at create are silently ignored (201, null)."""
    img = await cloud.client().create_image(cloud.image_fields(os_hash_value="abc", os_hash_algo="md5"))
    assert img.os_hash_value is None
    assert img.os_hash_algo is None


async def test_create_quota_of_128_properties_and_tags(cloud: Cloud) -> None:
    """128 custom properties and 128 tags pass; 129 of either gives 413."""
    base = cloud.image_fields()
    room = 128 - sum(1 for k in base if k not in ("name", "disk_format", "container_format"))
    props = {f"p{i}": "v" for i in range(room)}
    await cloud.client().create_image({**base, **props})
    with pytest.raises(PayloadTooLargeError, match="Maximum: 128"):
        await cloud.client().create_image({**base, **props, "one_more": "v"})
    await cloud.client().create_image({**base, "tags": [f"t{i}" for i in range(128)]})
    with pytest.raises(PayloadTooLargeError, match="Maximum: 128"):
        await cloud.client().create_image({**base, "tags": [f"t{i}" for i in range(129)]})


async def test_nhn_requires_name_and_os_type(cloud: Cloud) -> None:
    """NHN guide: name and os_type are required on create; plain Glance accepts an empty body."""
    resp = await cloud.raw("POST", "/v2/images", json={"name": "only-name"}, headers={"Accept": "application/json"})
    if cloud.nhn_rules:
        assert resp.status == 400
        assert "os_type" in resp.json()["message"]
    else:
        assert resp.status == 201


# === get and delete


async def test_get_unknown_or_invisible_image_is_404(cloud: Cloud) -> None:
    """An unknown id, a non-UUID id and another tenant's private image all give 404."""
    img = await cloud.client(cloud.t1).create_image(cloud.image_fields(visibility="private"))
    for client, image_id in (
        (cloud.client(cloud.t1), str(uuid.uuid4())),
        (cloud.client(cloud.t1), "not-a-uuid"),
        (cloud.client(cloud.t2), img.id),
    ):
        with pytest.raises(NotFoundError, match="No image found"):
            await client.get_image(image_id)


async def test_delete_rules(cloud: Cloud) -> None:
    """Delete gives 204; again 404; a non-owner gets 404; a protected image gives 403 until unprotected."""
    owner, other = cloud.client(cloud.t1), cloud.client(cloud.t2)
    img = await owner.create_image(cloud.image_fields(protected=True))
    with pytest.raises(NotFoundError):
        await other.delete_image(img.id)
    with pytest.raises(ForbiddenError, match="protected"):
        await owner.delete_image(img.id)
    await owner.update_image(img.id, [{"op": "replace", "path": "/protected", "value": False}])
    await owner.delete_image(img.id)
    with pytest.raises(NotFoundError):
        await owner.delete_image(img.id)
    with pytest.raises(NotFoundError):
        await owner.get_image(img.id)


# === update


async def test_patch_add_replace_remove(cloud: Cloud) -> None:
    """JSON patch adds, replaces and removes custom properties and core attributes."""
    client = cloud.client()
    img = await client.create_image(cloud.image_fields(os_distro="ubuntu"))
    img = await client.update_image(img.id, [
        {"op": "add", "path": "/hw_disk_bus", "value": "virtio"},
        {"op": "replace", "path": "/os_distro", "value": "debian"},
        {"op": "add", "path": "/os_distro", "value": "centos"},
        {"op": "replace", "path": "/min_disk", "value": 20},
        {"op": "replace", "path": "/name", "value": "renamed"},
    ])  # fmt: skip
    assert img.raw["hw_disk_bus"] == "virtio"
    assert img.raw["os_distro"] == "centos"  # add on an existing key replaces
    assert img.raw["min_disk"] == 20
    assert img.name == "renamed"
    img = await client.update_image(img.id, [{"op": "remove", "path": "/hw_disk_bus"}])
    assert "hw_disk_bus" not in img.raw


async def test_patch_legacy_v20_dialect(cloud: Cloud) -> None:
    """The legacy v2.0 patch media type ([{"add": "/x", "value": ...}]) also works."""
    img = await cloud.client().create_image(cloud.image_fields())
    resp = await cloud.raw(
        "PATCH", f"/v2/images/{img.id}", data=json.dumps([{"add": "/legacy", "value": "yes"}]).encode(),
        headers={"Content-Type": "application/openstack-images-v2.0-json-patch"},
    )  # fmt: skip
    assert resp.status == 200
    assert resp.json()["legacy"] == "yes"


@pytest.mark.parametrize(
    ("op", "error", "match"),
    [
        ({"op": "replace", "path": "/nope", "value": "x"}, ConflictError, "does not exist"),
        ({"op": "remove", "path": "/nope"}, ConflictError, "does not exist"),
        ({"op": "test", "path": "/name", "value": "x"}, BadRequestError, "Invalid operation"),
        ({"op": "add", "path": "/tags/-", "value": "x"}, BadRequestError, "Invalid JSON pointer"),
        ({"op": "replace", "path": "/status", "value": "active"}, ForbiddenError, "read-only"),
        ({"op": "replace", "path": "/checksum", "value": "x"}, ForbiddenError, "read-only"),
        ({"op": "replace", "path": "/os_hash_value", "value": "x"}, ForbiddenError, "read-only"),
        ({"op": "replace", "path": "/owner", "value": "x"}, ForbiddenError, "Owner can't be updated"),
        ({"op": "add", "path": "/os_glance_x", "value": "x"}, ForbiddenError, "reserved"),
        ({"op": "replace", "path": "/visibility", "value": "public"}, ForbiddenError, "publicize_image"),
        ({"op": "add", "path": "/custom", "value": 5}, BadRequestError, "not of type 'string'"),
    ],
    ids=["replace-missing", "remove-missing", "op-test", "tags-dash", "status", "checksum", "os_hash_value",
         "owner", "os_glance", "public", "non-string"],
)  # fmt: skip
async def test_patch_errors(cloud: Cloud, op: dict[str, Any], error: type, match: str) -> None:
    """Bad patches get Glance's status codes: 409 missing property, 400 bad op/pointer/type, 403 read-only."""
    client = cloud.client()
    img = await client.create_image(cloud.image_fields())
    with pytest.raises(error, match=match):
        await client.update_image(img.id, [op])


async def test_patch_needs_patch_media_type(cloud: Cloud) -> None:
    """PATCH with application/json gives 415 and an Accept-Patch header naming both dialects."""
    img = await cloud.client().create_image(cloud.image_fields())
    resp = await cloud.raw("PATCH", f"/v2/images/{img.id}", json=[], headers={"Accept": "application/json"})
    assert resp.status == 415
    assert JSON_PATCH in resp.headers["Accept-Patch"]


async def test_patch_visibility_and_member_forbidden(cloud: Cloud) -> None:
    """The owner moves visibility between private and shared; a member may not patch (403)."""
    owner = cloud.client(cloud.t1)
    img = await owner.create_image(cloud.image_fields(visibility="private"))
    img = await owner.update_image(img.id, [{"op": "replace", "path": "/visibility", "value": "shared"}])
    assert img.visibility == "shared"
    await owner.add_member(img.id, cloud.t2)
    with pytest.raises(ForbiddenError, match="modify_image"):
        await cloud.client(cloud.t2).update_image(img.id, [{"op": "add", "path": "/x", "value": "y"}])


async def test_patch_tags_replaces_the_set(cloud: Cloud) -> None:
    """Replacing /tags with an array sets the whole tag set, non-ASCII tags intact."""
    client = cloud.client()
    img = await client.create_image(cloud.image_fields(tags=["old"]))
    img = await client.set_tags(img.id, ["한글", "new"])
    assert sorted(img.tags) == sorted(["한글", "new"])


async def test_protected_image_modification(cloud: Cloud) -> None:
    """NHN guide: a protected image cannot be modified (403) until unprotected; Glance allows it."""
    client = cloud.client()
    img = await client.create_image(cloud.image_fields(protected=True))
    op = [{"op": "add", "path": "/x", "value": "y"}]
    if cloud.nhn_rules:
        with pytest.raises(ForbiddenError, match="protected"):
            await client.update_image(img.id, op)
    else:
        await client.update_image(img.id, op)
    both = [{"op": "replace", "path": "/protected", "value": False}, {"op": "add", "path": "/x", "value": "z"}]
    img = await client.update_image(img.id, both)
    assert img.raw["x"] == "z"
    assert not img.protected


async def test_disk_format_only_changes_while_queued(cloud: Cloud) -> None:
    """disk_format may be replaced on a queued image, not on an active one (403)."""
    client = cloud.client()
    img = await client.create_image(cloud.image_fields())
    await client.update_image(img.id, [{"op": "replace", "path": "/disk_format", "value": "qcow2"}])
    await client.update_image(img.id, [{"op": "replace", "path": "/disk_format", "value": "raw"}])
    await client.upload_image(img.id, _body(b"x" * 10), size=10)
    with pytest.raises(ForbiddenError, match="queued"):
        await client.update_image(img.id, [{"op": "replace", "path": "/disk_format", "value": "qcow2"}])


async def _body(data: bytes):  # type: ignore[no-untyped-def]
    yield data


# === list


async def _make(cloud: Cloud, n: int, **fields: Any) -> list[str]:
    client = cloud.client()
    return [(await client.create_image(cloud.image_fields(name=f"img-{i}", **fields))).id for i in range(n)]


async def test_list_follows_next_across_pages(cloud: Cloud) -> None:
    """Listing with a small page size follows 'next' and returns every image exactly once."""
    ids = await _make(cloud, 7)
    listed = [i.id async for i in cloud.client().list_images(page_size=3)]
    assert sorted(listed) == sorted(ids)


async def test_list_page_shape_and_next(cloud: Cloud) -> None:
    """A full page carries 'next' with the last id as marker; the last partial page has none."""
    await _make(cloud, 3)
    page = (await cloud.raw("GET", "/v2/images?limit=2")).json()
    assert len(page["images"]) == 2
    assert page["first"] == "/v2/images?limit=2"
    assert page["schema"] == "/v2/schemas/images"
    assert page["next"].endswith(f"marker={page['images'][-1]['id']}")
    rest = (await cloud.raw("GET", page["next"])).json()
    assert len(rest["images"]) == 1
    assert "next" not in rest


async def test_list_default_order_is_newest_first(cloud: Cloud) -> None:
    """The default sort is created_at descending; sort_key=name asc sorts by name."""
    ids = await _make(cloud, 3)
    listed = [i.id async for i in cloud.client().list_images()]
    assert listed == list(reversed(ids))
    names = [i.name async for i in cloud.client().list_images(sort_key="name", sort_dir="asc")]
    assert names == ["img-0", "img-1", "img-2"]


async def test_list_filters(cloud: Cloud) -> None:
    """name, status, size range, tag (ANDed), property and visibility filters narrow the list."""
    client = cloud.client()
    a = await client.create_image(cloud.image_fields(name="a", tags=["x", "y"], os_distro="ubuntu"))
    b = await client.create_image(cloud.image_fields(name="b", tags=["x"], visibility="shared"))
    await client.upload_image(b.id, _body(b"0123456789"), size=10)

    async def ids(**filters: Any) -> set[str]:
        return {i.id async for i in client.list_images(filters)}

    assert await ids(name="a") == {a.id}
    assert await ids(name=f"in:a,b") == {a.id, b.id}
    assert await ids(status="active") == {b.id}
    assert await ids(status="bogus") == set()
    assert await ids(size_min=5, size_max=10) == {b.id}
    assert await ids(size_min=11) == set()
    assert await ids(tag=["x", "y"]) == {a.id}
    assert await ids(tag="x") == {a.id, b.id}
    assert await ids(os_distro="ubuntu") == {a.id}
    assert await ids(no_such_property="z") == set()
    assert await ids(visibility="shared") == {b.id}
    assert await ids(owner=cloud.t1) == {a.id, b.id}
    assert await ids(id=f"in:{a.id}") == {a.id}


@pytest.mark.parametrize(
    ("query", "match"),
    [
        ("limit=abc", "must be an integer"),
        ("limit=-1", "must be positive"),
        ("marker=" + "0" * 8 + "-0000-0000-0000-" + "0" * 12, "No image found"),
        ("sort_key=os_distro", "Invalid sort key"),
        ("sort_dir=sideways", "Invalid sort direction"),
        ("sort=name:asc&sort_key=name", "cannot be combined"),
        ("visibility=bogus", "Invalid visibility"),
        ("size_min=abc", "non-numeric"),
        ("created_at=gte:yesterday", "ISO 8601"),
    ],
    ids=["limit-nan", "limit-neg", "marker", "sort-key", "sort-dir", "sort-mix", "visibility", "size", "date"],
)
async def test_list_bad_queries_are_400(cloud: Cloud, query: str, match: str) -> None:
    """Invalid list parameters give 400 with Glance's message."""
    resp = await cloud.raw("GET", f"/v2/images?{query}", headers={"Accept": "application/json"})
    assert resp.status == 400, resp.body
    assert match in resp.json()["message"]


async def test_list_hides_other_tenants_and_pending_shares(cloud: Cloud) -> None:
    """Tenant 2 sees tenant 1's shared image only after accepting; pending shows with member_status."""
    owner, member = cloud.client(cloud.t1), cloud.client(cloud.t2)
    await owner.create_image(cloud.image_fields(name="private", visibility="private"))
    shared = await owner.create_image(cloud.image_fields(name="shared", visibility="shared"))
    await owner.add_member(shared.id, cloud.t2)
    assert [i.id async for i in member.list_images()] == []
    pending = [i.id async for i in member.list_images({"member_status": "pending"})]
    assert pending == [shared.id]
    await member.update_member_status(shared.id, cloud.t2, "accepted")
    assert [i.id async for i in member.list_images()] == [shared.id]
    await member.update_member_status(shared.id, cloud.t2, "rejected")
    assert [i.id async for i in member.list_images()] == []
    assert [i.id async for i in member.list_images({"member_status": "rejected"})] == [shared.id]
