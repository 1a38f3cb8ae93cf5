"""Owns the tests of pipeline/cloud/keystone.py (and cloudconfig's KeystoneAuth) against the real Keystone 30
of the harness and the real Glance 33 regions that accept its tokens."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import anyio
import pytest
import yaml

from pipeline.cloud import ImageClient, Secret, new_session
from pipeline.cloud.cloudconfig import keystone_auth, load_cloud
from pipeline.cloud.keystone import KeystoneAuth
from pipeline.config.values import normalize_endpoint
from pipeline.errors import ApiError, AuthenticationError, RegionNotFoundError
from tests.realglance import KeystoneCluster

pytestmark = pytest.mark.real_keystone

REGIONS = ("KR1", "KR2", "JP1")


@dataclass
class Seen:
    """Every request a traced session sent: (method, url, status)."""

    requests: list[tuple[str, str, int]] = field(default_factory=list)

    def to(self, path_end: str, method: str = "POST") -> int:
        return sum(1 for m, url, _ in self.requests if m == method and url.endswith(path_end))

    def statuses(self, status: int) -> int:
        return sum(1 for _, _, s in self.requests if s == status)


@pytest.fixture
async def traced() -> AsyncIterator[tuple[aiohttp.ClientSession, Seen]]:
    """A plain aiohttp session with a public TraceConfig recording each request's method, URL and status."""
    seen = Seen()

    async def on_end(_: aiohttp.ClientSession, __: SimpleNamespace, params: aiohttp.TraceRequestEndParams) -> None:
        seen.requests.append((params.method, str(params.url), params.response.status))

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_end)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        yield session, seen


def password_auth(keystone: KeystoneCluster, profile: str = "src", **overrides: Any) -> KeystoneAuth:
    user = keystone.user("migrator")
    fields: dict[str, Any] = {
        "auth_url": keystone.url,
        "profile": profile,
        "username": "migrator",
        "user_domain_name": "Default",
        "password": Secret(user.password),
        "project_name": "src-project",
        "project_domain_name": "Default",
    }
    return KeystoneAuth(**{**fields, **overrides})


def app_cred_auth(keystone: KeystoneCluster, cred_id: str, secret: str, **overrides: Any) -> KeystoneAuth:
    fields: dict[str, Any] = {"application_credential_id": cred_id, "application_credential_secret": Secret(secret)}
    return KeystoneAuth(auth_url=keystone.url, profile="app", **{**fields, **overrides})


async def names(client: ImageClient) -> list[str]:
    return [str(image.raw.get("name")) async for image in client.list_images()]


async def test_password_by_names_and_by_ids_scopes_token_and_lists_three_regions(keystone: KeystoneCluster) -> None:
    """Password auth by names + domain names, by ids (auth_url without /v3) and in the other domain by domain id
    gets a token scoped to the right project and the public image endpoints of KR1, KR2 and JP1."""
    base = keystone.url.removesuffix("/v3")
    user, dst = keystone.user("migrator"), keystone.project("dst-project")
    other_user = keystone.user("migrator", "other")
    cases = [
        (password_auth(keystone), keystone.project("src-project").id),
        (
            password_auth(
                keystone, auth_url=base + "/", username=None, user_id=user.id, project_name=None, project_id=dst.id
            ),
            dst.id,
        ),
        (
            password_auth(
                keystone,
                user_domain_name=None,
                user_domain_id=keystone.domains["other"],
                project_domain_name="other",
                password=Secret(other_user.password),
            ),
            keystone.project("src-project", "other").id,
        ),
    ]
    async with new_session() as session:
        for auth, project_id in cases:
            assert auth.tenant_id is None
            token = await auth.token(session)
            assert auth.tenant_id == token.tenant_id == project_id
            for region in REGIONS:
                assert await auth.endpoint(session, region) == normalize_endpoint(keystone.endpoints[region]["public"])
            assert set(token.endpoints) == set(REGIONS)
            assert token.expires_at - time.time() > 3000  # the harness issues one-hour tokens
            assert auth.issued == 1


