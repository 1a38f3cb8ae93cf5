"""Owns the smoke tests of the real-Glance harness: Glance 33 behind the identity shim, through its proxy."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.realglance import GlanceCluster, GlanceHarnessError, running_glance

pytestmark = pytest.mark.real_glance

MIB = 1024 * 1024
OCTET = {"Content-Type": "application/octet-stream"}


@pytest.fixture(scope="module")
def glance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GlanceCluster]:
    with running_glance(("KR1", "KR2"), state_dir=tmp_path_factory.mktemp("realglance")) as cluster:
        yield cluster


async def get_token(session: aiohttp.ClientSession, cluster: GlanceCluster, tenant: str) -> dict[str, Any]:
    body = {"auth": {"tenantId": tenant, "passwordCredentials": {"username": f"user-{tenant}", "password": "pw"}}}
    async with session.post(f"{cluster.identity_url}/tokens", json=body) as resp:
        assert resp.status == 200, await resp.text()
        access: dict[str, Any] = (await resp.json())["access"]
        return access


async def create_image(session: aiohttp.ClientSession, base: str, token: str, **extra: str) -> dict[str, Any]:
    body = {"name": "smoke", "disk_format": "raw", "container_format": "bare", **extra}
    async with session.post(f"{base}/v2/images", json=body, headers={"X-Auth-Token": token}) as resp:
        assert resp.status == 201, await resp.text()
        image: dict[str, Any] = await resp.json()
        return image


async def upload(session: aiohttp.ClientSession, base: str, token: str, image_id: str, data: bytes) -> None:
    headers = {"X-Auth-Token": token, **OCTET}
    # BytesIO: aiohttp still sends a Content-Length, without its large-raw-bytes ResourceWarning.
    body = io.BytesIO(data)
    async with session.put(f"{base}/v2/images/{image_id}/file", data=body, headers=headers) as resp:
        assert resp.status == 204, await resp.text()


async def show(session: aiohttp.ClientSession, base: str, token: str, image_id: str) -> tuple[int, Any]:
    headers = {"X-Auth-Token": token, "Accept": "application/json"}
    async with session.get(f"{base}/v2/images/{image_id}", headers=headers) as resp:
        return resp.status, await resp.json()


async def test_token_catalog_lists_every_region_proxy(glance: GlanceCluster) -> None:
    """A v2.0 token response carries an image serviceCatalog listing each region's proxy URL."""
    async with aiohttp.ClientSession() as session:
        access = await get_token(session, glance, "tenant-a")
    assert len(access["token"]["id"]) == 32
    assert access["token"]["tenant"]["id"] == "tenant-a"
    (service,) = access["serviceCatalog"]
    assert service["type"] == "image"
    assert {e["region"]: e["publicURL"] for e in service["endpoints"]} == glance.regions
    assert access["metadata"]["roles"] == ["member", "reader"]


async def test_upload_is_active_with_matching_hashes_and_range_works(glance: GlanceCluster) -> None:
    """A 5 MiB upload becomes active with Glance's md5/sha512, and a Range GET gives 206 + Content-Range."""
    data = os.urandom(5 * MIB)
    base = glance.regions["KR1"]
    async with aiohttp.ClientSession() as session:
        token = (await get_token(session, glance, "tenant-a"))["token"]["id"]
        image = await create_image(session, base, token)
        assert image["status"] == "queued"
        await upload(session, base, token, image["id"], data)
        status, shown = await show(session, base, token, image["id"])
        assert status == 200
        assert shown["status"] == "active"
        assert shown["size"] == len(data)
        assert shown["checksum"] == hashlib.md5(data).hexdigest()
        assert shown["os_hash_algo"] == "sha512"
        assert shown["os_hash_value"] == hashlib.sha512(data).hexdigest()

        headers = {"X-Auth-Token": token, "Range": "bytes=100-1123"}
        async with session.get(f"{base}/v2/images/{image['id']}/file", headers=headers) as resp:
            assert resp.status == 206
            assert resp.headers["Content-Range"] == f"bytes 100-1123/{len(data)}"
            assert resp.headers["Content-MD5"] == hashlib.md5(data).hexdigest()
            assert await resp.read() == data[100:1124]


async def test_other_tenant_sees_404_until_added_as_member(glance: GlanceCluster) -> None:
    """Tenant B gets 404 for tenant A's shared image until A adds B as a member."""
    base = glance.regions["KR2"]
    async with aiohttp.ClientSession() as session:
        token_a = (await get_token(session, glance, "tenant-a"))["token"]["id"]
        token_b = (await get_token(session, glance, "tenant-b"))["token"]["id"]
        image = await create_image(session, base, token_a, visibility="shared")
        status, body = await show(session, base, token_b, image["id"])
        assert status == 404, body
        members_url = f"{base}/v2/images/{image['id']}/members"
        async with session.post(members_url, json={"member": "tenant-b"}, headers={"X-Auth-Token": token_a}) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["status"] == "pending"
        status, body = await show(session, base, token_b, image["id"])
        assert status == 200, body
        assert body["owner"] == "tenant-a"
        # Regions are independent: the image does not exist in KR1.
        status, _ = await show(session, glance.regions["KR1"], token_a, image["id"])
        assert status == 404


