"""Contract: create, get, list (filters, sorting, pagination), update (JSON patch) and delete of images."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from pipeline.cloud.wire import JSON_PATCH
from pipeline.errors import (
    BadRequestError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    PayloadTooLargeError,
)

from .cloud import Cloud

# === create


PATCH_V20 = "application/openstack-images-v2.0-json-patch"
#: Glance's order of the core fields, after the custom properties (in insertion order).
CORE_ORDER = ["name", "disk_format", "container_format", "visibility", "size", "virtual_size", "status",
              "checksum", "protected", "min_ram", "min_disk", "owner", "os_hidden", "os_hash_algo",
              "os_hash_value", "id", "created_at", "updated_at", "tags", "self", "file",
              "schema"]  # fmt: skip


async def test_create_returns_queued_image_with_glance_fields(cloud: Cloud) -> None:
    """POST /v2/images answers 201 with the full image, queued, owned by the caller, with links."""
    resp = await cloud.raw("POST", "/v2/images", json=cloud.image_fields(name="new", os_distro="ubuntu"))
    assert resp.status == 201
    doc = resp.json()
    assert resp.headers["Location"] == f"{cloud.regions['KR1']}/v2/images/{doc['id']}"
    assert resp.headers["OpenStack-image-import-methods"] == "glance-direct"
    assert resp.headers["Content-Type"] == "application/json"
    assert doc["status"] == "queued"
    assert doc["owner"] == cloud.t1
    assert doc["os_distro"] == "ubuntu"
    assert doc["self"] == f"/v2/images/{doc['id']}"
    assert doc["file"] == f"/v2/images/{doc['id']}/file"
    assert doc["schema"] == "/v2/schemas/image"
    for key in ("size", "checksum", "os_hash_algo", "os_hash_value", "virtual_size"):
        assert doc[key] is None
    assert (doc["min_ram"], doc["min_disk"], doc["protected"], doc["os_hidden"]) == (0, 0, False, False)
    assert list(doc) == ["os_type", "os_distro", *CORE_ORDER]  # no locations, no direct_url


async def test_json_bodies_carry_raw_utf8(cloud: Cloud) -> None:
    """Glance serializes with ensure_ascii=False: non-ASCII names travel as UTF-8, not as \\u escapes."""
    resp = await cloud.raw("POST", "/v2/images", json=cloud.image_fields(name="한국어 이미지", tags=["태그"]))
    assert resp.status == 201
    assert "한국어 이미지".encode() in resp.body
    assert b"\\u" not in resp.body
    listing = await cloud.raw("GET", "/v2/images")
    assert "태그".encode() in listing.body


async def test_create_default_visibility(cloud: Cloud) -> None:
    """An image created without visibility is 'shared' in Glance 33; the NHN guide says 'private'."""
    img = await cloud.client().create_image(cloud.image_fields())
    assert img.visibility == ("private" if cloud.nhn_rules else "shared")


async def test_create_ignores_request_content_type(cloud: Cloud) -> None:
    """The request Content-Type is not checked: a JSON body sent as text/plain creates the image."""
    body = json.dumps(cloud.image_fields(name="plain")).encode()
    resp = await cloud.raw("POST", "/v2/images", data=body, headers={"Content-Type": "text/plain"})
    assert resp.status == 201
    assert resp.json()["name"] == "plain"


async def test_create_keeps_flags_and_long_values(cloud: Cloud) -> None:
    """protected and os_hidden may be set at create; a custom value of 64 KiB is accepted."""
    img = await cloud.client().create_image(cloud.image_fields(protected=True, os_hidden=True, note="n" * 65536))
    assert (img.protected, img.raw["os_hidden"], len(img.raw["note"])) == (True, True, 65536)
    await cloud.client().update_image(img.id, [{"op": "replace", "path": "/protected", "value": False}])


@pytest.mark.parametrize(
    ("body", "status", "match"),
    [
        (b"[1]", 500, "The server has either erred"),
        (b'"x"', 400, "Unexpected body type. Expected list/dict."),
        (b"{nope", 400, "Malformed JSON in request body."),
    ],
    ids=["array", "string", "malformed"],
)
async def test_create_body_must_be_an_object(cloud: Cloud, body: bytes, status: int, match: str) -> None:
    """A JSON string gives 400, malformed JSON 400, and a JSON array 500 (a Glance 33 bug)."""
    resp = await cloud.raw("POST", "/v2/images", data=body, headers={"Accept": "application/json"})
    assert resp.status == status
    assert resp.json()["message"].startswith(match)


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


@pytest.mark.parametrize(
    ("extra", "error", "match"),
    [
        ({"status": "active"}, ForbiddenError, "read-only"),
        ({"status": "x"}, BadRequestError, "'x' is not one of"),  # the schema is checked first
        ({"checksum": "abc"}, ForbiddenError, "read-only"),
        ({"size": 5}, ForbiddenError, "read-only"),
        ({"virtual_size": 5}, ForbiddenError, "read-only"),
        ({"created_at": "2020-01-01T00:00:00Z"}, ForbiddenError, "read-only"),
        ({"updated_at": "2020-01-01T00:00:00Z"}, ForbiddenError, "read-only"),
        ({"direct_url": "x"}, ForbiddenError, "read-only"),
        ({"self": "x"}, ForbiddenError, "read-only"),
        ({"stores": "x"}, ForbiddenError, "read-only"),
        ({"locations": []}, ForbiddenError, "reserved"),
        ({"location": "x"}, ForbiddenError, "reserved"),
        ({"deleted": "x"}, ForbiddenError, "reserved"),
        ({"deleted": True}, BadRequestError, "True is not of type 'string'"),
        ({"deleted_at": "x"}, ForbiddenError, "reserved"),
        ({"os_glance_import": "x"}, ForbiddenError, "reserved"),
        ({"owner": "someone-else"}, ForbiddenError, "not permitted to create images owned by"),
        ({"visibility": "public"}, ForbiddenError, "publicize_image"),
        ({"visibility": "bogus"}, BadRequestError, "'bogus' is not one of"),
        ({"disk_format": "bogus"}, BadRequestError, "is not one of"),
        ({"container_format": "bogus"}, BadRequestError, "is not one of"),
        ({"name": "n" * 256}, BadRequestError, "too long"),
        ({"min_ram": -1}, BadRequestError, "Cannot be a negative value"),
        ({"min_disk": "5"}, BadRequestError, "'5' is not of type 'integer'"),
        ({"protected": "yes"}, BadRequestError, "'yes' is not of type 'boolean'"),
        ({"os_distro": 5}, BadRequestError, "is not of type 'string'"),
        ({"k" * 256: "v"}, BadRequestError, "greater than 255"),
        ({"tags": ["x" * 256]}, BadRequestError, "too long"),
        ({"tags": "x"}, BadRequestError, "'x' is not of type 'array'"),
        ({"id": "not-a-uuid"}, BadRequestError, "'not-a-uuid' does not match"),
    ],
    ids=["status", "status-enum", "checksum", "size", "virtual_size", "created_at", "updated_at",
         "direct_url", "self", "stores", "locations", "location", "deleted", "deleted-bool", "deleted_at",
         "os_glance", "owner", "public", "visibility-enum", "disk_format", "container_format", "long-name",
         "neg-min-ram", "str-min-disk", "str-protected", "int-prop", "long-key", "long-tag", "tags-string",
         "bad-id"],
)  # fmt: skip
async def test_create_rejects_invalid_fields(cloud: Cloud, extra: dict[str, Any], error: type, match: str) -> None:
    """Read-only, reserved and invalid fields are refused with Glance's status and message."""
    with pytest.raises(error, match=match):
        await cloud.client().create_image({**cloud.image_fields(), **extra})


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
    with pytest.raises(NotFoundError, match=f"Failed to find image {img.id} to delete"):
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
        ({"path": "/name", "value": "x"}, BadRequestError, "Unable to find `op`"),
        ({"op": "add", "value": "x"}, BadRequestError, "Unable to find 'path'"),
        ({"op": "add", "path": "name", "value": "x"}, BadRequestError, 'does not start with "/"'),
        ({"op": "add", "path": "/a/", "value": "x"}, BadRequestError, 'end with "/"'),
        ({"op": "add", "path": "/a~2", "value": "x"}, BadRequestError, 'contains "~" not part of'),
        ({"op": "add", "path": "/a/b", "value": "x"}, BadRequestError, "Invalid JSON pointer"),
        ({"op": "add", "path": "/a"}, BadRequestError, 'requires a member named "value"'),
        ({"op": "replace", "path": "/status", "value": "active"}, ForbiddenError, "read-only"),
        ({"op": "replace", "path": "/checksum", "value": "x"}, ForbiddenError, "read-only"),
        ({"op": "replace", "path": "/size", "value": 1}, ForbiddenError, "read-only"),
        ({"op": "replace", "path": "/id", "value": "x"}, ForbiddenError, "read-only"),
        ({"op": "replace", "path": "/created_at", "value": "x"}, ForbiddenError, "read-only"),
        ({"op": "replace", "path": "/direct_url", "value": "x"}, ForbiddenError, "read-only"),
        ({"op": "replace", "path": "/os_hash_algo", "value": "x"}, ForbiddenError, "read-only"),
        ({"op": "replace", "path": "/os_hash_value", "value": "x"}, ForbiddenError, "read-only"),
        ({"op": "replace", "path": "/owner", "value": "x"}, ForbiddenError, "Owner can't be updated"),
        ({"op": "add", "path": "/os_glance_x", "value": "x"}, ForbiddenError, "reserved"),
        ({"op": "add", "path": "/deleted", "value": "x"}, ForbiddenError, "reserved"),
        ({"op": "replace", "path": "/locations", "value": []}, ForbiddenError, "Cannot set locations"),
        ({"op": "add", "path": "/locations/-", "value": {"url": "http://x", "metadata": {}}}, ForbiddenError,
         "not allowed to add locations"),
        ({"op": "remove", "path": "/locations/0"}, ForbiddenError, "delete_image_location"),
        ({"op": "remove", "path": "/name"}, ForbiddenError, "Property name may not be removed"),
        ({"op": "remove", "path": "/tags"}, ForbiddenError, "Property tags may not be removed"),
        ({"op": "replace", "path": "/visibility", "value": "public"}, ForbiddenError, "publicize_image"),
        ({"op": "replace", "path": "/min_ram", "value": -5}, BadRequestError, "Cannot be a negative value"),
        ({"op": "add", "path": "/custom", "value": 5}, BadRequestError, "not of type 'string'"),
        ({"op": "add", "path": "/protected", "value": None}, BadRequestError, "None is not of type"),
    ],
    ids=["replace-missing", "remove-missing", "op-test", "tags-dash", "no-op", "no-path", "no-slash",
         "trailing-slash", "bad-escape", "deep", "no-value", "status", "checksum", "size", "id", "created_at",
         "direct_url", "os_hash_algo", "os_hash_value", "owner", "os_glance", "deleted", "locations-empty",
         "locations-add", "locations-remove", "remove-name", "remove-tags", "public", "neg-min-ram",
         "non-string", "null-protected"],
)  # fmt: skip
async def test_patch_errors(cloud: Cloud, op: dict[str, Any], error: type, match: str) -> None:
    """Bad patches get Glance's status codes: 409 missing property, 400 bad op/pointer/type, 403 read-only."""
    client = cloud.client()
    img = await client.create_image(cloud.image_fields())
    with pytest.raises(error, match=match):
        await client.update_image(img.id, [op])