async def test_interface_selection_and_unknown_region(keystone: KeystoneCluster) -> None:
    """interface internal / adminURL picks those catalog URLs (each a different port) and lists images through
    them; an unknown region raises RegionNotFoundError listing the catalog's regions."""
    async with new_session() as session:
        for interface, expected in (("internal", "internal"), ("adminURL", "admin")):
            auth = password_auth(keystone, interface=interface)
            assert auth.interface == expected
            for region in REGIONS:
                assert await auth.endpoint(session, region) == normalize_endpoint(keystone.endpoints[region][expected])
            await names(ImageClient(session, auth, "JP1"))
        with pytest.raises(RegionNotFoundError) as missing:
            await auth.endpoint(session, "US1")
    assert missing.value.available == sorted(REGIONS)  # the catalog's own order is Keystone's, not stable
    assert "JP1, KR1, KR2" in str(missing.value)


async def test_application_credential_lists_and_creates_in_kr2(keystone: KeystoneCluster) -> None:
    """An application credential (by id, and by name + user name + domain) needs no scope: ImageClient lists KR2,
    and an image it creates there is owned by the credential's project and then listed."""
    cred = keystone.application_credential
    by_name = app_cred_auth(
        keystone,
        "",
        cred.secret,
        application_credential_id=None,
        application_credential_name=cred.name,
        username="migrator",
        user_domain_name="Default",
    )
    async with new_session() as session:
        auth = app_cred_auth(keystone, cred.id, cred.secret)
        client = ImageClient(session, auth, "KR2")
        before = await names(client)
        created = await client.create_image({"name": "ks-app-cred", "disk_format": "raw", "container_format": "bare"})
        assert created.raw["owner"] == cred.project_id == auth.tenant_id
        assert sorted(await names(client)) == sorted([*before, "ks-app-cred"])
        assert "ks-app-cred" in await names(ImageClient(session, by_name, "KR2"))
        assert by_name.tenant_id == cred.project_id
        await client.delete_image(str(created.raw["id"]))


async def test_wrong_password_is_fatal_after_one_request(
    keystone: KeystoneCluster, traced: tuple[aiohttp.ClientSession, Seen]
) -> None:
    """A wrong password raises AuthenticationError naming the profile and identity; asked again, it raises the same
    error without a second request to Keystone; no token is issued and the password is in no message."""
    session, seen = traced
    auth = password_auth(keystone, profile="nhn-src", password=Secret("wrong-S3CRET-pw"))
    issued = keystone.tokens_issued()
    with pytest.raises(AuthenticationError) as first:
        await auth.token(session)
    with pytest.raises(AuthenticationError) as second:
        await auth.endpoint(session, "KR1")
    assert second.value is first.value
    assert seen.to("/v3/auth/tokens") == 1
    assert keystone.tokens_issued() == issued
    message = str(first.value)
    assert "auth profile 'nhn-src'" in message
    assert "password of user 'migrator'" in message
    assert first.value.status == 401
    assert first.value.fatal
    assert first.value.exit_code == 4
    assert not isinstance(first.value, ApiError)
    assert "wrong-S3CRET-pw" not in message + repr(first.value.args)


async def test_many_waiters_share_one_token_request(
    keystone: KeystoneCluster, traced: tuple[aiohttp.ClientSession, Seen]
) -> None:
    """Twenty tasks asking for a token at once cause one POST /v3/auth/tokens and all get the same token."""
    session, seen = traced
    auth = password_auth(keystone)
    tokens: list[Any] = []

    async def ask() -> None:
        tokens.append(await auth.token(session))

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(ask)
    assert len(tokens) == 20
    assert len({id(t) for t in tokens}) == 1
    assert seen.to("/v3/auth/tokens") == 1


