"""Contract: GET /v2/images (filters, operators, sorting, pagination links, visibility and membership)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from pipeline.errors import ForbiddenError

from .cloud import Cloud

JSON = {"Accept": "application/json"}


async def _body(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _make(cloud: Cloud, n: int, **fields: Any) -> list[str]:
    client = cloud.client()
    return [(await client.create_image(cloud.image_fields(name=f"img-{i}", **fields))).id for i in range(n)]


async def _names(cloud: Cloud, query: str, tenant: str | None = None) -> list[str]:
    resp = await cloud.raw("GET", f"/v2/images?{query}", tenant=tenant, headers=JSON)
    assert resp.status == 200, resp.body
    return [i["name"] for i in resp.json()["images"]]


# === pagination


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


async def test_list_exact_multiple_ends_with_an_empty_page(cloud: Cloud) -> None:
    """'next' appears whenever a page is full, so 2 images at limit=2 end with an empty page."""
    await _make(cloud, 2)
    page = (await cloud.raw("GET", "/v2/images?limit=2")).json()
    assert "next" in page
    last = (await cloud.raw("GET", page["next"])).json()
    assert (last["images"], "next" in last) == ([], False)


async def test_list_pages_see_writes_made_between_them(cloud: Cloud) -> None:
    """Each page is read from the region as it is then: a delete or a rename between two pages shows in the next."""
    ids = await _make(cloud, 5)
    first = (await cloud.raw("GET", "/v2/images?sort=name:asc&limit=2&name=in:img-0,img-1,img-2,img-3,img-4,img-1b",
                             headers=JSON)).json()  # fmt: skip
    assert [i["name"] for i in first["images"]] == ["img-0", "img-1"]
    assert (await cloud.raw("DELETE", f"/v2/images/{ids[2]}")).status == 204
    patch = [{"op": "replace", "path": "/name", "value": "img-1b"}]
    headers = {**JSON, "Content-Type": "application/openstack-images-v2.1-json-patch"}
    assert (await cloud.raw("PATCH", f"/v2/images/{ids[4]}", json=patch, headers=headers)).status == 200
    rest = (await cloud.raw("GET", first["next"], headers=JSON)).json()
    assert [i["name"] for i in rest["images"]] == ["img-1b", "img-3"]


async def test_list_links_keep_only_the_last_value_of_repeated_keys(cloud: Cloud) -> None:
    """'first'/'next' are urlencode(dict(params)): a repeated key keeps only its last value."""
    # so following 'next' verbatim would drop a 'tag' filter: the client takes only the marker from it
    client = cloud.client()
    both = {(await client.create_image(cloud.image_fields(name=f"both-{i}", tags=["x", "y"]))).id
            for i in range(3)}  # fmt: skip
    await client.create_image(cloud.image_fields(name="only-y", tags=["y"]))
    page = (
        await cloud.raw("GET", "/v2/images?tag=x&tag=y&limit=1&name=in:a,b&name=in:both-0,both-1,both-2,only-y")
    ).json()
    assert page["first"] == "/v2/images?tag=y&limit=1&name=in%3Aboth-0%2Cboth-1%2Cboth-2%2Conly-y"
    assert dict(parse_qsl(urlsplit(page["next"]).query))["tag"] == "y"  # the 'x' filter is gone
    listed = {i.id async for i in client.list_images({"tag": ["x", "y"]}, page_size=1)}
    assert listed == both


async def test_list_limit_is_capped_not_refused(cloud: Cloud) -> None:
    """limit above api_limit_max (1000) is accepted; limit=0 gives an empty page without 'next'."""
    await _make(cloud, 1)
    assert await _names(cloud, "limit=5000") == ["img-0"]
    page = (await cloud.raw("GET", "/v2/images?limit=0")).json()
    assert (page["images"], "next" in page) == ([], False)


# === sorting


async def test_list_default_order_is_newest_first(cloud: Cloud) -> None:
    """The default sort is created_at descending; sort_key=name asc sorts by name."""
    ids = await _make(cloud, 3)
    listed = [i.id async for i in cloud.client().list_images()]
    assert listed == list(reversed(ids))
    names = [i.name async for i in cloud.client().list_images(sort_key="name", sort_dir="asc")]
    assert names == ["img-0", "img-1", "img-2"]


async def test_list_new_sort_syntax(cloud: Cloud) -> None:
    """sort=key:dir,... works; a key without direction is descending; null sizes sort last when desc."""
    client = cloud.client()
    for name, data in (("b", b"12"), ("a", b"12"), ("c", b"1234"), ("d", None)):
        img = await client.create_image(cloud.image_fields(name=name))
        if data is not None:
            await client.upload_image(img.id, _body(data), size=len(data))
    assert await _names(cloud, "sort=size:desc,name:asc") == ["c", "a", "b", "d"]
    assert await _names(cloud, "sort=size:asc,name:desc") == ["d", "b", "a", "c"]
    assert await _names(cloud, "sort=name") == ["d", "c", "b", "a"]
    assert await _names(cloud, "sort_key=size&sort_key=name&sort_dir=asc") == ["d", "a", "b", "c"]


# === filters


async def test_list_filters(cloud: Cloud) -> None:
    """name, status, size range, tag (ANDed), property and visibility filters narrow the list."""
    client = cloud.client()
    a = await client.create_image(
        cloud.image_fields(name="a", tags=["x", "y"], os_distro="ubuntu", visibility="private")
    )
    b = await client.create_image(cloud.image_fields(name="b", tags=["x"], visibility="shared"))
    await client.upload_image(b.id, _body(b"0123456789"), size=10)

    async def ids(**filters: Any) -> set[str]:
        return {i.id async for i in client.list_images(filters)}

    assert await ids(name="a") == {a.id}
    assert await ids(name="in:a,b") == {a.id, b.id}
    assert await ids(status="active") == {b.id}
    assert await ids(status="bogus") == set()
    assert await ids(size_min=5, size_max=10) == {b.id}
    assert await ids(size_min=11) == set()
    assert await ids(size_min=10, size_max=5) == set()
    assert await ids(tag=["x", "y"]) == {a.id}
    assert await ids(tag="x") == {a.id, b.id}
    assert await ids(os_distro="ubuntu") == {a.id}
    assert await ids(no_such_property="z") == set()
    assert await ids(visibility="shared") == {b.id}
    assert await ids(visibility="private") == {a.id}
    assert await ids(owner=cloud.t1) == {a.id, b.id}
    assert await ids(id=f"in:{a.id}") == {a.id}
    assert await ids(protected=False) == {a.id, b.id}
    assert await ids(disk_format="raw", container_format="bare") == {a.id, b.id}


async def test_list_operators_and_column_filters(cloud: Cloud) -> None:
    """in:/eq: work on name, id, status and formats; other image columns match exactly."""
    # in: takes "quoted,items"; on owner it is no operator at all, so owner=in:... matches nothing
    client = cloud.client()
    a = await client.create_image(cloud.image_fields(name="a,b", min_ram=512))
    c = await client.create_image(cloud.image_fields(name="c"))
    await client.upload_image(c.id, _body(b"payload"), size=7)

    async def ids(query: str) -> set[str]:
        resp = await cloud.raw("GET", f"/v2/images?{query}", headers=JSON)
        assert resp.status == 200, resp.body
        return {i["id"] for i in resp.json()["images"]}

    assert await ids('name=in:"a,b",c') == {a.id, c.id}
    assert await ids("name=eq:c") == {c.id}
    assert await ids(f"id=in:{a.id},{c.id}") == {a.id, c.id}
    assert await ids("status=in:queued,active") == {a.id, c.id}
    assert await ids(f"owner=in:{cloud.t1}") == set()
    assert await ids(f"checksum={hashlib.md5(b'payload').hexdigest()}") == {c.id}
    assert await ids(f"os_hash_value={hashlib.sha512(b'payload').hexdigest()}") == {c.id}
    assert await ids("min_ram=512") == {a.id}
    assert await ids("size=7") == {c.id}


async def test_list_time_filters(cloud: Cloud) -> None:
    """created_at/updated_at take gt, gte, lt, lte, eq and neq with ISO 8601 times."""
    await _make(cloud, 1)
    assert await _names(cloud, "created_at=gte:2000-01-01T00:00:00Z") == ["img-0"]
    assert await _names(cloud, "created_at=lt:2000-01-01T00:00:00Z") == []
    assert await _names(cloud, "updated_at=neq:2000-01-01T00:00:00Z") == ["img-0"]
    assert await _names(cloud, "created_at=2000-01-01T00:00:00Z") == []  # a bare time means eq


async def test_list_hides_os_hidden_images_by_default(cloud: Cloud) -> None:
    """os_hidden images are left out of the default list and are the only ones with os_hidden=true."""
    client = cloud.client()
    await client.create_image(cloud.image_fields(name="shown"))
    hidden = await client.create_image(cloud.image_fields(name="hidden", os_hidden=True))
    assert hidden.raw["os_hidden"] is True
    assert await _names(cloud, "") == ["shown"]
    assert await _names(cloud, "os_hidden=true") == ["hidden"]
    assert await _names(cloud, "os_hidden=FALSE") == ["shown"]
    assert (await cloud.client().get_image(hidden.id)).id == hidden.id


@pytest.mark.parametrize(
    ("query", "match"),
    [
        ("limit=abc", "limit param must be an integer"),
        ("limit=-1", "limit param must be positive"),
        ("marker=" + "0" * 8 + "-0000-0000-0000-" + "0" * 12, "No image found with ID 00000000-"),
        ("marker=not-a-uuid", "No image found with ID not-a-uuid"),
        ("sort_key=os_distro", "Invalid sort key: os_distro. It must be one of the following: name, status, "
                               "container_format, disk_format, size, id, created_at, updated_at."),
        ("sort_dir=sideways", "Invalid sort direction: sideways"),
        ("sort=name:sideways", "Invalid sort direction: sideways"),
        ("sort=name:asc&sort_key=name", "Old and new sorting syntax cannot be combined"),
        ("sort_key=name&sort_dir=asc&sort_dir=desc&sort_dir=asc",
         "Number of sort dirs does not match the number of sort keys"),
        ("visibility=bogus", "Invalid visibility value: bogus"),
        ("member_status=bogus", "Invalid status: bogus"),
        ("os_hidden=maybe", "Invalid value 'maybe' for 'os_hidden' filter. Valid values are 'true' or "),
        ("protected=True", "Invalid value 'True' for 'protected' filter. Valid values are 'true' or "),
        ("size_min=abc", "Unable to filter on a range with a non-numeric value."),
        ("created_at=gte:yesterday", 'Bad "created_at" query filter format. Use ISO 8601 DateTime notation.'),
        ("created_at=around:2000-01-01T00:00:00Z", "Unable to filter on a unknown operator."),
        ("name=a:b", "Unable to filter by unknown operator 'a'."),
        ("changes-since=2000-01-01T00:00:00Z", 'The "changes-since" filter is no longer available on v2.'),
    ],
    ids=["limit-nan", "limit-neg", "marker", "marker-not-uuid", "sort-key", "sort-dir", "sort-new-dir",
         "sort-mix", "sort-dirs-count", "visibility", "member-status", "os-hidden", "protected", "size",
         "date", "date-op", "name-op", "changes-since"],
)  # fmt: skip
async def test_list_bad_queries_are_400(cloud: Cloud, query: str, match: str) -> None:
    """Invalid list parameters give 400 with Glance's message as the explanation."""
    resp = await cloud.raw("GET", f"/v2/images?{query}", headers=JSON)
    assert resp.status == 400, resp.body
    assert resp.json()["message"].startswith(match)
    assert resp.json()["message"].endswith("<br /><br />\n\n\n")


