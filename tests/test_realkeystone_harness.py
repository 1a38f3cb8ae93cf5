"""Owns the tests of the real-Keystone part of the harness: Keystone 30 v3 tokens, its catalog, application
credentials and keystonemiddleware validation in the same Glance 33 regions the NHN v2.0 shim fronts."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.realglance import GlanceCluster, GlanceHarnessError, KeystoneCluster, running_glance

pytestmark = pytest.mark.real_keystone

REGIONS = ("KR1", "KR2", "JP1")
INTERFACES = ("public", "internal", "admin")
JSON = {"Accept": "application/json"}


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GlanceCluster]:
    # running_glance stops every process it started on any exit, start-up failures included.
    with running_glance(REGIONS, state_dir=tmp_path_factory.mktemp("realkeystone"), keystone=True) as running:
        yield running


@pytest.fixture(scope="session")
def keystone(cluster: GlanceCluster) -> KeystoneCluster:
    assert cluster.keystone is not None
    return cluster.keystone


# ------------------------------------------------------------------------------------------ helpers


def password_auth(user: dict[str, Any], password: str, scope: dict[str, Any] | None) -> dict[str, Any]:
    auth: dict[str, Any] = {"identity": {"methods": ["password"], "password": {"user": {**user, "password": password}}}}
    if scope is not None:
        auth["scope"] = scope
    return {"auth": auth}


def app_cred_auth(**credential: Any) -> dict[str, Any]:
    return {"auth": {"identity": {"methods": ["application_credential"], "application_credential": credential}}}


async def post_token(
    session: aiohttp.ClientSession, keystone: KeystoneCluster, body: dict[str, Any]
) -> tuple[int, str | None, dict[str, Any]]:
    async with session.post(f"{keystone.url}/auth/tokens", json=body, headers=JSON) as resp:
        return resp.status, resp.headers.get("X-Subject-Token"), await resp.json()


async def token_of(session: aiohttp.ClientSession, keystone: KeystoneCluster, body: dict[str, Any]) -> str:
    status, token, doc = await post_token(session, keystone, body)
    assert status == 201, doc
    assert token
    return token


async def validate(session: aiohttp.ClientSession, keystone: KeystoneCluster, token: str) -> tuple[int, Any]:
    """GET /v3/auth/tokens as keystonemiddleware does (an admin token checking a subject token)."""
    headers = {"X-Auth-Token": keystone.admin_token(), "X-Subject-Token": token, **JSON}
    async with session.get(f"{keystone.url}/auth/tokens", headers=headers) as resp:
        return resp.status, await resp.json()


async def list_images(session: aiohttp.ClientSession, base: str, token: str) -> tuple[int, Any]:
    async with session.get(f"{base}/v2/images", headers={"X-Auth-Token": token, **JSON}) as resp:
        return resp.status, await resp.json()


def image_catalog(token_body: dict[str, Any]) -> dict[tuple[str, str], str]:
    (service,) = [s for s in token_body["catalog"] if s["type"] == "image"]
    return {(e["region_id"], e["interface"]): e["url"] for e in service["endpoints"]}


def parse_time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


# ------------------------------------------------------------------------------------------- tokens


async def test_password_token_by_names_with_domains_lists_every_image_endpoint(keystone: KeystoneCluster) -> None:
    """A password token by user+project names with domain names is scoped to that project and its catalog
    lists the image endpoints of 3 regions x 3 interfaces, all distinct URLs."""
    body = password_auth(
        {"name": "migrator", "domain": {"name": "Default"}},
        keystone.user("migrator").password,
        {"project": {"name": "src-project", "domain": {"name": "Default"}}},
    )
    async with aiohttp.ClientSession() as session:
        status, token, doc = await post_token(session, keystone, body)
    assert status == 201, doc
    assert token
    token_body = doc["token"]
    assert token_body["project"]["id"] == keystone.project("src-project").id
    assert token_body["user"]["id"] == keystone.user("migrator").id
    assert {r["name"] for r in token_body["roles"]} >= {"member", "reader"}
    catalog = image_catalog(token_body)
    expected = {(r, i): keystone.endpoints[r][i] for r in REGIONS for i in INTERFACES}
    assert catalog == expected
    assert len(set(catalog.values())) == len(REGIONS) * len(INTERFACES)
    identity = [s for s in token_body["catalog"] if s["type"] == "identity"]
    assert {e["url"] for e in identity[0]["endpoints"]} == {keystone.url}


async def test_same_names_in_other_domain_resolve_to_other_ids(keystone: KeystoneCluster) -> None:
    """User and project names are only unique per domain: other/migrator on other/src-project (by domain name
    and by domain id) gets the other domain's ids, and the default user's password does not work there."""
    other_user, other_project = keystone.user("migrator", "other"), keystone.project("src-project", "other")
    assert other_project.id != keystone.project("src-project").id
    async with aiohttp.ClientSession() as session:
        for domain in ({"name": "other"}, {"id": keystone.domains["other"]}):
            body = password_auth(
                {"name": "migrator", "domain": domain},
                other_user.password,
                {"project": {"name": "src-project", "domain": domain}},
            )
            status, _, doc = await post_token(session, keystone, body)
            assert status == 201, doc
            assert doc["token"]["project"]["id"] == other_project.id
            assert doc["token"]["project"]["domain"]["id"] == keystone.domains["other"]
            assert doc["token"]["user"]["id"] == other_user.id
        wrong = password_auth(
            {"name": "migrator", "domain": {"name": "other"}},
            keystone.user("migrator").password,
            {"project": {"name": "src-project", "domain": {"name": "other"}}},
        )
        status, _, doc = await post_token(session, keystone, wrong)
        assert status == 401, doc


async def test_password_token_by_ids(keystone: KeystoneCluster) -> None:
    """A password token by user id and project id is scoped to that project (dst-project here)."""
    user, project = keystone.user("migrator"), keystone.project("dst-project")
    body = password_auth({"id": user.id}, user.password, {"project": {"id": project.id}})
    async with aiohttp.ClientSession() as session:
        status, token, doc = await post_token(session, keystone, body)
    assert status == 201, doc
    assert token
    assert doc["token"]["project"]["id"] == project.id
    assert doc["token"]["project"]["name"] == "dst-project"
    assert doc["token"]["methods"] == ["password"]


async def test_application_credential_token_by_id_and_by_name_and_user(keystone: KeystoneCluster) -> None:
    """An application credential authenticates by id+secret and by name+user (id, or name+domain) and its
    token is scoped to the credential's project without any scope block."""
    cred = keystone.application_credential
    bodies = [
        app_cred_auth(id=cred.id, secret=cred.secret),
        app_cred_auth(name=cred.name, user={"id": cred.user_id}, secret=cred.secret),
        app_cred_auth(name=cred.name, user={"name": "migrator", "domain": {"name": "Default"}}, secret=cred.secret),
    ]
    async with aiohttp.ClientSession() as session:
        for body in bodies:
            status, token, doc = await post_token(session, keystone, body)
            assert status == 201, (body, doc)
            assert token
            assert doc["token"]["project"]["id"] == cred.project_id == keystone.project("src-project").id
            assert doc["token"]["methods"] == ["application_credential"]
            assert doc["token"]["application_credential"]["id"] == cred.id
            assert image_catalog(doc["token"])[("KR1", "public")] == keystone.endpoints["KR1"]["public"]
        status, _, doc = await post_token(session, keystone, app_cred_auth(id=cred.id, secret="wrong"))
        assert status == 401, doc


