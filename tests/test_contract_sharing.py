"""Contract: tags, members (sharing between tenants) and the JSON schemas."""

from __future__ import annotations

import pytest

from pipeline.errors import (
    BadRequestError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    PayloadTooLargeError,
)

from .cloud import Cloud

# === tags


async def test_tag_add_is_idempotent_and_delete_removes(cloud: Cloud) -> None:
    """PUT tag gives 204 twice without duplicating; DELETE removes it; deleting again is 404."""
    client = cloud.client()
    img = await client.create_image(cloud.image_fields())
    await client.add_tag(img.id, "golden")
    await client.add_tag(img.id, "golden")
    assert (await client.get_image(img.id)).tags == ["golden"]
    await client.delete_tag(img.id, "golden")
    assert (await client.get_image(img.id)).tags == []
    with pytest.raises(NotFoundError):
        await client.delete_tag(img.id, "golden")


async def test_tag_length_limit(cloud: Cloud) -> None:
    """A 255-character tag is accepted, 256 characters give 400."""
    client = cloud.client()
    img = await client.create_image(cloud.image_fields())
    await client.add_tag(img.id, "a" * 255)
    with pytest.raises(BadRequestError, match="too long"):
        await client.add_tag(img.id, "b" * 256)


async def test_leading_underscore_tag(cloud: Cloud) -> None:
    """NHN guide: tags starting with _ are not allowed (400); plain Glance accepts them."""
    client = cloud.client()
    img = await client.create_image(cloud.image_fields())
    if cloud.nhn_rules:
        with pytest.raises(BadRequestError, match="_"):
            await client.add_tag(img.id, "_internal")
    else:
        await client.add_tag(img.id, "_internal")
        assert "_internal" in (await client.get_image(img.id)).tags


async def test_non_ascii_tag_through_client_arrives_intact(cloud: Cloud) -> None:
    """The client adds non-ASCII tags via PATCH /tags, so they are stored correctly."""
    client = cloud.client()
    img = await client.create_image(cloud.image_fields(tags=["keep"]))
    await client.add_tag(img.id, "한글")
    assert sorted((await client.get_image(img.id)).tags) == sorted(["keep", "한글"])
    await client.delete_tag(img.id, "한글")
    assert (await client.get_image(img.id)).tags == ["keep"]


async def test_non_ascii_tag_in_url_path_is_mis_decoded(cloud: Cloud) -> None:
    """Glance quirk: a non-ASCII tag in the URL path is stored as its UTF-8 bytes read as latin-1."""
    img = await cloud.client().create_image(cloud.image_fields())
    resp = await cloud.raw("PUT", f"/v2/images/{img.id}/tags/%ED%95%9C%EA%B8%80")
    assert resp.status == 204
    tags = (await cloud.client().get_image(img.id)).tags
    assert tags == ["한글".encode().decode("latin-1")]


async def test_tag_on_missing_image_is_404(cloud: Cloud) -> None:
    """Adding a tag to an unknown image gives 404 'Image <id> not found.'"""
    with pytest.raises(NotFoundError, match="Image 7c2e1f0a-0000-4000-8000-000000000000 not found"):
        await cloud.client().add_tag("7c2e1f0a-0000-4000-8000-000000000000", "x")


async def test_tag_quota(cloud: Cloud) -> None:
    """An image may carry 128 tags; the 129th via PUT gives 413, as does a PATCH /tags with 129."""
    client = cloud.client()
    img = await client.create_image(cloud.image_fields(tags=[f"t{i}" for i in range(128)]))
    await client.add_tag(img.id, "t0")  # already there: idempotent, not over quota
    with pytest.raises(PayloadTooLargeError, match=f"Image tag limit exceeded for image {img.id}"):
        await client.add_tag(img.id, "one-more")
    with pytest.raises(PayloadTooLargeError, match="Attempted: 129, Maximum: 128"):
        await client.set_tags(img.id, [f"u{i}" for i in range(129)])


# === members


async def shared_image(cloud: Cloud) -> str:
    img = await cloud.client(cloud.t1).create_image(cloud.image_fields(visibility="shared"))
    return img.id


async def test_member_lifecycle(cloud: Cloud) -> None:
    """Owner adds a member (pending), lists and gets it; the member accepts; the owner deletes it."""
    owner, member = cloud.client(cloud.t1), cloud.client(cloud.t2)
    image_id = await shared_image(cloud)
    added = await owner.add_member(image_id, cloud.t2)
    assert (added.member_id, added.image_id, added.status) == (cloud.t2, image_id, "pending")
    assert [m.member_id for m in await owner.list_members(image_id)] == [cloud.t2]
    assert (await owner.get_member(image_id, cloud.t2)).status == "pending"
    accepted = await member.update_member_status(image_id, cloud.t2, "accepted")
    assert accepted.status == "accepted"
    await owner.delete_member(image_id, cloud.t2)
    assert await owner.list_members(image_id) == []
    with pytest.raises(NotFoundError):
        await owner.delete_member(image_id, cloud.t2)
    with pytest.raises(NotFoundError):
        await member.get_image(image_id)


async def test_member_raw_shapes(cloud: Cloud) -> None:
    """POST member answers 200 (not 201) with the member object; the list has a members schema."""
    image_id = await shared_image(cloud)
    resp = await cloud.raw("POST", f"/v2/images/{image_id}/members", json={"member": cloud.t2})
    assert resp.status == 200
    assert resp.json()["schema"] == "/v2/schemas/member"
    listing = await cloud.raw("GET", f"/v2/images/{image_id}/members")
    assert listing.json()["schema"] == "/v2/schemas/members"