# === who sees what


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


async def test_list_member_status_all(cloud: Cloud) -> None:
    """member_status=all lists shared images whatever the membership status."""
    owner = cloud.client(cloud.t1)
    ids = []
    for status in ("pending", "accepted", "rejected"):
        img = await owner.create_image(cloud.image_fields(name=status, visibility="shared"))
        await owner.add_member(img.id, cloud.t2)
        if status != "pending":
            await cloud.client(cloud.t2).update_member_status(img.id, cloud.t2, status)
        ids.append(img.id)
    listed = {i.id async for i in cloud.client(cloud.t2).list_images({"member_status": "all"})}
    assert listed == set(ids)


async def test_list_repeated_paging_parameter_filters_everything_out(cloud: Cloud) -> None:
    """A repeated limit, marker, member_status or sort turns into a property filter: empty list."""
    # webob's pop takes the first occurrence; the repeat stays in the filters as an exact-match property
    await _make(cloud, 1)
    assert await _names(cloud, "limit=5") == ["img-0"]
    assert await _names(cloud, "limit=5&limit=5") == []
    assert await _names(cloud, "member_status=all&member_status=all") == []
    assert await _names(cloud, "sort=name:asc&sort=name:asc") == []


async def test_list_community_images(cloud: Cloud) -> None:
    """Community images list for their owner, for others only by visibility (NHN: refused, 403)."""
    owner = cloud.client(cloud.t1)
    if cloud.nhn_rules:
        with pytest.raises(ForbiddenError, match="communitize_image"):
            await owner.create_image(cloud.image_fields(name="comm", visibility="community"))
        return
    await owner.create_image(cloud.image_fields(name="comm", visibility="community"))
    assert await _names(cloud, "") == ["comm"]
    mine = f"owner={cloud.t1}"
    assert await _names(cloud, mine, tenant=cloud.t2) == []
    assert await _names(cloud, f"{mine}&visibility=community", tenant=cloud.t2) == ["comm"]
    assert await _names(cloud, f"{mine}&visibility=all", tenant=cloud.t2) == ["comm"]