async def test_tokens_issued_counts_keystone_answers(keystone: KeystoneCluster) -> None:
    """tokens_issued() grows by one per token Keystone issues and not for a refused authentication."""
    user = keystone.user("viewer")
    before = keystone.tokens_issued()
    async with aiohttp.ClientSession() as session:
        body = password_auth({"id": user.id}, user.password, {"project": {"id": keystone.project("src-project").id}})
        await token_of(session, keystone, body)
        await token_of(session, keystone, body)
        status, _, _ = await post_token(session, keystone, password_auth({"id": user.id}, "wrong", None))
        assert status == 401
    assert keystone.tokens_issued() == before + 2


# ------------------------------------------------------------------------------------------ Glance


async def test_keystone_token_lists_and_creates_image_owned_by_the_project(keystone: KeystoneCluster) -> None:
    """With an application-credential token every region's public endpoint lists images (200), and an image
    created in KR2 is owned by the Keystone project id and visible through KR2's internal and admin ports."""
    cred = keystone.application_credential
    project_id = keystone.project("src-project").id
    async with aiohttp.ClientSession() as session:
        token = await token_of(session, keystone, app_cred_auth(id=cred.id, secret=cred.secret))
        for region in REGIONS:
            status, doc = await list_images(session, keystone.endpoints[region]["public"], token)
            assert status == 200, (region, doc)
        kr2 = keystone.endpoints["KR2"]
        body = {"name": "ks-owned", "disk_format": "raw", "container_format": "bare"}
        async with session.post(f"{kr2['public']}/v2/images", json=body, headers={"X-Auth-Token": token}) as r:
            assert r.status == 201, await r.text()
            image = await r.json()
        assert image["owner"] == project_id
        for interface in ("internal", "admin"):
            status, doc = await list_images(session, kr2[interface], token)
            assert status == 200, doc
            assert [i["id"] for i in doc["images"]] == [image["id"]]
        # Regions are independent: KR1 has no such image.
        status, doc = await list_images(session, keystone.endpoints["KR1"]["public"], token)
        assert image["id"] not in [i["id"] for i in doc["images"]]


