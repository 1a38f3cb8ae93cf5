"""Contract: NHN identity (Keystone v2.0 tokens), token refresh, version discovery, auth errors."""

from __future__ import annotations

import pytest

from pipeline.cloud import PasswordAuth, Secret
from pipeline.errors import AuthenticationError, RegionNotFoundError

from .cloud import FAST_RETRY, Cloud


async def test_token_has_id_expiry_and_image_catalog(cloud: Cloud) -> None:
    """A token request returns an id, an expiry in the future, the tenant, and every region's endpoint."""
    token = await cloud.auth().token(cloud.session)
    assert len(token.id.reveal()) >= 16
    assert token.tenant_id == cloud.t1
    assert set(cloud.regions) <= set(token.endpoints)
    for region, url in cloud.regions.items():
        assert token.endpoints[region] == url


async def test_raw_token_response_shape(cloud: Cloud) -> None:
    """The v2.0 token response carries access.token, serviceCatalog[type=image] and the user."""
    body = {"auth": {"tenantId": cloud.t1, "passwordCredentials": {"username": "u", "password": "p"}}}
    async with cloud.session.post(cloud.identity_url + "/tokens", json=body) as resp:
        assert resp.status == 200
        doc = await resp.json()
    access = doc["access"]
    assert access["token"]["tenant"]["id"] == cloud.t1
    assert access["token"]["expires"].endswith("Z")
    (image,) = [s for s in access["serviceCatalog"] if s["type"] == "image"]
    assert {e["region"] for e in image["endpoints"]} >= set(cloud.regions)
    assert access["user"]["username"] == "u"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"not json", 400),
        (b'{"nothing": 1}', 400),
        (b'{"auth": {"passwordCredentials": {"username": "u", "password": "p"}}}', 400),
        (b'{"auth": {"tenantId": "t", "passwordCredentials": {"username": "u", "password": ""}}}', 401),
    ],
    ids=["not-json", "no-auth", "no-tenant", "empty-password"],
)
async def test_identity_rejects_bad_requests(cloud: Cloud, body: bytes, status: int) -> None:
    """Malformed token requests get 400 and bad credentials 401, in Keystone's error format."""
    async with cloud.session.post(cloud.identity_url + "/tokens", data=body) as resp:
        assert resp.status == status
        doc = await resp.json(content_type=None)
    assert doc["error"]["code"] == status


async def test_bad_credentials_raise_authentication_error(cloud: Cloud) -> None:
    """The client turns refused credentials into AuthenticationError (exit code 4), naming user and tenant."""
    auth = PasswordAuth(cloud.identity_url, cloud.t1, "someone", Secret(""), retry=FAST_RETRY)
    with pytest.raises(AuthenticationError, match="refused user 'someone'") as info:
        await auth.token(cloud.session)
    assert info.value.exit_code == 4
    assert info.value.status == 401


async def test_unknown_region_is_a_usage_error(cloud: Cloud) -> None:
    """A region missing from the catalog is reported with the regions that exist."""
    client = cloud.client(region="XX9")
    with pytest.raises(RegionNotFoundError, match=r"available: .*KR1"):
        await client.get_image("00000000-0000-0000-0000-000000000000")


async def test_missing_or_bad_token_gets_401(cloud: Cloud) -> None:
    """Image API calls without a valid token get 401 with a WWW-Authenticate header."""
    root = cloud.identity_url.removesuffix("/v2.0")
    for token in (None, "not-a-token"):
        resp = await cloud.raw("GET", "/v2/images", token=token, headers={"Accept": "application/json"})
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == f'Keystone uri="{root}"'
        assert resp.json()["title"] == "Unauthorized"


async def test_client_refreshes_a_revoked_token_once(cloud: Cloud) -> None:
    """When the server stops accepting a token, the client gets a new one and retries the call once."""
    client = cloud.client()
    await client.create_image(cloud.image_fields(name="before"))
    issued = cloud.auth().issued
    stale = await cloud.token()
    async with cloud.session.delete(f"{cloud.identity_url}/tokens/{stale}") as resp:
        assert resp.status == 204
    names = [i.name async for i in client.list_images()]
    assert names == ["before"]
    assert cloud.auth().issued == issued + 1


async def test_versions_document_without_token(cloud: Cloud) -> None:
    """GET / answers 300 and /versions 200 with the v2 version list, no token needed."""
    root = await cloud.raw("GET", "/", token=None)
    assert root.status == 300
    versions = await cloud.raw("GET", "/versions", token=None)
    assert versions.status == 200
    ids = [v["id"] for v in versions.json()["versions"]]
    assert "v2.0" in ids
    assert any(v["status"] == "CURRENT" for v in versions.json()["versions"])
    assert all(link["href"].endswith("/v2/") for v in root.json()["versions"] for link in v["links"])