async def test_patch_legacy_add_on_existing_property_is_409(cloud: Cloud) -> None:
    """In the legacy v2.0 dialect 'add' does not replace: an existing property gives 409."""
    img = await cloud.client().create_image(cloud.image_fields(os_distro="ubuntu"))
    resp = await cloud.raw(
        "PATCH", f"/v2/images/{img.id}", data=json.dumps([{"add": "/os_distro", "value": "x"}]).encode(),
        headers={"Content-Type": PATCH_V20, "Accept": "application/json"},
    )  # fmt: skip
    assert resp.status == 409
    assert "Property os_distro already present." in resp.json()["message"]


async def test_patch_is_checked_before_the_image_is_looked_up(cloud: Cloud) -> None:
    """A malformed or read-only patch is refused (400/403) even for an image the caller cannot see."""
    hidden = await cloud.client(cloud.t2).create_image(cloud.image_fields(visibility="private"))
    with pytest.raises(ForbiddenError, match="read-only"):
        await cloud.client().update_image(hidden.id, [{"op": "replace", "path": "/status", "value": "x"}])
    with pytest.raises(NotFoundError, match="No image found"):
        await cloud.client().update_image(hidden.id, [{"op": "add", "path": "/x", "value": "y"}])


async def test_patch_pointer_is_decoded_and_trimmed(cloud: Cloud) -> None:
    """JSON-pointer escapes ~1 and ~0 are decoded, and each path part is stripped of spaces."""
    img = await cloud.client().create_image(cloud.image_fields())
    img = await cloud.client().update_image(img.id, [
        {"op": "add", "path": "/a~1b~0c", "value": "1"},
        {"op": "add", "path": "/ spaced ", "value": "2"},
    ])  # fmt: skip
    assert (img.raw["a/b~c"], img.raw["spaced"]) == ("1", "2")