async def test_reader_only_user_can_list_but_not_create(keystone: KeystoneCluster) -> None:
    """Keystone roles reach Glance's policies: default/viewer (reader only) lists (200) but creating gives 403."""
    user, project = keystone.user("viewer"), keystone.project("src-project")
    base = keystone.endpoints["KR1"]["public"]
    async with aiohttp.ClientSession() as session:
        token = await token_of(
            session, keystone, password_auth({"id": user.id}, user.password, {"project": {"id": project.id}})
        )
        status, _ = await list_images(session, base, token)
        assert status == 200
        body = {"name": "nope", "disk_format": "raw", "container_format": "bare"}
        async with session.post(f"{base}/v2/images", json=body, headers={"X-Auth-Token": token, **JSON}) as r:
            assert r.status == 403, await r.text()


async def test_bogus_or_spoofed_requests_get_401_from_the_region(keystone: KeystoneCluster) -> None:
    """A bogus token, no token, spoofed identity headers or a wrong shim marker all get 401 from the region
    itself, with keystonemiddleware's WWW-Authenticate naming the real Keystone."""
    base = keystone.endpoints["JP1"]["public"]
    cases: list[dict[str, str]] = [
        {"X-Auth-Token": "gAAAAABbogus-token"},
        {"X-Auth-Token": "0" * 32},
        {},
        {"X-Identity-Status": "Confirmed", "X-Roles": "admin", "X-Project-Id": "x"},
        {"X-Imgmig-Trusted-Proxy": "not-the-secret", "X-Identity-Status": "Confirmed", "X-Roles": "admin"},
    ]
    async with aiohttp.ClientSession() as session:
        for headers in cases:
            async with session.get(f"{base}/v2/images", headers={**headers, **JSON}) as r:
                assert r.status == 401, (headers, await r.text())
                assert r.headers["WWW-Authenticate"] == f'Keystone uri="{keystone.url}"'
                assert (await r.json())["title"] == "Unauthorized"
        # Version discovery needs no token (delay_auth_decision), on every interface's port.
        for interface in INTERFACES:
            url = keystone.endpoints["JP1"][interface]
            async with session.get(f"{url}/versions") as r:
                assert r.status == 200
                assert (await r.json())["versions"][0]["links"][0]["href"] == f"{url}/v2/"


async def test_shim_v2_tokens_still_work_on_the_same_regions(cluster: GlanceCluster) -> None:
    """With Keystone on, the NHN v2.0 shim path still works: its token lists and creates through the proxy,
    and the image owner is the shim's tenant."""
    async with aiohttp.ClientSession() as session:
        body = {"auth": {"tenantId": "tenant-a", "passwordCredentials": {"username": "u", "password": "pw"}}}
        async with session.post(f"{cluster.identity_url}/tokens", json=body) as r:
            assert r.status == 200
            token = (await r.json())["access"]["token"]["id"]
        base = cluster.regions["KR1"]
        status, _ = await list_images(session, base, token)
        assert status == 200
        image = {"name": "shim-owned", "disk_format": "raw", "container_format": "bare"}
        async with session.post(f"{base}/v2/images", json=image, headers={"X-Auth-Token": token}) as r:
            assert r.status == 201, await r.text()
            assert (await r.json())["owner"] == "tenant-a"
        # A shim token is not a Keystone token: sent to the region directly it gets 401.
        status, _ = await list_images(session, cluster.upstreams["KR1"], token)
        assert status == 401


