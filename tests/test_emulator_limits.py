"""The emulator's per-project image quotas (Glance 33 with unified limits) and per-region accepted formats
(Glance's ``[image_format]`` lists), through real HTTP, counted at the server.

The real-Glance harness is configured neither with Keystone limits nor with other format lists, so the
expected texts below come from Glance 33's code (``glance/quota/keystone.py``, ``LimitExceeded``, oslo.limit's
``ProjectOverLimit``, webob's rendering, ``get_base_properties`` and jsonschema's ``best_match``); the last
test runs that code in the Glance 33 virtual environment and compares it with what the emulator answers.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from pipeline.emulator import Emulator
from pipeline.emulator.context import RegionStats
from pipeline.emulator.process import emulator_process
from pipeline.errors import PayloadTooLargeError

from .chaos import state
from .cloud import Cloud, RawResponse

JSON = {"Accept": "application/json"}
OCTET = {"Content-Type": "application/octet-stream", **JSON}
PATCH = {"Content-Type": "application/openstack-images-v2.1-json-patch", **JSON}
MIB = 1 << 20
LEAD = ("The request returned a 413 Request Entity Too Large. This generally means that rate limiting or a quota "
        "threshold was breached.")  # fmt: skip
DISK_ENUM_SCHEMA = (
    "Provided object does not match schema 'image': '{value}' is not one of [None, 'raw', 'qcow2']\n\n"
    "Failed validating 'enum' in schema['properties']['disk_format']:\n"
    "    {{'type': ['null', 'string'],\n     'description': 'Format of the disk',\n"
    "     'enum': [None, 'raw', 'qcow2']}}\n\nOn instance['disk_format']:\n    '{value}'"
)
CONTAINER_ENUM_SCHEMA = (
    "Provided object does not match schema 'image': '{value}' is not one of [None, 'bare']\n\n"
    "Failed validating 'enum' in schema['properties']['container_format']:\n"
    "    {{'type': ['null', 'string'],\n     'description': 'Format of the container',\n"
    "     'enum': [None, 'bare']}}\n\nOn instance['container_format']:\n    '{value}'"
)


def over(project: str, resource: str, limit: int, usage: int, delta: int) -> str:
    """oslo.limit's ProjectOverLimit text for one resource."""
    return (f"Project {project} is over a limit for [Resource {resource} is over limit of {limit} due to current "
            f"usage {usage} and delta {delta}]")  # fmt: skip


def json_413(project: str, resource: str, limit: int, usage: int, delta: int) -> str:
    """The JSON message of a quota refusal (webob: explanation, then ``<br /><br />`` and empty detail)."""
    return f"{LEAD}\n\nThe response body:\n{over(project, resource, limit, usage, delta)}<br /><br />\n\n\n"


def emu_of(cloud: Cloud) -> Emulator:
    if cloud.emulator is None:
        raise AssertionError("an emulator cloud")
    return cloud.emulator


def stats(cloud: Cloud, region: str = "KR1") -> RegionStats:
    return emu_of(cloud).regions[region].stats


async def admin(cloud: Cloud, method: str, path: str, doc: Any = None) -> tuple[int, Any]:
    """Call the emulator's admin API (``IDENTITY/_admin/<path>``): (status, JSON body or text)."""
    base = cloud.identity_url.removesuffix("/v2.0") + "/_admin"
    async with cloud.session.request(method, f"{base}/{path}", json=doc) as resp:
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text


async def create(cloud: Cloud, tenant: str | None = None, region: str = "KR1", **fields: Any) -> RawResponse:
    return await cloud.raw("POST", "/v2/images", region=region, tenant=tenant, headers=JSON,
                           json=cloud.image_fields(**fields))  # fmt: skip


async def upload(cloud: Cloud, image_id: str, data: Any, **headers: str) -> RawResponse:
    return await cloud.raw("PUT", f"/v2/images/{image_id}/file", headers={**OCTET, **headers}, data=data)


