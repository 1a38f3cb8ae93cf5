"""Owns the identity shim in front of real Glance regions: NHN-style Keystone v2.0 tokens plus a streaming
per-region proxy that turns a token into Glance's trusted identity headers.

Run with the Glance venv's python (it needs aiohttp, and webob for Glance-identical 401 bodies)::

    python shim.py --region KR1=http://127.0.0.1:19001 --region KR2=http://127.0.0.1:19002 \
        [--identity-port 0] [--region-port KR1=0] [--token-ttl 3600] [--users users.json]

Its FIRST stdout line is exactly one JSON object, then nothing else is printed to stdout (logs go to
stderr)::

    {"identity_url": "http://127.0.0.1:P/v2.0", "regions": {"KR1": "http://127.0.0.1:Q", ...},
     "admin_url": "http://127.0.0.1:P/_admin", "upstreams": {"KR1": "http://127.0.0.1:19001", ...}}

Identity (port P):

* ``POST /v2.0/tokens`` with ``{"auth": {"tenantId": T, "passwordCredentials": {"username": U,
  "password": X}}}`` gives 200 and an NHN/Keystone v2.0 ``access`` document whose serviceCatalog lists
  every region's PROXY url as ``publicURL`` of the ``image`` service. Not JSON, no ``auth`` or no
  ``tenantId``: 400. Bad credentials: 401. Errors use Keystone's ``{"error": {"message", "code",
  "title"}}``. Token rescoping (``auth.token``) is not implemented (400).
* ``GET /v2.0`` gives a version document; ``DELETE /v2.0/tokens/{id}`` revokes (204, 404 if unknown).
* Admin, for tests: ``POST /_admin/token-ttl {"seconds": S}`` sets the lifetime of tokens issued from
  then on (``"existing": true`` also cuts every live token to S seconds from now);
  ``POST /_admin/expire-tokens`` expires every token issued so far (gives ``{"expired": n}``);
  ``POST /_admin/password {"username": U, "password": P}`` changes U's password from now on (tokens
  already issued stay valid until they expire);
  ``POST /_admin/faults/{region} {"lose_response": [{"op", "count", "first_per_image"}]}`` makes matching
  requests take effect upstream and then drops the client's connection instead of answering (``DELETE``
  clears it); ``GET /_admin/state`` gives ``{"token_ttl": S, "tokens": n, "tokens_issued_by_tenant":
  {...}, "stats": {region: {"requests": {op: n}, "uploads_active": n, "uploads_started": n}},
  "lost": {region: n}}``, counted at the proxy (what the regions really received).

Users: open mode by default (any non-empty username and password, any tenantId; user id =
uuid5(NAMESPACE_OID, username); roles member and reader). With ``--users FILE`` only the listed users are
accepted. FILE is JSON mapping a username to its record::

    {"alice": {"password": "pw", "tenants": ["tenant-a", "tenant-b"], "roles": ["member", "reader"],
               "id": "optional user id"}}

``tenants`` absent or ``null`` means any tenant; ``roles`` defaults to ``["member", "reader"]``; ``id``
defaults to the uuid5 above.

Region proxy (one port per region, any method and path):

* Missing, unknown, expired or revoked ``X-Auth-Token``: 401 with the very body Glance's context middleware
  produces (webob's HTTPUnauthorized: HTML by default, JSON with ``Accept: application/json``) plus
  ``WWW-Authenticate: Keystone uri="<identity base>"``. Token-less ``GET /``, ``/versions`` and
  ``/healthcheck`` are forwarded (like keystonemiddleware's ``delay_auth_decision``).
* Client-sent identity headers are stripped; ``X-Identity-Status: Confirmed``, ``X-Project-Id``,
  ``X-Tenant-Id``, ``X-Project-Name``, ``X-Tenant-Name``, ``X-User-Id``, ``X-User-Name``, ``X-Roles`` and
  ``X-Project-Domain-Id``/``X-User-Domain-Id: default`` are added for a valid token.
* ``Host`` passes through, so Glance's ``Location`` and version links point at the proxy. Bodies stream
  both ways in 256 KiB pieces, never buffered; a request ``Content-Length`` is kept and a chunked request
  stays chunked; ``Expect: 100-continue`` is answered by the proxy (after the token check). Range,
  Content-Range, Content-MD5, Content-Type and Content-Length pass untouched; nothing is compressed.
* Upstream unreachable: 502 JSON.
* With ``IMGMIG_TRUSTED_PROXY_SECRET`` set in its environment, every forwarded request also carries
  ``X-Imgmig-Trusted-Proxy: <secret>`` (Glance's dual-auth flavor then skips keystonemiddleware for it); a
  client-sent ``X-Imgmig-Trusted-Proxy`` is always stripped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import secrets
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import webob.exc
import yarl
from aiohttp import ClientConnectionError, ClientSession, ClientTimeout, TCPConnector, web
from multidict import CIMultiDict

LOG = logging.getLogger("imgmig.glance-shim")

CHUNK = 256 * 1024
DEFAULT_ROLES = ("member", "reader")
# Paths Glance serves without a token; keystonemiddleware with delay_auth_decision lets them through.
ANONYMOUS_GET_PATHS = frozenset({"/", "/versions", "/healthcheck"})
# Hop-by-hop headers (RFC 9110 7.6.1) are per connection and never forwarded; aiohttp sets its own framing.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
    }
)
# Header prefixes keystonemiddleware removes from the incoming request before it sets its own.
IDENTITY_PREFIXES = (
    "x-identity-",
    "x-roles",
    "x-role",
    "x-project-",
    "x-project",
    "x-tenant",
    "x-user",
    "x-service-",
    "x-domain-",
    "x-is-admin",
    "x-system-scope",
    "x-auth-type",
    "x-trust",
    # The marker of the dual-auth flavor (glance_wsgi.py): only this shim may send it, with its secret.
    "x-imgmig-trusted-proxy",
)
# With a real Keystone next to the regions (running_glance(keystone=True)), Glance routes requests that carry
# this header with the per-run secret (passed in this environment variable, never on the command line) to
# its trusted-auth pipeline and every other request through keystonemiddleware.
TRUSTED_PROXY_HEADER = "X-Imgmig-Trusted-Proxy"
TRUSTED_PROXY_SECRET_ENV = "IMGMIG_TRUSTED_PROXY_SECRET"


# ------------------------------------------------------------------------------------------- tokens


@dataclass
class User:
    username: str
    user_id: str
    password: str | None  # None: open mode, any non-empty password
    tenants: frozenset[str] | None  # None: any tenant
    roles: tuple[str, ...]


@dataclass
class Token:
    token_id: str
    user: User
    tenant: str
    issued_at: float
    expires_at: float


def _user_id(username: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_OID, username))


def load_users(path: str) -> dict[str, User]:
    with open(path, encoding="utf-8") as fh:
        raw = json.load(fh)
    if not isinstance(raw, dict):
        raise SystemExit(f"--users {path}: expected a JSON object mapping username to record")
    users: dict[str, User] = {}
    for name, rec in raw.items():
        if not isinstance(rec, dict) or not isinstance(rec.get("password"), str):
            raise SystemExit(f"--users {path}: user {name!r} needs a string 'password'")
        tenants = rec.get("tenants")
        users[name] = User(
            username=name,
            user_id=str(rec.get("id") or _user_id(name)),
            password=rec["password"],
            tenants=None if tenants is None else frozenset(str(t) for t in tenants),
            roles=tuple(rec.get("roles") or DEFAULT_ROLES),
        )
    return users


class TokenStore:
    def __init__(self, ttl: float, users: dict[str, User] | None) -> None:
        self.ttl = ttl
        self.users = users
        self.tokens: dict[str, Token] = {}
        self.issued_by_tenant: dict[str, int] = {}
        # Passwords changed at runtime: only these are accepted from then on, in open mode too.
        self.changed: dict[str, str] = {}

    def authenticate(self, username: str, password: str, tenant: str) -> User | None:
        changed = self.changed.get(username)
        if changed is not None and not secrets.compare_digest(changed, password):
            return None
        if self.users is None:
            if not username or not password:
                return None
            return User(username, _user_id(username), None, None, DEFAULT_ROLES)
        user = self.users.get(username)
        if user is None or (changed is None and not secrets.compare_digest(user.password or "", password)):
            return None
        if user.tenants is not None and tenant not in user.tenants:
            return None
        return user

    def issue(self, user: User, tenant: str) -> Token:
        self._purge()
        now = time.time()
        token = Token(uuid.uuid4().hex, user, tenant, now, now + self.ttl)
        self.tokens[token.token_id] = token
        self.issued_by_tenant[tenant] = self.issued_by_tenant.get(tenant, 0) + 1
        return token

    def lookup(self, token_id: str | None) -> Token | None:
        if not token_id:
            return None
        token = self.tokens.get(token_id)
        # An expired token behaves exactly like an unknown one.
        if token is None or token.expires_at <= time.time():
            return None
        return token

    def revoke(self, token_id: str) -> bool:
        return self.tokens.pop(token_id, None) is not None

    def expire_all(self) -> int:
        count = len(self.tokens)
        self.tokens.clear()
        return count

    def cut_live_tokens(self, seconds: float) -> None:
        deadline = time.time() + seconds
        for token in self.tokens.values():
            token.expires_at = min(token.expires_at, deadline)

    def _purge(self) -> None:
        now = time.time()
        for token_id in [t.token_id for t in self.tokens.values() if t.expires_at <= now]:
            del self.tokens[token_id]


def _iso_z(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso_micro(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


def keystone_error(code: int, title: str, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "code": code, "title": title}}, status=code)


# ----------------------------------------------------------------------------------------- identity


# ------------------------------------------------------------------------------- faults and stats


def request_op(method: str, path: str) -> str | None:
    """The kind of an Image API request, named as the emulator's fault knobs name them."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["v2", "schemas"]:
        return "schemas"
    if parts[:2] != ["v2", "images"]:
        return None
    if len(parts) == 2:
        return {"GET": "list", "POST": "create"}.get(method)
    if len(parts) == 3:
        return {"GET": "get", "PATCH": "patch", "DELETE": "delete"}.get(method)
    sub = parts[3]
    if sub == "file":
        return {"GET": "download", "PUT": "upload"}.get(method)
    if sub == "actions" and len(parts) > 4 and method == "POST":  # deactivate, reactivate
        return parts[4]
    return {"tags": "tags", "members": "members"}.get(sub)


