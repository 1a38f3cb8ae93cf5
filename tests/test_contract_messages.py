"""Contract: the exact status and JSON message of each refused request, as Glance 33's webob renders it.

Glance passes most messages as webob's ``explanation`` (``"<message><br /><br />\\n\\n\\n"``), a few as
``detail`` after the status's generic sentence (``"Access was denied to this resource.<br /><br />\\n
<message>\\n\\n"``), and schema failures as jsonschema's multi-line text. The tables below pin all three.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from .cloud import Cloud

JSON = {"Accept": "application/json"}
PATCH = {**JSON, "Content-Type": "application/openstack-images-v2.1-json-patch"}
OCTET = {**JSON, "Content-Type": "application/octet-stream"}


def explained(message: str) -> str:
    """The JSON message of an error Glance raises with explanation=message."""
    return f"{message}<br /><br />\n\n\n"


def detailed(generic: str, message: str) -> str:
    """The JSON message of an error Glance raises with the message as detail."""
    return f"{generic}<br /><br />\n{message}\n\n"


DENIED = "Access was denied to this resource."
CONFLICT = "There was a conflict when trying to complete your request."
NOT_AUTHORIZED = "You are not authorized to complete {} action."
MIN_RAM_SCHEMA = (
    "Provided object does not match schema 'image': '5' is not of type 'integer'\n\n"
    "Failed validating 'type' in schema['properties']['min_ram']:\n"
    "    {'type': 'integer',\n     'description': 'Amount of ram (in MB) required to boot image.'}\n\n"
    "On instance['min_ram']:\n    '5'"
)
NAME_SCHEMA = (
    "Provided object does not match schema 'image': 5 is not of type 'null', 'string'\n\n"
    "Failed validating 'type' in schema['properties']['name']:\n"
    "    {'type': ['null', 'string'],\n     'description': 'Descriptive name for the image',\n"
    "     'maxLength': 255}\n\nOn instance['name']:\n    5"
)
PROPERTY_SCHEMA = (
    "Provided object does not match schema 'image': True is not of type 'string'\n\n"
    "Failed validating 'type' in schema['additionalProperties']:\n    {'type': 'string'}\n\n"
    "On instance['deleted']:\n    True"
)
TAG_SCHEMA = (
    "Provided object does not match schema 'image': '{tag}' is too long\n\n"
    "Failed validating 'maxLength' in schema['properties']['tags']['items']:\n"
    "    {{'type': 'string', 'maxLength': 255}}\n\nOn instance['tags'][0]:\n    '{tag}'"
)


async def _body(data: bytes) -> AsyncIterator[bytes]:
    yield data


class Checker:
    """Sends requests and collects every mismatch, so one run reports all of them."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.problems: list[str] = []

    async def expect(
        self, status: int, message: str, method: str, path: str, *, body: Any = None,
        headers: dict[str, str] | None = None, tenant: str | None = None, data: bytes | None = None,
    ) -> None:  # fmt: skip
        raw = data if data is not None else (None if body is None else json.dumps(body).encode())
        resp = await self.cloud.raw(method, path, headers=headers or JSON, tenant=tenant, data=raw)
        got = resp.json().get("message") if resp.status >= 400 else None
        if (resp.status, got) != (status, message):
            self.problems.append(f"{method} {path} {str(body)[:60]}:\n  want {status} {message!r}\n"
                                 f"  got  {resp.status} {got!r}")  # fmt: skip


async def images(cloud: Cloud) -> dict[str, str]:
    """A shared image with a member, a private one, an active one, a protected one, and a missing id."""
    client = cloud.client()
    shared = await client.create_image(cloud.image_fields(visibility="shared"))
    await client.add_member(shared.id, cloud.t2)
    private = await client.create_image(cloud.image_fields(visibility="private"))
    active = await client.create_image(cloud.image_fields())
    await client.upload_image(active.id, _body(b"abc"), size=3)
    protected = await client.create_image(cloud.image_fields(protected=True))
    return {"img": shared.id, "priv": private.id, "act": active.id, "prot": protected.id,
            "missing": str(uuid.uuid4())}  # fmt: skip