async def test_patch_add_owner_gives_the_image_away(cloud: Cloud) -> None:
    """Glance 33 bug: 'add /owner' (unlike replace) is saved, then answered 403; the new owner has it."""
    img = await cloud.client().create_image(cloud.image_fields())
    same = await cloud.client().update_image(img.id, [{"op": "add", "path": "/owner", "value": cloud.t1}])
    assert same.owner == cloud.t1
    with pytest.raises(ForbiddenError, match="not visible"):
        await cloud.client().update_image(img.id, [{"op": "add", "path": "/owner", "value": cloud.t2}])
    with pytest.raises(NotFoundError):
        await cloud.client().get_image(img.id)
    assert (await cloud.client(cloud.t2).get_image(img.id)).owner == cloud.t2


async def test_patch_needs_patch_media_type(cloud: Cloud) -> None:
    """PATCH with application/json gives 415 and an Accept-Patch header naming both dialects."""
    img = await cloud.client().create_image(cloud.image_fields())
    resp = await cloud.raw("PATCH", f"/v2/images/{img.id}", json=[], headers={"Accept": "application/json"})
    assert resp.status == 415
    assert resp.headers["Accept-Patch"] == f"application/openstack-images-v2.0-json-patch, {JSON_PATCH}"
    assert resp.json()["message"] == (
        "The request media type application/json is not supported by this server.\n<br /><br />\n"
        "Image PATCH expects Content-Type one of: application/openstack-images-v2.0-json-patch, "
        f"{JSON_PATCH}"
    )