@dataclass
class LostAnswer:
    op: str = "any"
    count: int | None = 1
    first_per_image: bool = False
    writes_only: bool = False
    seen: set[str] = field(default_factory=set)

    def take(self, op: str, key: str | None, method: str) -> bool:
        if self.op not in ("any", op) or (self.count is not None and self.count <= 0):
            return False
        if self.writes_only and method == "GET":
            return False
        if self.first_per_image:
            mark = f"{op}:{method}:{key}"
            if key is None or mark in self.seen:
                return False
            self.seen.add(mark)
        if self.count is not None:
            self.count -= 1
        return True


@dataclass
class RegionFaults:
    """One region's lost-answer rules and what the proxy saw (counted at the server side of the client)."""

    lose_response: list[LostAnswer] = field(default_factory=list)
    lost: int = 0
    lost_by_op: dict[str, int] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)
    uploads_started: int = 0
    uploads_active: int = 0

    def stats(self) -> dict[str, Any]:
        return {"requests": dict(self.requests), "uploads_started": self.uploads_started,
                "uploads_active": self.uploads_active}  # fmt: skip


class IdentityApp:
    def __init__(self, store: TokenStore, regions: dict[str, str]) -> None:
        self.store = store
        # Filled with proxy urls once their ports are bound.
        self.regions = regions
        self.base_url = ""
        self.faults: dict[str, RegionFaults] = {}

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v2.0/tokens", self.issue_token)
        app.router.add_delete("/v2.0/tokens/{token_id}", self.revoke_token)
        app.router.add_get("/v2.0", self.version)
        app.router.add_get("/v2.0/", self.version)
        app.router.add_post("/_admin/token-ttl", self.set_ttl)
        app.router.add_post("/_admin/expire-tokens", self.expire_tokens)
        app.router.add_post("/_admin/password", self.change_password)
        app.router.add_route("*", "/_admin/faults/{region}", self.set_faults)
        app.router.add_get("/_admin/state", self.state)
        return app

    async def change_password(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        self.store.changed[str(body["username"])] = str(body["password"])
        return web.json_response({"changed": body["username"]})

    async def set_faults(self, request: web.Request) -> web.Response:
        faults = self.faults.get(request.match_info["region"])
        if faults is None:
            return web.json_response({"error": "no such region"}, status=404)
        if request.method == "DELETE":
            faults.lose_response = []
        elif request.method == "POST":
            body = json.loads(await request.read())
            faults.lose_response = [LostAnswer(**rule) for rule in body.get("lose_response", [])]
        return web.json_response({"lose_response": len(faults.lose_response)})

    async def issue_token(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            return keystone_error(400, "Bad Request", "Expecting to find valid JSON in request body.")
        auth = body.get("auth") if isinstance(body, dict) else None
        if not isinstance(auth, dict):
            return keystone_error(400, "Bad Request", "Expecting to find auth in request body.")
        if "token" in auth and "passwordCredentials" not in auth:
            return keystone_error(400, "Bad Request", "Token rescoping is not implemented by this shim.")
        creds = auth.get("passwordCredentials")
        if not isinstance(creds, dict):
            return keystone_error(400, "Bad Request", "Expecting to find passwordCredentials in auth.")
        tenant = auth.get("tenantId")
        if not isinstance(tenant, str) or not tenant:
            return keystone_error(400, "Bad Request", "Expecting to find tenantId in auth.")
        username, password = creds.get("username"), creds.get("password")
        if not isinstance(username, str) or not isinstance(password, str):
            return keystone_error(401, "Unauthorized", "The request you have made requires authentication.")
        user = self.store.authenticate(username, password, tenant)
        if user is None:
            return keystone_error(401, "Unauthorized", "The request you have made requires authentication.")
        token = self.store.issue(user, tenant)
        roles = list(user.roles)
        access = {
            "access": {
                "token": {
                    "id": token.token_id,
                    "expires": _iso_z(token.expires_at),
                    "issued_at": _iso_micro(token.issued_at),
                    "tenant": {"id": tenant, "name": tenant, "enabled": True, "description": ""},
                },
                "serviceCatalog": [
                    {
                        "type": "image",
                        "name": "glance",
                        "endpoints": [{"region": name, "publicURL": url} for name, url in self.regions.items()],
                    }
                ],
                "user": {
                    "id": user.user_id,
                    "username": user.username,
                    "name": user.username,
                    "roles": [{"name": r} for r in roles],
                    "roles_links": [],
                },
                "metadata": {"is_admin": 0, "roles": roles},
            }
        }
        return web.json_response(access)

    async def revoke_token(self, request: web.Request) -> web.Response:
        if self.store.revoke(request.match_info["token_id"]):
            return web.Response(status=204)
        return keystone_error(404, "Not Found", "Could not find token.")

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "version": {
                    "id": "v2.0",
                    "status": "stable",
                    "updated": "2014-04-17T00:00:00Z",
                    "links": [{"rel": "self", "href": f"{self.base_url}/v2.0/"}],
                    "media-types": [
                        {"base": "application/json", "type": "application/vnd.openstack.identity-v2.0+json"}
                    ],
                }
            }
        )

    async def set_ttl(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
            seconds = float(body["seconds"])
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": 'expected {"seconds": <number>}'}, status=400)
        if seconds < 0:
            return web.json_response({"error": "seconds must not be negative"}, status=400)
        self.store.ttl = seconds
        if body.get("existing"):
            self.store.cut_live_tokens(seconds)
        return web.json_response({"token_ttl": seconds})

    async def expire_tokens(self, request: web.Request) -> web.Response:
        return web.json_response({"expired": self.store.expire_all()})

    async def state(self, request: web.Request) -> web.Response:
        return web.json_response({
            "token_ttl": self.store.ttl, "tokens": len(self.store.tokens),
            "tokens_issued_by_tenant": dict(self.store.issued_by_tenant),
            "stats": {region: f.stats() for region, f in self.faults.items()},
            "lost": {region: f.lost for region, f in self.faults.items()},
            "lost_by_op": {region: dict(f.lost_by_op) for region, f in self.faults.items()},
        })  # fmt: skip


# -------------------------------------------------------------------------------------------- proxy


def glance_unauthorized(accept: str | None) -> tuple[int, list[tuple[str, str]], bytes]:
    """Render the 401 exactly as Glance's ContextMiddleware does (it raises webob's HTTPUnauthorized)."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
        "SERVER_PROTOCOL": "HTTP/1.1",
    }
    if accept is not None:
        environ["HTTP_ACCEPT"] = accept
    captured: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        captured["status"] = int(status.split()[0])
        captured["headers"] = headers

    body = b"".join(webob.exc.HTTPUnauthorized()(environ, start_response))
    return captured["status"], captured["headers"], body


def _is_identity_header(name: str) -> bool:
    lower = name.lower()
    return lower.startswith(IDENTITY_PREFIXES)


class RegionProxy:
    def __init__(self, region: str, upstream: str, store: TokenStore, identity: IdentityApp) -> None:
        self.region = region
        self.upstream = upstream.rstrip("/")
        self.store = store
        self.identity = identity
        self.session: ClientSession | None = None
        self.faults = identity.faults.setdefault(region, RegionFaults())
        self.trusted_secret = os.environ.get(TRUSTED_PROXY_SECRET_ENV) or None

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle, expect_handler=self.expect)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    async def _open(self, app: web.Application) -> None:
        # auto_decompress=False: bytes pass through as Glance sent them. No total timeout: multi-GiB
        # transfers are legitimate; connect failures still surface fast.
        self.session = ClientSession(
            connector=TCPConnector(limit=0, force_close=True),
            auto_decompress=False,
            timeout=ClientTimeout(total=None, sock_connect=10),
            skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type", "Accept"),
        )

    async def _close(self, app: web.Application) -> None:
        if self.session is not None:
            await self.session.close()

    def _anonymous_ok(self, request: web.Request) -> bool:
        return request.method == "GET" and request.path in ANONYMOUS_GET_PATHS

    def _unauthorized(self, request: web.Request) -> web.Response:
        status, headers, body = glance_unauthorized(request.headers.get("Accept"))
        resp = web.Response(status=status, body=body)
        for name, value in headers:
            if name.lower() != "content-length":
                resp.headers[name] = value
        resp.headers["WWW-Authenticate"] = f'Keystone uri="{self.identity.base_url}"'
        return resp

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        # Refuse before the client sends its body; otherwise let it send (100 Continue).
        if request.version != (1, 1) or request.headers.get("Expect", "").lower() != "100-continue":
            return None
        token = self.store.lookup(request.headers.get("X-Auth-Token"))
        if token is None and not self._anonymous_ok(request):
            return self._unauthorized(request)
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        # As aiohttp's default expect handler does: the interim response is not part of the body size.
        request.writer.output_size = 0
        return None

    def _upstream_headers(self, request: web.Request, token: Token | None) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict()
        for name, value in request.headers.items():
            lower = name.lower()
            if lower in HOP_BY_HOP or _is_identity_header(lower):
                continue
            headers.add(name, value)
        if token is not None:
            roles = ",".join(token.user.roles)
            headers["X-Identity-Status"] = "Confirmed"
            headers["X-Project-Id"] = token.tenant
            headers["X-Tenant-Id"] = token.tenant
            headers["X-Project-Name"] = token.tenant
            headers["X-Tenant-Name"] = token.tenant
            headers["X-User-Id"] = token.user.user_id
            headers["X-User-Name"] = token.user.username
            headers["X-Roles"] = roles
            headers["X-Project-Domain-Id"] = "default"
            headers["X-User-Domain-Id"] = "default"
        if self.trusted_secret is not None:
            # Token-less anonymous GETs too: without it Glance would hand them to keystonemiddleware.
            headers[TRUSTED_PROXY_HEADER] = self.trusted_secret
        return headers

    async def handle(self, request: web.Request) -> web.StreamResponse:
        op = request_op(request.method, request.path)
        if op is not None:
            self.faults.requests[op] = self.faults.requests.get(op, 0) + 1
        if op == "upload":
            self.faults.uploads_started += 1
            self.faults.uploads_active += 1
            try:
                return await self._handle(request, op)
            finally:
                self.faults.uploads_active -= 1
        return await self._handle(request, op)

    async def _lose(self, request: web.Request, op: str, upstream: Any) -> tuple[bool, bytes | None]:
        """Whether this answer is to be lost (the request took effect upstream; the client hears nothing),
        and the upstream body if it had to be read to decide (a create's, for the image name)."""
        if not self.faults.lose_response or not 200 <= upstream.status < 300:
            return False, None
        key: str | None = None
        body: bytes | None = None
        if op == "create":
            body = await upstream.read()
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                doc = json.loads(body)
                key = doc.get("name") if isinstance(doc, dict) else None
        else:
            parts = [p for p in request.path.split("/") if p]
            key = parts[2] if len(parts) > 2 else None
        if not any(rule.take(op, key, request.method) for rule in self.faults.lose_response):
            return False, body
        self.faults.lost += 1
        self.faults.lost_by_op[op] = self.faults.lost_by_op.get(op, 0) + 1
        if request.transport is not None:
            request.transport.abort()
        return True, body

    async def _handle(self, request: web.Request, op: str | None) -> web.StreamResponse:
        token = self.store.lookup(request.headers.get("X-Auth-Token"))
        if token is None and not self._anonymous_ok(request):
            return self._unauthorized(request)
        assert self.session is not None
        headers = self._upstream_headers(request, token)
        chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
        if chunked:
            # RFC 9112 6.3: Transfer-Encoding overrides Content-Length; aiohttp refuses both at once.
            headers.popall("Content-Length", None)
        data: AsyncIterator[bytes] | None = None
        if request.body_exists:
            data = _iter_body(request)
        # raw_path keeps the client's percent-encoding, so Glance decodes paths exactly as it would
        # directly (including its latin-1 reading of non-ASCII tags).
        url = yarl.URL(self.upstream + request.raw_path, encoded=True)
        try:
            upstream = await self.session.request(
                request.method,
                url,
                headers=headers,
                data=data,
                chunked=True if chunked and data is not None else None,
                allow_redirects=False,
                compress=None,
            )
        except (TimeoutError, ClientConnectionError, OSError) as exc:
            if isinstance(exc, ClientConnectionError) and request.body_exists and _client_gone(request):
                raise
            LOG.warning("region %s: upstream %s unreachable: %r", self.region, self.upstream, exc)
            return web.json_response(
                {
                    "error": {
                        "message": f"Upstream Glance for region {self.region} is unreachable: {exc}",
                        "code": 502,
                        "title": "Bad Gateway",
                    }
                },
                status=502,
            )
        async with upstream:
            lost, body = await self._lose(request, op, upstream) if op is not None else (False, None)
            if lost:
                return web.Response(status=upstream.status)  # never sent: the connection is gone
            resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() in HOP_BY_HOP:
                    continue
                resp.headers.add(name, value)
            # Neither side compresses; aiohttp only would if asked (resp.enable_compression()).
            await resp.prepare(request)
            if body is not None:
                await resp.write(body)
            elif request.method != "HEAD" and upstream.status not in (204, 304):
                async for chunk in upstream.content.iter_chunked(CHUNK):
                    await resp.write(chunk)
            await resp.write_eof()
            return resp


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _iter_body(request: web.Request) -> AsyncIterator[bytes]:
    # An explicit generator (rather than passing request.content) keeps the pieces at most CHUNK large and
    # makes aiohttp honour the forwarded Content-Length instead of switching to chunked.
    while True:
        chunk = await request.content.read(CHUNK)
        if not chunk:
            return
        yield chunk


# --------------------------------------------------------------------------------------------- main


def _parse_pairs(values: Iterable[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise SystemExit(f"{what}: expected NAME=VALUE, got {item!r}")
        out[name] = value
    return out


async def _watch_parent(parent_pid: int, stop: asyncio.Event) -> None:
    # Belt and braces next to PR_SET_PDEATHSIG: leave when the harness process is gone.
    while not stop.is_set():
        if os.getppid() != parent_pid:
            stop.set()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


async def serve(args: argparse.Namespace) -> None:
    upstreams = _parse_pairs(args.region, "--region")
    if not upstreams:
        raise SystemExit("at least one --region NAME=URL is needed")
    ports = {k: int(v) for k, v in _parse_pairs(args.region_port, "--region-port").items()}
    users = load_users(args.users) if args.users else None
    store = TokenStore(args.token_ttl, users)
    region_urls: dict[str, str] = {}
    identity = IdentityApp(store, region_urls)
    runners: list[web.AppRunner] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        runner = web.AppRunner(identity.make_app(), access_log=None)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, args.host, args.identity_port)
        await site.start()
        identity.base_url = f"http://{args.host}:{_bound_port(runner)}"
        for name, upstream in upstreams.items():
            proxy = RegionProxy(name, upstream, store, identity)
            runner = web.AppRunner(proxy.make_app(), access_log=None)
            await runner.setup()
            runners.append(runner)
            await web.TCPSite(runner, args.host, ports.get(name, 0)).start()
            region_urls[name] = f"http://{args.host}:{_bound_port(runner)}"
        banner = {
            "identity_url": f"{identity.base_url}/v2.0",
            "regions": region_urls,
            "admin_url": f"{identity.base_url}/_admin",
            "upstreams": upstreams,
        }
        sys.stdout.write(json.dumps(banner) + "\n")
        sys.stdout.flush()
        watcher = None
        if args.parent_pid:
            watcher = asyncio.create_task(_watch_parent(args.parent_pid, stop))
        await stop.wait()
        if watcher is not None:
            await watcher
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


def _bound_port(runner: web.AppRunner) -> int:
    server = runner.addresses[0]
    return int(server[1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--region", action="append", default=[], help="NAME=UPSTREAM_URL, repeatable")
    parser.add_argument("--region-port", action="append", default=[], help="NAME=PORT (default: free port)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--identity-port", type=int, default=0)
    parser.add_argument("--token-ttl", type=float, default=3600.0, help="token lifetime in seconds")
    parser.add_argument("--users", help="JSON users file (see module docstring); default: open mode")
    parser.add_argument("--parent-pid", type=int, default=0, help="exit when this parent process is gone")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
