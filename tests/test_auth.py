"""Identity pieces that need no server: token parsing, endpoint normalisation, refresh window, Secret."""

from __future__ import annotations

import pytest

from pipeline.cloud.auth import PasswordAuth, Token, parse_token_response
from pipeline.config.values import Secret, normalize_endpoint
from pipeline.errors import ProtocolError

ACCESS = {
    "access": {
        "token": {"id": "abc123", "expires": "2026-11-30T10:33:07Z", "issued_at": "2026-11-30T09:33:07.436799",
                  "tenant": {"id": "t1"}},
        "serviceCatalog": [
            {"type": "compute", "endpoints": [{"region": "KR1", "publicURL": "http://nova"}]},
            {"type": "image", "endpoints": [{"region": "KR1", "publicURL": "https://kr1-api-image/"},
                                            {"region": "JP1", "publicURL": "https://jp1/v2"}]},
        ],
    }
}  # fmt: skip


def test_parse_token_response() -> None:
    """Token id, expiry, tenant and the image endpoints per region come out of the access document."""
    token = parse_token_response(ACCESS, now=1_700_000_000.0)
    assert token.id.reveal() == "abc123"
    assert token.tenant_id == "t1"
    assert token.endpoints == {"KR1": "https://kr1-api-image", "JP1": "https://jp1"}
    assert token.expires_at - token.issued_at == pytest.approx(3600, abs=1)


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"access": {}},
        {"access": {"token": {"id": ""}}},
        {"access": {"token": {"id": "x", "expires": "soon"}}},
    ],
    ids=["empty", "no-token", "empty-id", "bad-expiry"],
)
def test_parse_token_response_rejects_malformed(doc: dict) -> None:  # type: ignore[type-arg]
    """A malformed identity answer is a ProtocolError, not a KeyError."""
    with pytest.raises(ProtocolError):
        parse_token_response(doc, now=0.0)


@pytest.mark.parametrize(
    ("url", "expected"),
    [("https://a/", "https://a"), ("https://a/v2", "https://a"), ("https://a/v2.1/", "https://a"),
     ("https://a/image", "https://a/image"), ("http://127.0.0.1:5/", "http://127.0.0.1:5")],
)  # fmt: skip
def test_normalize_endpoint(url: str, expected: str) -> None:
    """Catalog URLs lose a trailing slash and a version suffix, keeping any path prefix."""
    assert normalize_endpoint(url) == expected


def test_token_refreshes_before_expiry() -> None:
    """A token is refreshed in the last 10% of its life, at most 120 s before expiry."""
    hour = Token(Secret("x"), expires_at=3600.0, tenant_id=None, endpoints={}, issued_at=0.0)
    assert hour.fresh(3400.0)
    assert not hour.fresh(3500.0)
    short = Token(Secret("x"), expires_at=10.0, tenant_id=None, endpoints={}, issued_at=0.0)
    assert short.fresh(8.9)
    assert not short.fresh(9.1)


def test_secrets_never_show() -> None:
    """Secret and PasswordAuth reprs mask the password."""
    secret = Secret("hunter2-password")
    auth = PasswordAuth("http://id/v2.0", "t", "u", secret)
    for text in (repr(secret), str(secret), repr(auth), f"{auth}"):
        assert "hunter2" not in text
    assert secret.reveal() == "hunter2-password"