async def test_patch_visibility_and_member_forbidden(cloud: Cloud) -> None:
    """The owner moves visibility between private and shared; a member may not patch (403)."""
    owner = cloud.client(cloud.t1)
    img = await owner.create_image(cloud.image_fields(visibility="private"))
    img = await owner.update_image(img.id, [{"op": "replace", "path": "/visibility", "value": "shared"}])
    assert img.visibility == "shared"
    await owner.add_member(img.id, cloud.t2)
    with pytest.raises(ForbiddenError, match="modify_image"):
        await cloud.client(cloud.t2).update_image(img.id, [{"op": "add", "path": "/x", "value": "y"}])
    # back to private: the members stay, but the member API refuses to show them
    img = await owner.update_image(img.id, [{"op": "replace", "path": "/visibility", "value": "private"}])
    assert img.visibility == "private"
    with pytest.raises(ForbiddenError, match="Only shared images have members"):
        await owner.list_members(img.id)
    img = await owner.update_image(img.id, [{"op": "replace", "path": "/visibility", "value": "shared"}])
    assert [m.member_id for m in await owner.list_members(img.id)] == [cloud.t2]


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
    both = [
        {"op": "replace", "path": "/protected", "value": False},
        {"op": "add", "path": "/x", "value": "z"},
    ]
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