async def test_create_messages(cloud: Cloud) -> None:
    """POST /v2/images refusals: explanation, detail and schema-text messages, exactly."""
    ids = await images(cloud)
    check = Checker(cloud)
    base = cloud.image_fields()
    for extra, status, message in [
        ({"deleted": "x"}, 403, detailed(DENIED, "Attribute 'deleted' is reserved.")),
        ({"os_glance_x": "x"}, 403, detailed(DENIED, "Attribute 'os_glance_x' is reserved.")),
        ({"owner": "x"}, 403, detailed(DENIED, "You are not permitted to create images owned by 'x'")),
        ({"visibility": "public"}, 403, explained(NOT_AUTHORIZED.format("publicize_image"))),
        ({"locations": []}, 403, explained("Attribute 'locations' is reserved.")),
        ({"status": "active"}, 403, explained("Attribute 'status' is read-only.")),
        ({"schema": "x"}, 403, explained("Attribute 'schema' is read-only.")),
        ({"min_ram": -1}, 400,
         explained("Invalid value '-1' for parameter 'min_ram': Cannot be a negative value")),
        ({"min_ram": "5"}, 400, explained(MIN_RAM_SCHEMA)),
        ({"deleted": True}, 400, explained(PROPERTY_SCHEMA)),
        ({"k" * 256: "v"}, 400, explained("Custom property should not be greater than 255 characters.")),
        ({"id": ids["act"]}, 409, explained(f"Image ID {ids['act']} already exists!")),
        ({f"p{i}": "v" for i in range(128)}, 413, explained(
            "The limit has been exceeded on the number of allowed image properties. Attempted: 129, "
            "Maximum: 128")),
    ]:  # fmt: skip
        await check.expect(status, message, "POST", "/v2/images", body={**base, **extra})
    assert not check.problems, "\n".join(check.problems)


async def test_patch_messages(cloud: Cloud) -> None:
    """PATCH refusals: explanation, detail (owner, locations, missing or core property) and schema text."""
    ids = await images(cloud)
    check = Checker(cloud)
    img, act = f"/v2/images/{ids['img']}", f"/v2/images/{ids['act']}"
    for path, op, status, message, tenant in [
        (img, {"op": "replace", "path": "/nope", "value": "x"}, 409,
         detailed(CONFLICT, "Property nope does not exist."), None),
        (img, {"op": "replace", "path": "/owner", "value": "x"}, 403,
         detailed(DENIED, "Owner can't be updated by non admin."), None),
        (img, {"op": "replace", "path": "/locations", "value": []}, 403,
         detailed(DENIED, "Cannot set locations to empty list."), None),
        (img, {"op": "remove", "path": "/name"}, 403,
         detailed(DENIED, "Property name may not be removed."), None),
        (img, {"op": "add", "path": "/deleted", "value": "x"}, 403,
         explained("Attribute 'deleted' is reserved."),
         None),
        (img, {"op": "add", "path": "/tags/-", "value": "x"}, 400,
         explained("Invalid JSON pointer for this resource: '/tags/-'"), None),
        (img, {"op": "test", "path": "/name", "value": "x"}, 400,
         explained("Invalid operation: `test`. It must be one of the following: add, remove, replace."),
         None),
        (img, {"op": "replace", "path": "/name", "value": 5}, 400, explained(NAME_SCHEMA), None),
        (act, {"op": "replace", "path": "/disk_format", "value": "qcow2"}, 403,
         explained("Attribute disk_format can be only replaced for a queued image."), None),
        (img, {"op": "add", "path": "/x", "value": "y"}, 403,
         explained("You are not authorized to complete modify_image action."), cloud.t2),
    ]:  # fmt: skip
        await check.expect(status, message, "PATCH", path, body=[op], headers=PATCH, tenant=tenant)
    not_a_list = explained("Request body must be a JSON array of operation objects.")
    await check.expect(400, not_a_list, "PATCH", img,
                       body={"op": "add"}, headers=PATCH)  # fmt: skip
    assert not check.problems, "\n".join(check.problems)


async def test_tag_and_image_messages(cloud: Cloud) -> None:
    """Tag, upload, download and delete refusals, exactly."""
    ids = await images(cloud)
    check = Checker(cloud)
    img, missing = ids["img"], ids["missing"]
    long_tag = "t" * 256
    await check.expect(400, explained(TAG_SCHEMA.format(tag=long_tag)), "PUT", f"/v2/images/{img}/tags/{long_tag}")
    await check.expect(404, explained("The resource could not be found."), "DELETE", f"/v2/images/{img}/tags/nope")
    await check.expect(404, explained(f"Image {missing} not found."), "PUT", f"/v2/images/{missing}/tags/x")
    await check.expect(404, explained(f"No image found with ID {missing}"), "GET", f"/v2/images/{missing}")
    await check.expect(404, explained(f"Failed to find image {missing} to delete"), "DELETE",
                       f"/v2/images/{missing}")  # fmt: skip
    await check.expect(403, explained(f"Image {ids['prot']} is protected and cannot be deleted."), "DELETE",
                       f"/v2/images/{ids['prot']}")  # fmt: skip
    await check.expect(403, explained("You are not authorized to complete delete_image action."), "DELETE",
                       f"/v2/images/{img}", tenant=cloud.t2)  # fmt: skip
    await check.expect(409, explained("Image status transition from active to saving is not allowed"), "PUT",
                       f"/v2/images/{ids['act']}/file", headers=OCTET, data=b"x")  # fmt: skip
    await check.expect(403, explained("You are not authorized to complete upload_image action."), "PUT",
                       f"/v2/images/{img}/file", headers=OCTET, data=b"x", tenant=cloud.t2)  # fmt: skip
    bare = await cloud.client().create_image(cloud.image_fields(disk_format=None, container_format=None))
    no_formats = "Properties disk_format, container_format must be set prior to saving data."
    await check.expect(400, explained(no_formats),
                       "PUT", f"/v2/images/{bare.id}/file", headers=OCTET, data=b"x")  # fmt: skip
    await check.expect(404, explained("The resource could not be found."), "GET", "/v2/schemas/nope")
    await check.expect(404, explained("The resource could not be found."), "GET", "/v2/nothing-here")
    assert not check.problems, "\n".join(check.problems)