async def test_deleted_application_credential_stops_auth_and_its_issued_tokens(keystone: KeystoneCluster) -> None:
    """After its application credential is deleted, authenticating with it fails (404 Could not find
    Application Credential, by id; 401 by name) and a token issued from it before is no longer valid at
    once: Keystone's validation gives 404 and the region 401."""
    cred = keystone.create_application_credential("to-delete")
    base = keystone.endpoints["KR1"]["public"]
    async with aiohttp.ClientSession() as session:
        token = await token_of(session, keystone, app_cred_auth(id=cred.id, secret=cred.secret))
        assert (await validate(session, keystone, token))[0] == 200
        assert (await list_images(session, base, token))[0] == 200

        keystone.delete_application_credential(cred)

        status, _, by_id = await post_token(session, keystone, app_cred_auth(id=cred.id, secret=cred.secret))
        assert status == 404, by_id
        assert "Could not find Application Credential" in by_id["error"]["message"]
        by_name = app_cred_auth(name=cred.name, user={"id": cred.user_id}, secret=cred.secret)
        status, _, doc = await post_token(session, keystone, by_name)
        assert status == 401, doc

        status, doc = await validate(session, keystone, token)
        assert status == 404, doc
        assert "Could not find Application Credential" in doc["error"]["message"]
        status, doc = await list_images(session, base, token)
        assert status == 401, doc
    # The session-wide credential is untouched.
    assert keystone.application_credential.id != cred.id


async def test_short_token_expiration_applies_to_new_tokens(keystone: KeystoneCluster) -> None:
    """set_token_expiration(2) gives new tokens a 2 s lifetime: such a token works, then gets 401 from the
    region (and 404 from Keystone's validation); a token issued before keeps its long lifetime."""
    user, project = keystone.user("migrator"), keystone.project("src-project")
    body = password_auth({"id": user.id}, user.password, {"project": {"id": project.id}})
    base = keystone.endpoints["KR2"]["public"]
    async with aiohttp.ClientSession() as session:
        long_token = await token_of(session, keystone, body)
        keystone.set_token_expiration(2)
        try:
            status, short_token, doc = await post_token(session, keystone, body)
        finally:
            keystone.set_token_expiration(3600)
        assert status == 201, doc
        assert short_token
        lifetime = parse_time(doc["token"]["expires_at"]) - parse_time(doc["token"]["issued_at"])
        assert lifetime == dt.timedelta(seconds=2)
        assert (await list_images(session, base, short_token))[0] == 200
        deadline = time.monotonic() + 10
        status = 200
        while status == 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            status, _ = await list_images(session, base, short_token)
        assert status == 401
        assert (await validate(session, keystone, short_token))[0] == 404
        assert (await list_images(session, base, long_token))[0] == 200
        # Back at 3600 s for tokens issued now.
        status, _, doc = await post_token(session, keystone, body)
        lifetime = parse_time(doc["token"]["expires_at"]) - parse_time(doc["token"]["issued_at"])
        assert lifetime == dt.timedelta(seconds=3600)


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


def test_stop_leaves_no_keystone_process(tmp_path: Path) -> None:
    """Leaving running_glance(keystone=True) stops Keystone's uwsgi master and workers too, and nothing else."""
    state = tmp_path / "ks-one-region"
    users = {"alice": {"password": "pw"}}
    with running_glance(("KR1",), state_dir=state, users=users, processes=1, keystone=True, keystone_processes=1) as c:
        pids = _live_pids_mentioning(str(state))
        # Glance uwsgi master + 1 worker, Keystone uwsgi master + 1 worker, the shim.
        assert len(pids) == 5, pids
        assert all(os.getpgid(pid) in c.process_groups for pid in pids)
    assert _live_pids_mentioning(str(state)) == []


def test_failed_start_with_keystone_raises_and_cleans_up(tmp_path: Path) -> None:
    """A start-up that fails after Keystone and Glance are up (bad shim users file) raises and leaves no process."""
    state = tmp_path / "ks-broken"
    with pytest.raises(GlanceHarnessError, match="identity shim"):
        with running_glance(
            ("KR1",),
            state_dir=state,
            users={"alice": {"no-pw": True}},
            processes=1,
            keystone=True,
            keystone_processes=1,
        ):
            pytest.fail("start-up should have failed")
    assert _live_pids_mentioning(str(state)) == []