async def test_member_id_is_not_validated(cloud: Cloud) -> None:
    """Any member id is accepted, even the owner's own; a JSON number is echoed, then listed as text."""
    image_id = await shared_image(cloud)
    owner = cloud.client(cloud.t1)
    assert (await owner.add_member(image_id, cloud.t1)).member_id == cloud.t1
    assert (await owner.add_member(image_id, "not-a-project")).status == "pending"
    resp = await cloud.raw("POST", f"/v2/images/{image_id}/members", json={"member": 5})
    assert (resp.status, resp.json()["member_id"]) == (200, 5)
    listed = sorted(m.member_id for m in await owner.list_members(image_id))
    assert listed == sorted([cloud.t1, "not-a-project", "5"])


async def test_member_errors(cloud: Cloud) -> None:
    """Duplicate member 409; private image 403; missing 'member' 400; unknown member 404."""
    owner = cloud.client(cloud.t1)
    image_id = await shared_image(cloud)
    await owner.add_member(image_id, cloud.t2)
    with pytest.raises(ConflictError, match="duplicated"):
        await owner.add_member(image_id, cloud.t2)
    private = await owner.create_image(cloud.image_fields(visibility="private"))
    with pytest.raises(ForbiddenError, match="Not allowed to create members"):
        await owner.add_member(private.id, cloud.t2)
    with pytest.raises(ForbiddenError, match="Only shared images have members"):
        await owner.list_members(private.id)
    resp = await cloud.raw("POST", f"/v2/images/{image_id}/members", json={}, headers={"Accept": "application/json"})
    assert resp.status == 400
    assert "Member to be added not specified" in resp.json()["message"]
    with pytest.raises(NotFoundError, match="not found in the member list"):
        await owner.get_member(image_id, cloud.t3)


async def test_only_the_member_changes_its_status(cloud: Cloud) -> None:
    """The owner cannot accept for the member (403); a bad status value gives 400; rejected can go back."""
    owner, member = cloud.client(cloud.t1), cloud.client(cloud.t2)
    image_id = await shared_image(cloud)
    await owner.add_member(image_id, cloud.t2)
    with pytest.raises(ForbiddenError, match="modify_member"):
        await owner.update_member_status(image_id, cloud.t2, "accepted")
    with pytest.raises(BadRequestError, match="Status must be"):
        await member.update_member_status(image_id, cloud.t2, "maybe")
    await member.update_member_status(image_id, cloud.t2, "rejected")
    assert (await member.update_member_status(image_id, cloud.t2, "accepted")).status == "accepted"


async def test_member_view_is_limited_to_itself(cloud: Cloud) -> None:
    """A member lists only its own entry, cannot see other members (404), add (403) or delete (403)."""
    owner, member = cloud.client(cloud.t1), cloud.client(cloud.t2)
    image_id = await shared_image(cloud)
    await owner.add_member(image_id, cloud.t2)
    await owner.add_member(image_id, cloud.t3)
    assert [m.member_id for m in await member.list_members(image_id)] == [cloud.t2]
    with pytest.raises(NotFoundError):
        await member.get_member(image_id, cloud.t3)
    with pytest.raises(ForbiddenError, match="add_member"):
        await member.add_member(image_id, "someone")
    with pytest.raises(ForbiddenError, match="delete_member"):
        await member.delete_member(image_id, cloud.t2)
    with pytest.raises(ForbiddenError, match="delete_image"):
        await member.delete_image(image_id)


# === schemas


@pytest.mark.parametrize("name", ["image", "images", "member", "members"])
async def test_schemas_are_served(cloud: Cloud, name: str) -> None:
    """Each /v2/schemas/{name} document is a JSON schema with that name and properties."""
    schema = await cloud.client().get_schema(name)
    assert schema["name"] == name
    assert isinstance(schema["properties"], dict)


async def test_schemas_match_glance_33(cloud: Cloud) -> None:
    """The schemas are Glance 33's own documents (property order, texts, patterns, links)."""
    client = cloud.client()
    image = await client.get_schema("image")
    assert list(image["properties"])[:4] == ["id", "name", "status", "visibility"]
    assert image["properties"]["locations"]["items"]["required"] == ["url", "metadata"]
    assert image["properties"]["stores"]["description"].startswith("Store in which image data resides.  Only")
    assert image["additionalProperties"] == {"type": "string"}
    images = await client.get_schema("images")
    assert list(images["properties"]) == ["images", "first", "next", "schema"]
    member = await client.get_schema("member")
    assert list(member["properties"]) == [
        "member_id",
        "image_id",
        "created_at",
        "updated_at",
        "status",
        "schema",
    ]
    assert "pattern" in member["properties"]["image_id"]
    members = await client.get_schema("members")
    assert members["links"] == [{"rel": "describedby", "href": "{schema}"}]


async def test_image_schema_marks_read_only_fields(cloud: Cloud) -> None:
    """The image schema marks checksum, size, status and os_hash_value read-only."""
    props = (await cloud.client().get_schema("image"))["properties"]
    for key in ("checksum", "size", "status", "os_hash_value", "created_at"):
        assert props[key].get("readOnly") is True, key
    assert not props["name"].get("readOnly")