async def pieces(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


# === quotas


async def test_create_over_image_count_total_gets_glances_413(emulator_cloud: Cloud) -> None:
    """With image_count_total = 2, a project's third create is refused with 413 and Glance's LimitExceeded text
    (text/plain without Accept, JSON and HTML by Accept); nothing is created, another project is not limited,
    and a delete makes room again. The refusal is counted at the server."""
    cloud, emu = emulator_cloud, emu_of(emulator_cloud)
    emu.store("KR1").limits = {"image_count_total": 2}
    first = (await create(cloud)).json()["id"]
    assert (await create(cloud)).status == 201
    plain = await cloud.raw("POST", "/v2/images", json=cloud.image_fields(), skip_auto_headers=["Accept"])
    assert plain.status == 413
    assert plain.headers["Content-Type"] == "text/plain; charset=UTF-8"
    assert plain.body.decode() == (
        f"413 Request Entity Too Large\n\n{LEAD}  The response body: "
        f"{over(cloud.t1, 'image_count_total', 2, 2, 1)}\n\n   "
    )
    as_json = await create(cloud)
    assert as_json.status == 413
    assert as_json.json() == {"message": json_413(cloud.t1, "image_count_total", 2, 2, 1),
                              "code": "413 Request Entity Too Large", "title": "Request Entity Too Large"}  # fmt: skip
    as_html = await cloud.raw("POST", "/v2/images", json=cloud.image_fields())
    assert as_html.headers["Content-Type"] == "text/html; charset=UTF-8"
    assert f"{over(cloud.t1, 'image_count_total', 2, 2, 1)}<br /><br />\n\n\n\n </body>".encode() in as_html.body
    with pytest.raises(PayloadTooLargeError):
        await cloud.client().create_image(cloud.image_fields())
    assert sum(rec.owner == cloud.t1 for rec in emu.store("KR1").images.values()) == 2
    assert (await create(cloud, tenant=cloud.t2)).status == 201  # the limit is per project
    assert (await create(cloud, region="KR2")).status == 201  # and per region
    await cloud.client().delete_image(first)
    assert (await create(cloud)).status == 201
    assert stats(cloud).quota_refusals == {"image_count_total": 4}  # the client did not retry its 413
    assert stats(cloud).requests["create"] == 8
    assert stats(cloud, "KR2").quota_refusals == {}


async def test_quota_is_checked_after_policy_and_before_the_image_factory(emulator_cloud: Cloud) -> None:
    """As in Glance's create: a request the deserializer or the add_image policy refuses is not a quota
    refusal (400, 403), but one the image factory would refuse (a read-only attribute) gets the 413 first."""
    cloud = emulator_cloud
    emu_of(cloud).store("KR1").limits = {"image_count_total": 0}
    assert (await create(cloud, disk_format="bogus")).status == 400
    assert (await create(cloud, visibility="public")).status == 403
    refused = await create(cloud, status="active")
    assert (refused.status, refused.json()["message"]) == (413, json_413(cloud.t1, "image_count_total", 0, 0, 1))
    assert stats(cloud).quota_refusals == {"image_count_total": 1}


async def test_upload_over_image_size_total_leaves_the_image_queued(emulator_cloud: Cloud, tmp_path: Path) -> None:
    """With image_size_total = 1 (MiB), a 2 MiB upload (delta = Content-Length // 1 MiB) is refused with 413
    before any byte is stored: the image stays queued without size or checksum, no file is kept, and no
    upload started at the server. Without the limit the same upload succeeds."""
    cloud, emu = emulator_cloud, emu_of(emulator_cloud)
    emu.store("KR1").limits = {"image_size_total": 1}
    image_id = (await create(cloud)).json()["id"]
    refused = await upload(cloud, image_id, io.BytesIO(b"\0" * (2 * MIB)))
    assert refused.status == 413
    assert refused.json()["message"] == json_413(cloud.t1, "image_size_total", 1, 0, 2)
    img = await cloud.client().get_image(image_id)
    assert (img.status, img.size, img.checksum, img.raw.get("os_hash_value")) == ("queued", None, None, None)
    assert not list((tmp_path / "emulator" / "KR1").glob(f"{image_id}*"))
    assert (stats(cloud).uploads_started, stats(cloud).quota_refusals) == (0, {"image_size_total": 1})
    emu.store("KR1").limits = {}
    assert (await upload(cloud, image_id, io.BytesIO(b"\0" * (2 * MIB)))).status == 204
    assert (await cloud.client().get_image(image_id)).status == "active"


@pytest.mark.parametrize(
    ("headers", "chunked", "delta"),
    [({}, False, 1), ({}, True, 0), ({"x-openstack-image-size": str(5 * MIB)}, False, 5)],
    ids=["content-length", "chunked", "size-header"],
)
async def test_upload_delta_is_the_announced_size(
    emulator_cloud: Cloud, headers: dict[str, str], chunked: bool, delta: int
) -> None:
    """The image_size_total delta is x-openstack-image-size, else Content-Length, else 0 (chunked), in whole
    MiB; the usage is the project's active data (here a 3 MiB image) in whole MiB."""
    cloud, emu = emulator_cloud, emu_of(emulator_cloud)
    emu.store("KR1").limits = {"image_size_total": 2}
    emu.store("KR1").add_synthetic(cloud.t1, 3 * MIB, "usage", {})  # seeded data: already there, past the limit
    image_id = (await create(cloud)).json()["id"]
    data = b"\1" * (MIB + 5)
    refused = await upload(cloud, image_id, pieces(data) if chunked else io.BytesIO(data), **headers)
    assert (refused.status, refused.json()["message"]) == (413, json_413(cloud.t1, "image_size_total", 2, 3, delta))


async def test_chunked_upload_can_pass_the_size_limit_once(emulator_cloud: Cloud) -> None:
    """Glance checks image_size_total only before the data: a chunked upload (delta 0) under the limit is
    accepted whatever its size, and the project's next upload is refused for the usage it left."""
    cloud, emu = emulator_cloud, emu_of(emulator_cloud)
    emu.store("KR1").limits = {"image_size_total": 1}
    first = (await create(cloud)).json()["id"]
    assert (await upload(cloud, first, pieces(b"\2" * (3 * MIB)))).status == 204
    second = (await create(cloud)).json()["id"]
    refused = await upload(cloud, second, pieces(b"\3" * 10))
    assert refused.json()["message"] == json_413(cloud.t1, "image_size_total", 1, 3, 0)
    assert (stats(cloud).uploads_completed, stats(cloud).quota_refusals) == (1, {"image_size_total": 1})


async def test_bad_image_size_header_is_refused(emulator_cloud: Cloud) -> None:
    """A non-integer x-openstack-image-size gives Glance's deserializer 400."""
    cloud = emulator_cloud
    image_id = (await create(cloud)).json()["id"]
    resp = await upload(cloud, image_id, b"x", **{"x-openstack-image-size": "big"})
    assert (resp.status, resp.json()["message"]) == (
        400, "Invalid or missing image size in request headers.<br /><br />\n\n\n")  # fmt: skip


async def test_upload_over_image_count_uploading_is_restored_to_queued(emulator_cloud: Cloud) -> None:
    """With image_count_uploading = 1, a second upload while one is in progress is refused with 413 (the image
    counts itself: usage 2, delta 0) and put back to queued, as Glance's _restore does; the first upload
    then completes. Counted at the server: one upload started, one refusal."""
    cloud, emu = emulator_cloud, emu_of(emulator_cloud)
    emu.store("KR1").limits = {"image_count_uploading": 1}
    slow, other = (await create(cloud)).json()["id"], (await create(cloud)).json()["id"]
    release = anyio.Event()
    answers: dict[str, int] = {}

    async def held() -> AsyncIterator[bytes]:
        yield b"\4" * 65536
        await release.wait()
        yield b"\4" * 65536

    async def slow_upload() -> None:
        answers["slow"] = (await upload(cloud, slow, held())).status

    async with anyio.create_task_group() as tg:
        tg.start_soon(slow_upload)
        with anyio.fail_after(10):
            while stats(cloud).uploads_active < 1:  # noqa: ASYNC110 - until the server holds the first upload
                await anyio.sleep(0.01)
        refused = await upload(cloud, other, b"\5" * 100)
        assert refused.json()["message"] == json_413(cloud.t1, "image_count_uploading", 1, 2, 0)
        assert emu.store("KR1").images[other].status == "queued"
        release.set()
    assert answers == {"slow": 204}
    assert (await cloud.client().get_image(slow)).status == "active"
    assert (await cloud.client().get_image(other)).status == "queued"
    assert stats(cloud).uploads_started == 1
    assert stats(cloud).quota_refusals == {"image_count_uploading": 1}
    assert (await upload(cloud, other, b"\5" * 100)).status == 204  # nothing uploading any more


async def test_admin_limits_set_show_and_clear(emulator_cloud: Cloud) -> None:
    """POST /_admin/limits/{region} replaces the region's limits and answers them with every project's usage;
    bad documents give 400 and change nothing; the state view shows limits and refusals; DELETE clears."""
    cloud = emulator_cloud
    status, doc = await admin(cloud, "POST", "limits/KR1", {"image_count_total": 1, "image_size_total": -1})
    assert (status, doc) == (200, {"limits": {"image_count_total": 1, "image_size_total": -1}, "usage": {}})
    assert (await create(cloud)).status == 201
    assert (await create(cloud)).status == 413
    status, doc = await admin(cloud, "GET", "limits/KR1")
    assert doc["usage"] == {cloud.t1: {"image_count_total": 1, "image_count_uploading": 0, "image_size_total": 0,
                                       "image_stage_total": 0}}  # fmt: skip
    for bad in ({"image_count": 1}, {"image_count_total": "1"}, {"image_count_total": True}, [1]):
        status, doc = await admin(cloud, "POST", "limits/KR1", bad)
        assert status == 400, bad
        assert "error" in doc
    view = (await admin(cloud, "GET", "state"))[1]
    assert view["limits"] == {"KR1": {"image_count_total": 1, "image_size_total": -1}, "KR2": {}, "JP1": {}}
    assert view["stats"]["KR1"]["quota_refusals"] == {"image_count_total": 1}
    status, doc = await admin(cloud, "DELETE", "limits/KR1")
    assert (status, doc["limits"]) == (200, {})
    assert (await create(cloud)).status == 201
    assert (await admin(cloud, "GET", "limits/XX1"))[0] == 404


# === accepted formats


async def test_formats_shape_the_schema_and_the_checks(emulator_cloud: Cloud) -> None:
    """POST /_admin/formats/{region} sets the region's accepted formats: /v2/schemas/image(s) list them as the
    enums ([None] + the list, as Glance builds the schema), create and PATCH refuse any other value with the
    schema's 400 (the disk_format failure first when both fail, as jsonschema's best_match picks), other
    regions keep Glance's defaults, and DELETE restores them."""
    cloud = emulator_cloud
    status, doc = await admin(cloud, "POST", "formats/KR1", {"disk_formats": ["raw", "qcow2"],
                                                             "container_formats": ["bare"]})  # fmt: skip
    assert (status, doc) == (200, {"disk_formats": ["raw", "qcow2"], "container_formats": ["bare"]})
    schema = (await cloud.raw("GET", "/v2/schemas/image")).json()
    assert schema["properties"]["disk_format"] == {"type": ["null", "string"], "description": "Format of the disk",
                                                   "enum": [None, "raw", "qcow2"]}  # fmt: skip
    assert schema["properties"]["container_format"]["enum"] == [None, "bare"]
    items = (await cloud.raw("GET", "/v2/schemas/images")).json()["properties"]["images"]["items"]
    assert items == schema
    default = (await cloud.raw("GET", "/v2/schemas/image", region="KR2")).json()["properties"]
    assert list(schema["properties"]) == list(default)  # the same schema otherwise, key order included
    assert default["disk_format"]["enum"] == [None, "ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2",
                                              "vdi", "iso", "ploop"]  # fmt: skip
    refused = await create(cloud, disk_format="vmdk")
    assert (refused.status, refused.json()["message"]) == (400, DISK_ENUM_SCHEMA.format(value="vmdk") +
                                                           "<br /><br />\n\n\n")  # fmt: skip
    both = await create(cloud, disk_format="iso", container_format="ovf")
    assert both.json()["message"] == DISK_ENUM_SCHEMA.format(value="iso") + "<br /><br />\n\n\n"
    assert (await create(cloud, disk_format="vmdk", region="KR2")).status == 201
    seeded = emu_of(cloud).store("KR1").add_synthetic(cloud.t1, 10, "old", {"disk_format": "vmdk"})
    assert (await cloud.client().get_image(seeded.id)).raw["disk_format"] == "vmdk"  # an image already there stays
    image_id = (await create(cloud, disk_format="qcow2")).json()["id"]
    patch = [{"op": "replace", "path": "/container_format", "value": "ovf"}]
    resp = await cloud.raw("PATCH", f"/v2/images/{image_id}", headers=PATCH, json=patch)
    assert (resp.status, resp.json()["message"]) == (400, CONTAINER_ENUM_SCHEMA.format(value="ovf") +
                                                     "<br /><br />\n\n\n")  # fmt: skip
    assert (await admin(cloud, "GET", "state"))[1]["formats"]["KR1"] == doc
    status, doc = await admin(cloud, "POST", "formats/KR1", {"container_formats": "bare, ovf"})
    assert doc == {"disk_formats": ["raw", "qcow2"], "container_formats": ["bare", "ovf"]}
    resp = await cloud.raw("PATCH", f"/v2/images/{image_id}", headers=PATCH, json=patch)
    assert resp.json()["container_format"] == "ovf"
    for bad in ({"disk_format": ["raw"]}, {"disk_formats": [5]}, {"disk_formats": [""]}, {"disk_formats": 5}):
        assert (await admin(cloud, "POST", "formats/KR1", bad))[0] == 400, bad
    status, doc = await admin(cloud, "DELETE", "formats/KR1")
    assert doc["disk_formats"] == default["disk_format"]["enum"][1:]
    assert (await create(cloud, disk_format="vmdk")).status == 201


def test_emulate_options_set_every_regions_formats() -> None:
    """``imgmig emulate --disk-formats raw,qcow2 --container-formats bare`` configures every region."""
    args = ("--regions", "KR1,JP1", "--disk-formats", "raw, qcow2", "--container-formats", "bare")
    with emulator_process(args) as proc:
        formats = state(proc.admin)["formats"]
    want = {"disk_formats": ["raw", "qcow2"], "container_formats": ["bare"]}
    assert formats == {"KR1": want, "JP1": want}


# === against Glance 33's own code

_GLANCE_SCRIPT = """
import json, sys
from oslo_config import cfg
import glance.common.config
from glance.api.v2 import images
from glance.common import exception
from oslo_limit import exception as ol
import webob.exc
from webob import Request
cases = json.load(sys.stdin)
CONF = cfg.CONF
CONF([], project="glance", default_config_files=[], default_config_dirs=[])
CONF.set_override("disk_formats", cases["disk_formats"], group="image_format")
CONF.set_override("container_formats", cases["container_formats"], group="image_format")
schema = images.get_schema()
out = {"schema": schema.raw(), "invalid": [], "quota": []}
for doc in cases["docs"]:
    try:
        schema.validate(doc)
        out["invalid"].append(None)
    except exception.InvalidObject as e:
        out["invalid"].append(e.msg)
for project, resource, limit, usage, delta, accept in cases["quota"]:
    over = ol.ProjectOverLimit(project, [ol.OverLimitInfo(resource, limit, usage, delta)])
    req = Request.blank("/v2/images", method="POST", environ={"HTTP_ACCEPT": accept} if accept else {})
    err = webob.exc.HTTPRequestEntityTooLarge(explanation=exception.LimitExceeded(body=str(over)).msg, request=req,
                                              content_type="text/plain")
    resp = req.get_response(err)
    out["quota"].append([resp.status_int, resp.headers["Content-Type"], resp.body.decode()])
print(json.dumps(out))
"""


@pytest.mark.real_glance
async def test_texts_match_glance_33_code(emulator_cloud: Cloud) -> None:
    """Glance 33's own code (its image schema from [image_format], jsonschema, oslo.limit, LimitExceeded and
    webob) run in the Glance virtual environment gives the same schema, 400 messages and 413 bodies as the
    emulator answers over HTTP for the same configuration."""
    from .realglance.harness import ensure_glance_venv

    cloud, emu = emulator_cloud, emu_of(emulator_cloud)
    disk, container = ["raw", "qcow2", "vhd"], ["bare", "ovf"]
    emu.store("KR1").disk_formats, emu.store("KR1").container_formats = tuple(disk), tuple(container)
    docs: list[dict[str, Any]] = [{"disk_format": "vmdk"}, {"container_format": "docker"},
            {"disk_format": "iso", "container_format": "ova"}, {"container_format": 5, "name": 7},
            {"disk_format": "raw", "container_format": "bare", "min_ram": "1"}]  # fmt: skip
    emu.store("KR1").limits = {"image_count_total": 1}
    assert (await create(cloud)).status == 201
    accepts = ["", "*/*", "application/json", "text/plain", "text/html"]
    cases = {"disk_formats": disk, "container_formats": container, "docs": docs,
             "quota": [[cloud.t1, "image_count_total", 1, 1, 1, a] for a in accepts]}  # fmt: skip
    python = ensure_glance_venv() / "bin" / "python"
    with anyio.fail_after(120):
        run = await anyio.run_process([str(python), "-c", _GLANCE_SCRIPT], input=json.dumps(cases).encode())
    glance = json.loads(run.stdout)
    assert (await cloud.raw("GET", "/v2/schemas/image")).json() == glance["schema"]
    for doc, message in zip(docs, glance["invalid"], strict=True):
        body = {"name": "img", "os_type": "linux", **doc}
        got = await cloud.raw("POST", "/v2/images", headers=JSON, json=body)
        assert (got.status, got.json()["message"]) == (400, f"{message}<br /><br />\n\n\n"), doc
    for accept, (status, ctype, body) in zip(accepts, glance["quota"], strict=True):
        headers = {"Accept": accept} if accept else {}
        got = await cloud.raw("POST", "/v2/images", json=cloud.image_fields(), headers=headers,
                              skip_auto_headers=[] if accept else ["Accept"])  # fmt: skip
        assert (got.status, got.headers["Content-Type"], got.body.decode()) == (status, ctype, body), accept