async def test_member_messages(cloud: Cloud) -> None:
    """Member refusals: body checks first, then the image, then 'only shared images', then policy."""
    ids = await images(cloud)
    check = Checker(cloud)
    img, priv, missing, t2 = ids["img"], ids["priv"], ids["missing"], cloud.t2
    members = f"/v2/images/{img}/members"
    for method, path, body, status, message, tenant in [
        ("POST", f"/v2/images/{priv}/members", {"member": "x"}, 403,
         explained(f"Not allowed to create members for image {priv}."), None),
        ("GET", f"/v2/images/{priv}/members", None, 403,
         explained(f"Not allowed to list members for image {priv}: Only shared images have members."), None),
        ("GET", f"/v2/images/{priv}/members/x", None, 404,
         explained("Only shared images have members."), None),
        ("GET", f"/v2/images/{missing}/members", None, 404, explained(f"Image {missing} not found."), None),
        ("POST", members, {}, 400, explained("Member to be added not specified"), None),
        ("POST", members, {"member": ""}, 400, explained("Member can't be empty"), None),
        ("POST", members, ["x"], 400,
         explained('Expected a member in the form: {"member": "image_id"}'), None),
        ("POST", members, {"member": t2}, 409, explained(f"Member {t2} is duplicated for image {img}"), None),
        ("POST", members, {"member": "zz"}, 403, explained(NOT_AUTHORIZED.format("add_member")),
         t2),
        ("PUT", f"{members}/{t2}", {"status": "accepted"}, 403,
         explained("You are not authorized to complete modify_member action."), None),
        ("PUT", f"{members}/{t2}", {}, 400, explained("Status not specified"), t2),
        ("PUT", f"{members}/{t2}", {"status": "maybe"}, 400,
         explained('Incorrect request: Status must be "pending", "accepted" or "rejected".'), t2),
        ("GET", f"{members}/nobody", None, 404,
         explained(f"nobody not found in the member list of the image {img}."), None),
        ("DELETE", f"{members}/{t2}", None, 403, explained(NOT_AUTHORIZED.format("delete_member")),
         t2),
    ]:  # fmt: skip
        await check.expect(status, message, method, path, body=body, tenant=tenant)
    assert not check.problems, "\n".join(check.problems)


@pytest.mark.parametrize(
    ("accept", "kind"),
    [(None, "plain"), ("", "plain"), ("text/plain", "plain"), ("*/*", "html"), ("text/html", "html"),
     ("application/json", "json"), ("application/*", "json"), ("text/html;q=0.5, application/json", "json"),
     ("application/json, text/html", "html")],
    ids=["absent", "empty", "text-plain", "any", "html", "json", "application-any", "json-preferred",
         "tie-goes-to-html"],
)  # fmt: skip
async def test_error_rendering_follows_accept(cloud: Cloud, accept: str | None, kind: str) -> None:
    """webob picks HTML or JSON from Accept; a missing, empty or unmatched Accept gives plain text."""
    missing = str(uuid.uuid4())
    headers = {} if accept is None else {"Accept": accept}
    resp = await cloud.raw("GET", f"/v2/images/{missing}", headers=headers,
                           skip_auto_headers=["Accept"] if accept is None else [])  # fmt: skip
    assert resp.status == 404
    text = {
        "plain": f"404 Not Found\n\nNo image found with ID {missing}\n\n   ",
        "html": ("<html>\n <head>\n  <title>404 Not Found</title>\n </head>\n <body>\n"
                 "  <h1>404 Not Found</h1>\n"
                 f"  No image found with ID {missing}<br /><br />\n\n\n\n </body>\n</html>"),
        "json": json.dumps({"message": explained(f"No image found with ID {missing}"),
                            "code": "404 Not Found",
                            "title": "Not Found"}),
    }[kind]  # fmt: skip
    ctype = {
        "plain": "text/plain; charset=UTF-8",
        "html": "text/html; charset=UTF-8",
        "json": "application/json",
    }
    assert resp.headers["Content-Type"] == ctype[kind]
    assert resp.body.decode() == text