async def test_short_lived_tokens_are_refreshed_before_expiry(
    keystone: KeystoneCluster, traced: tuple[aiohttp.ClientSession, Seen]
) -> None:
    """With 6 s tokens, 13 s of image listings all succeed on refreshed tokens: at least 3 tokens issued, each
    fetched while the one before was still valid, and the region never answered 401. (6 s rather than
    less: on a loaded 2-core machine a request may take a second to reach keystonemiddleware.)"""
    session, seen = traced
    keystone.set_token_expiration(6)
    try:
        auth = password_auth(keystone)
        client = ImageClient(session, auth, "KR1")
        issued_before = keystone.tokens_issued()
        used: dict[str, tuple[float, float]] = {}  # token id -> (issued_at, expires_at), in order of first use
        deadline = time.monotonic() + 13
        while time.monotonic() < deadline:
            token = await auth.token(session)
            used.setdefault(token.id.reveal(), (token.issued_at, token.expires_at))
            await names(client)
            await anyio.sleep(0.25)
    finally:
        keystone.set_token_expiration(3600)
    assert auth.issued >= 3
    assert len(used) == auth.issued
    assert seen.to("/v3/auth/tokens") == auth.issued  # one POST per token, no refused or repeated request
    # Keystone's own count includes the tokens Glance's keystonemiddleware now renews every 3 s too
    assert keystone.tokens_issued() - issued_before >= auth.issued
    assert seen.statuses(401) == 0
    lives = list(used.values())
    # 6 s on Keystone's clock, less the second its whole-second issued_at may hide
    assert all(expires - issued == pytest.approx(5.0) for issued, expires in lives)
    # each new token was fetched while the one before was still valid: refreshed before expiry, not after a 401
    assert all(new_issued < old_expires for (_, old_expires), (new_issued, _) in itertools.pairwise(lives))


async def test_deleted_application_credential_is_fatal_on_next_refresh(
    keystone: KeystoneCluster, traced: tuple[aiohttp.ClientSession, Seen]
) -> None:
    """Once its application credential is deleted, the next listing gets 401, the refresh gets Keystone's 404,
    and that is an AuthenticationError (exit 4) naming the profile and credential; it is never sent again."""
    session, seen = traced
    cred = keystone.create_application_credential("imgmig-to-delete")
    auth = app_cred_auth(keystone, cred.id, cred.secret)
    client = ImageClient(session, auth, "KR1")
    await names(client)
    keystone.delete_application_credential(cred)
    with pytest.raises(AuthenticationError) as refused:
        await names(client)
    assert refused.value.status == 404
    assert f"auth profile 'app': Keystone refused the application credential id {cred.id!r}" in str(refused.value)
    assert cred.secret not in str(refused.value)
    assert refused.value.fatal
    assert refused.value.exit_code == 4
    posts = seen.to("/v3/auth/tokens")
    assert posts == 2  # the first token, then the refused refresh
    with pytest.raises(AuthenticationError):
        await auth.token(session)
    assert seen.to("/v3/auth/tokens") == posts


async def test_clouds_yaml_profile_lists_images_on_the_real_region(keystone: KeystoneCluster, tmp_path: Path) -> None:
    """A clouds.yaml (auth_url without /v3, names + domains, regions list, interface internal) resolves into a
    KeystoneAuth whose ImageClient lists images of JP1 through JP1's internal endpoint."""
    user = keystone.user("migrator")
    cloud = {
        "auth": {
            "auth_url": keystone.url.removesuffix("/v3"),
            "username": "migrator",
            "password": user.password,
            "project_name": "dst-project",
            "user_domain_name": "Default",
            "project_domain_name": "Default",
        },
        "auth_type": "v3password",
        "regions": ["JP1", "KR1"],
        "interface": "internal",
    }
    path = tmp_path / "clouds.yaml"
    path.write_text(yaml.safe_dump({"clouds": {"real": cloud}}))
    resolved = load_cloud("real", config_files=[path], secure_files=[], load_envvars=False)
    auth = keystone_auth(resolved, "from-clouds-yaml")
    assert resolved.region_name == "JP1"
    async with new_session() as session:
        client = ImageClient(session, auth, resolved.region_name)
        assert await client.endpoint() == normalize_endpoint(keystone.endpoints["JP1"]["internal"])
        created = await client.create_image(
            {"name": "from-clouds-yaml", "disk_format": "raw", "container_format": "bare"}
        )
        assert "from-clouds-yaml" in await names(client)
        assert created.raw["owner"] == keystone.project("dst-project").id == auth.tenant_id
        await client.delete_image(str(created.raw["id"]))