async def test_bad_token_gets_glance_style_401(glance: GlanceCluster) -> None:
    """A missing or unknown token gets 401 with Glance's JSON error body and a Keystone WWW-Authenticate."""
    base = glance.regions["KR1"]
    async with aiohttp.ClientSession() as session:
        for headers in (
            {},
            {"X-Auth-Token": "0" * 32},
            {"X-Roles": "admin", "X-Identity-Status": "Confirmed"},
        ):
            async with session.get(f"{base}/v2/images", headers={**headers, "Accept": "application/json"}) as r:
                assert r.status == 401
                assert r.headers["WWW-Authenticate"].startswith("Keystone uri=")
                body = await r.json()
                assert body["code"] == "401 Unauthorized"
                assert body["title"] == "Unauthorized"
        # Version discovery needs no token, as with keystonemiddleware's delay_auth_decision.
        async with session.get(f"{base}/versions") as r:
            assert r.status == 200
            assert (await r.json())["versions"][0]["links"][0]["href"] == f"{base}/v2/"


async def test_token_ttl_change_makes_a_token_expire(glance: GlanceCluster) -> None:
    """After the admin endpoint shortens the TTL, a newly issued token works and then expires (401)."""
    base = glance.regions["KR1"]
    glance.set_token_ttl(1.5)
    try:
        async with aiohttp.ClientSession() as session:
            token = (await get_token(session, glance, "tenant-a"))["token"]["id"]
            async with session.get(f"{base}/v2/images", headers={"X-Auth-Token": token}) as r:
                assert r.status == 200
            deadline = time.monotonic() + 10
            status = 200
            while status == 200 and time.monotonic() < deadline:
                await asyncio.sleep(0.25)
                async with session.get(f"{base}/v2/images", headers={"X-Auth-Token": token}) as r:
                    status = r.status
            assert status == 401
    finally:
        glance.set_token_ttl(3600)


async def test_expire_tokens_revokes_live_tokens(glance: GlanceCluster) -> None:
    """The admin expire-tokens call turns every live token into a 401; a fresh token works again."""
    base = glance.regions["KR2"]
    async with aiohttp.ClientSession() as session:
        token = (await get_token(session, glance, "tenant-a"))["token"]["id"]
        glance.expire_tokens()
        async with session.get(f"{base}/v2/images", headers={"X-Auth-Token": token}) as r:
            assert r.status == 401
        token = (await get_token(session, glance, "tenant-a"))["token"]["id"]
        async with session.get(f"{base}/v2/images", headers={"X-Auth-Token": token}) as r:
            assert r.status == 200


async def test_four_concurrent_uploads_all_succeed(glance: GlanceCluster) -> None:
    """Four parallel uploads into one region all succeed (BEGIN IMMEDIATE: no 'database is locked')."""
    base = glance.regions["KR1"]
    payloads = [os.urandom(5 * MIB) for _ in range(4)]
    async with aiohttp.ClientSession() as session:
        token = (await get_token(session, glance, "tenant-c"))["token"]["id"]
        images = await asyncio.gather(*(create_image(session, base, token) for _ in payloads))
        await asyncio.gather(
            *(upload(session, base, token, img["id"], data) for img, data in zip(images, payloads, strict=True))
        )
        for img, data in zip(images, payloads, strict=True):
            status, shown = await show(session, base, token, img["id"])
            assert status == 200
            assert (shown["status"], shown["size"]) == ("active", len(data))
            assert shown["checksum"] == hashlib.md5(data).hexdigest()


# ------------------------------------------------------------------------------ process hygiene


def _live_pids_mentioning(text: str) -> list[int]:
    """Pids of non-zombie processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def test_stop_leaves_no_process(tmp_path: Path) -> None:
    """Leaving running_glance() stops the uwsgi master, its workers and the shim, and nothing else."""
    state = tmp_path / "one-region"
    users = {"alice": {"password": "pw"}}
    with running_glance(("KR1",), state_dir=state, users=users, processes=1) as cluster:
        pids = _live_pids_mentioning(str(state))
        # uwsgi master + 1 worker + the shim (its --users file lives in the state dir).
        assert len(pids) == 3, pids
        assert all(os.getpgid(pid) in cluster.process_groups for pid in pids)
    assert _live_pids_mentioning(str(state)) == []


def test_failed_start_raises_and_cleans_up(tmp_path: Path) -> None:
    """A start-up that fails halfway (bad users file for the shim) raises clearly and leaves no process."""
    state = tmp_path / "broken"
    with pytest.raises(GlanceHarnessError, match="identity shim"):
        with running_glance(("KR1",), state_dir=state, users={"alice": {"no-pw": True}}, processes=1):
            pytest.fail("start-up should have failed")
    assert _live_pids_mentioning(str(state)) == []
