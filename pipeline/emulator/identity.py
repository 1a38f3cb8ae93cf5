"""The emulator's NHN Cloud identity endpoint (Keystone v2.0 style): tokens, users, the service catalog.

Open mode accepts any tenant, username and non-empty password; a users file restricts that. Tokens map to
a tenant, expire after ``token_ttl`` seconds (changeable at runtime), and can be revoked, so tests can make
a token die in the middle of a job.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from .store import Caller, iso_now

__all__ = ["DEFAULT_TOKEN_TTL", "Identity", "TokenInfo", "identity_routes", "load_users"]

DEFAULT_TOKEN_TTL = 3600.0


@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: str
    caller: Caller
    username: str
    expires_at: float


@dataclass(slots=True)
class UserEntry:
    password: str
    tenants: tuple[str, ...]
    roles: tuple[str, ...] = ("member", "reader")


def load_users(path: Path) -> dict[str, UserEntry]:
    """Users file: ``{"users": [{"username", "password", "tenants": [...], "roles": [...]}]}``."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    users: dict[str, UserEntry] = {}
    for entry in doc.get("users", []):
        users[entry["username"]] = UserEntry(
            password=entry["password"],
            tenants=tuple(entry.get("tenants", [])),
            roles=tuple(entry.get("roles", ("member", "reader"))),
        )
    return users


def _issued_at(now: float) -> str:
    """Keystone's issued_at: seconds plus microseconds, no zone suffix."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}"


def _keystone_error(status: int, title: str, message: str) -> web.Response:
    body = json.dumps({"error": {"message": message, "code": status, "title": title}})
    return web.Response(status=status, body=body.encode(), content_type="application/json")


@dataclass
class Identity:
    """Token issuing and lookup, shared by the identity app and every region app."""

    token_ttl: float = DEFAULT_TOKEN_TTL
    #: This endpoint's own URL (``http://host:port/v2.0``), set once the server listens.
    url: str = ""
    users: dict[str, UserEntry] | None = None
    clock: Callable[[], float] = time.time
    catalog: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, TokenInfo] = field(default_factory=dict)
    issued: int = 0
    #: Tokens issued per tenant (tests count refreshes of one job's profile with it).
    issued_by_tenant: dict[str, int] = field(default_factory=dict)
    #: Passwords changed at runtime (``/_admin/password``): from then on only this one is accepted,
    #: also in open mode, so a test can make a credential die in the middle of a job.
    changed_passwords: dict[str, str] = field(default_factory=dict)
    #: Authentication attempts refused, per username (a dead credential must not be hammered).
    refused: dict[str, int] = field(default_factory=dict)

    def lookup(self, token_id: str | None) -> TokenInfo | None:
        """The live token, or None if unknown, revoked or expired."""
        if not token_id:
            return None
        info = self.tokens.get(token_id)
        if info is None or info.expires_at <= self.clock():
            return None
        return info

    def expire_all(self) -> int:
        """Revoke every token issued so far (the next call with any of them gets 401)."""
        count = len(self.tokens)
        self.tokens.clear()
        return count

    def authenticate(self, tenant: str, username: str, password: str) -> tuple[str, ...] | None:
        """The user's roles if the credentials are accepted, else None."""
        if not username or not password:
            return None
        changed = self.changed_passwords.get(username)
        if changed is not None and not secrets.compare_digest(changed, password):
            return None
        if self.users is None:
            return ("member", "reader")
        entry = self.users.get(username)
        if entry is None or (changed is None and not secrets.compare_digest(entry.password, password)):
            return None
        if entry.tenants and tenant not in entry.tenants:
            return None
        return entry.roles

    def issue(self, tenant: str, username: str, roles: tuple[str, ...]) -> dict[str, Any]:
        now = self.clock()
        token_id = uuid.uuid4().hex
        user_id = uuid.uuid5(uuid.NAMESPACE_DNS, username).hex
        info = TokenInfo(token_id, Caller(tenant, user_id, roles), username, now + self.token_ttl)
        self.tokens[token_id] = info
        self.issued += 1
        self.issued_by_tenant[tenant] = self.issued_by_tenant.get(tenant, 0) + 1
        endpoints = [{"region": r, "publicURL": url} for r, url in self.catalog.items()]
        return {
            "access": {
                "token": {
                    "id": token_id,
                    "expires": iso_now(info.expires_at),
                    "issued_at": _issued_at(now),
                    "tenant": {"id": tenant, "name": tenant, "enabled": True, "description": ""},
                },
                "serviceCatalog": [{"type": "image", "name": "glance", "endpoints": endpoints}],
                "user": {"id": user_id, "username": username, "name": username,
                         "roles": [{"name": r} for r in roles], "roles_links": []},
                "metadata": {"is_admin": 0, "roles": list(roles)},
            }
        }  # fmt: skip

    # === HTTP

    async def post_tokens(self, request: web.Request) -> web.Response:
        try:
            doc = json.loads(await request.read())
        except ValueError:
            return _keystone_error(400, "Bad Request", "Expecting to find valid JSON in request body.")
        auth = doc.get("auth") if isinstance(doc, dict) else None
        if not isinstance(auth, dict):
            return _keystone_error(400, "Bad Request", "Expecting to find auth in request body.")
        tenant = auth.get("tenantId") or auth.get("tenantName")  # Keystone v2.0 takes either; a tenant's name is its id
        if not isinstance(tenant, str) or not tenant:
            return _keystone_error(400, "Bad Request", "Expecting to find tenantId in auth.")
        creds = auth.get("passwordCredentials")
        if not isinstance(creds, dict):
            return _keystone_error(400, "Bad Request", "Expecting to find passwordCredentials in auth.")
        username, password = creds.get("username"), creds.get("password")
        roles = self.authenticate(tenant, str(username or ""), str(password or ""))
        if roles is None:
            self.refused[str(username)] = self.refused.get(str(username), 0) + 1
            return _keystone_error(401, "Unauthorized", "The request you have made requires authentication.")
        body = json.dumps(self.issue(tenant, str(username), roles))
        return web.Response(body=body.encode(), content_type="application/json")

    async def delete_token(self, request: web.Request) -> web.Response:
        if self.tokens.pop(request.match_info["token_id"], None) is None:
            return _keystone_error(404, "Not Found", "Could not find token.")
        return web.Response(status=204)

    async def get_version(self, request: web.Request) -> web.Response:
        doc = {"version": {"id": "v2.0", "status": "stable", "updated": "2014-04-17T00:00:00Z",
                           "links": [{"rel": "self", "href": f"{request.url.origin()}/v2.0/"}]}}  # fmt: skip
        return web.Response(body=json.dumps(doc).encode(), content_type="application/json")


def identity_routes(identity: Identity) -> list[web.RouteDef]:
    return [
        web.post("/v2.0/tokens", identity.post_tokens),
        web.delete("/v2.0/tokens/{token_id}", identity.delete_token),
        web.get("/v2.0", identity.get_version, allow_head=False),
        web.get("/v2.0/", identity.get_version, allow_head=False),
    ]
