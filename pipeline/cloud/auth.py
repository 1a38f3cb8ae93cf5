"""NHN Cloud IaaS identity (Keystone v2.0 style): tokens, their refresh, and the image service catalog.

``PasswordAuth`` posts ``{"auth": {"tenantId", "passwordCredentials": {...}}}`` to ``{identity_url}/tokens``,
caches the token, and refreshes it before it expires, under a lock, re-checking after taking the lock so
that many tasks waiting on an expired token cause one request. ``StaticTokenAuth`` serves users who
already hold a token and know their endpoint. Secrets live in ``Secret`` objects whose repr is masked.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp
import anyio
import structlog

from pipeline.cloud.retry import RetryPolicy
from pipeline.cloud.transport import error_from_response, map_aiohttp_errors, name_failure
from pipeline.config.values import Secret, normalize_endpoint
from pipeline.errors import ApiError, AuthenticationError, ConnectError, ProtocolError, RegionNotFoundError

__all__ = [
    "REFUSED",
    "Auth",
    "PasswordAuth",
    "StaticTokenAuth",
    "Token",
    "TokenCache",
    "catalog_token",
    "parse_time",
    "parse_token_response",
    "post_for_token",
]

log = structlog.get_logger("imgmig")

#: Refresh this long before expiry at most; short-lived tokens refresh at 90% of their life.
MAX_REFRESH_SKEW = 120.0
#: A token for a long request (an upload, whose headers leave with its first body chunk, maybe seconds
#: later) must have this long left at least, or half its life when that is shorter.
LASTING = 300.0


@dataclass(frozen=True, slots=True)
class Token:
    """An issued token: its id (secret), expiry, tenant and image endpoints per region."""

    id: Secret
    expires_at: float
    tenant_id: str | None
    endpoints: dict[str, str]
    issued_at: float = 0.0

    def fresh(self, now: float, *, lasting: bool = False) -> bool:
        """Whether the token is still good enough to send (not within the refresh window); ``lasting``
        asks for a token that outlives a long request too."""
        life = max(0.0, self.expires_at - self.issued_at)
        skew = min(LASTING, life * 0.5) if lasting else min(MAX_REFRESH_SKEW, life * 0.1)
        return now < self.expires_at - skew


class Auth(Protocol):
    """What the Image API client needs from an identity: a token, and an endpoint per region."""

    @property
    def tenant_id(self) -> str | None: ...

    @property
    def profile(self) -> str:
        """The job file's name for these credentials (``[auth.NAME]``), used in every auth error."""
        ...

    async def token(self, session: aiohttp.ClientSession, *, lasting: bool = False) -> Token: ...

    def invalidate(self, token: Token) -> None: ...

    async def endpoint(self, session: aiohttp.ClientSession, region: str) -> str: ...


def parse_time(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def catalog_token(
    token_id: str | None, token: Mapping[str, Any], catalog: Any, endpoint: Callable[[Mapping[str, Any]], Any], *,
    expires_key: str, scope_key: str, now: float, what: str,
) -> Token:  # fmt: skip
    """The token an identity service issued, from the parts both identity versions share: its expiry (``expires_key``;
    its lifetime measured on the server's clock, from ``issued_at``, and applied to ours: immune to clock skew),
    its tenant or project (``scope_key``'s ``id``) and the image service's endpoints of ``catalog`` (a list of
    services; ``endpoint(ep)`` gives ``(region, url)`` for an endpoint to use, or None to pass it over)."""
    if not token_id:
        raise ProtocolError(f"{what} has no token id")
    expires = parse_time(token.get(expires_key))
    if expires is None:
        raise ProtocolError(f"{what} has no valid token {expires_key}")
    scope = token.get(scope_key)
    tenant_id = scope.get("id") if isinstance(scope, dict) and isinstance(scope.get("id"), str) else None
    endpoints: dict[str, str] = {}
    for service in catalog if isinstance(catalog, list) else []:
        if not isinstance(service, dict) or service.get("type") != "image":
            continue
        for ep in service.get("endpoints") or []:
            found = endpoint(ep) if isinstance(ep, dict) else None
            if found is not None:
                endpoints[found[0]] = normalize_endpoint(found[1])
    issued = parse_time(token.get("issued_at"))
    if issued is not None and issued <= expires:
        # Keystone (fernet tokens) states issued_at and expires_at in whole seconds, truncated, so a token may die
        # up to 1 s sooner than issued + life on our clock: count that second off
        life = expires - issued
        expires = now + (max(0.0, life - 1.0) if issued.is_integer() and life > 1.0 else life)
    return Token(id=Secret(token_id), expires_at=expires, tenant_id=tenant_id, endpoints=endpoints, issued_at=now)


def parse_token_response(doc: Any, *, now: float) -> Token:
    """Token id, expiry, tenant and image endpoints (``publicURL``) from a v2.0 ``access`` document."""
    access = doc.get("access") if isinstance(doc, dict) else None
    token = access.get("token") if isinstance(access, dict) else None
    if not isinstance(access, dict) or not isinstance(token, dict):
        raise ProtocolError("identity response has no access.token")

    def public(ep: Mapping[str, Any]) -> tuple[str, str] | None:
        region, url = ep.get("region"), ep.get("publicURL")
        return (region, url) if isinstance(region, str) and isinstance(url, str) else None

    token_id = token.get("id") if isinstance(token.get("id"), str) else None
    return catalog_token(token_id, token, access.get("serviceCatalog"), public, expires_key="expires",
                         scope_key="tenant", now=now, what="identity response")  # fmt: skip


#: How long getting a token may take, every attempt included: an identity service that cannot be reached ends the
#: command within a minute, whatever the connect timeout and the retries.
TOKEN_DEADLINE = 55.0
#: After a token request failed for good, callers get the same error at once for this long instead of each
#: waiting out another round of attempts.
UNREACHABLE_FOR = 30.0


class TokenCache:
    """What every identity kind shares: one token for many waiters, fetched or refreshed under a lock and
    re-checked after taking it, and a refused credential remembered and re-raised, never sent again. Each failed
    attempt to reach the identity service is logged as it happens, with the profile and the URL. Subclasses
    (dataclasses) provide the fields below, ``token_url`` and ``_fetch``."""

    retry: RetryPolicy
    clock: Callable[[], float]
    profile: str
    _token: Token | None
    _lock: anyio.Lock
    _refused: AuthenticationError | None
    _unreachable: tuple[float, ApiError] | None
    issued: int

    @property
    def token_url(self) -> str:
        """Where tokens are asked for."""
        raise NotImplementedError

    async def _fetch(self, session: aiohttp.ClientSession) -> Token:
        raise NotImplementedError

    def _retrying(self, attempt: int, exc: BaseException, wait: float) -> None:
        log.warning("identity_attempt_failed", profile=self.profile, url=self.token_url,
                    attempt=f"{attempt} of {self.retry.attempts}", error=str(exc), retry_in=round(wait, 1))  # fmt: skip

    def _usable(self, token: Token, lasting: bool) -> bool:
        return token.fresh(self.clock(), lasting=lasting)

    def _got(self, token: Token) -> None:
        """Called with every new token (a subclass may note what it says)."""

    async def token(self, session: aiohttp.ClientSession, *, lasting: bool = False) -> Token:
        """A fresh token, fetching or refreshing it first if needed (one request for many waiters);
        ``lasting``: one that also outlives a long request (see ``Token.fresh``)."""
        current = self._token
        if current is not None and self._usable(current, lasting):
            return current
        async with self._lock:
            if self._refused is not None:
                raise self._refused  # a dead credential is never retried, however many tasks wait on it
            current = self._token
            if current is not None and self._usable(current, lasting):
                return current
            if self._unreachable is not None and self.clock() < self._unreachable[0]:
                raise self._unreachable[1]
            try:
                with anyio.fail_after(TOKEN_DEADLINE):
                    token = await self.retry.call(lambda: self._fetch(session), on_retry=self._retrying)
            except AuthenticationError as exc:
                self._refused = exc
                raise
            except TimeoutError:
                where = f"auth profile {self.profile!r}: the identity service ({self.token_url})"
                late = ConnectError(f"{where} gave no token within {TOKEN_DEADLINE:g} s", method="POST",
                                    path=self.token_url)  # fmt: skip
                self._unreachable = (self.clock() + UNREACHABLE_FOR, late)
                raise late from None
            except ApiError as exc:
                self._unreachable = (self.clock() + UNREACHABLE_FOR, exc)
                raise
            self._token = token
            self._got(token)
            self.issued += 1
            return token

    def invalidate(self, token: Token) -> None:
        """Forget ``token`` (the server refused it) unless a newer one already replaced it."""
        if self._token is token:
            self._token = None

    async def endpoint(self, session: aiohttp.ClientSession, region: str) -> str:
        """The image endpoint of ``region`` from the token's catalog."""
        token = await self.token(session)
        try:
            return token.endpoints[region]
        except KeyError:
            raise RegionNotFoundError(region, list(token.endpoints)) from None


@dataclass(slots=True)
class PasswordAuth(TokenCache):
    """Username + password for one tenant, exchanged for tokens at ``identity_url``."""

    identity_url: str
    tenant_id: str
    username: str
    password: Secret
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    clock: Callable[[], float] = field(default=time.time, repr=False)
    profile: str = "default"
    _token: Token | None = field(default=None, init=False, repr=False)
    _lock: anyio.Lock = field(default_factory=anyio.Lock, init=False, repr=False)
    #: Set once the identity service refused the password: nothing is ever sent with it again.
    _refused: AuthenticationError | None = field(default=None, init=False, repr=False)
    _unreachable: tuple[float, ApiError] | None = field(default=None, init=False, repr=False)
    #: How many tokens were issued; tests and the summary use it to show refreshes happened.
    issued: int = field(default=0, init=False)
    #: The tenant by name (Keystone v2.0's ``tenantName``), for a clouds.yaml ``v2password`` cloud without tenant_id.
    tenant_name: str | None = None
    #: TLS for the identity service and the image endpoints (a clouds.yaml cloud's verify/cacert); None: the session's.
    tls: ssl.SSLContext | bool | None = None
    #: Where the password comes from, for the refusal's message.
    password_source: str = "its environment variable"

    @property
    def token_url(self) -> str:
        return self.identity_url.rstrip("/") + "/tokens"

    async def _fetch(self, session: aiohttp.ClientSession) -> Token:
        url = self.token_url
        tenant = {"tenantId": self.tenant_id} if self.tenant_id else {"tenantName": self.tenant_name or ""}
        body = {
            "auth": {
                **tenant,
                "passwordCredentials": {"username": self.username, "password": self.password.reveal()},
            }
        }

        def refusal(err: ApiError) -> str:
            tenant = self.tenant_id or self.tenant_name
            return (f"auth profile {self.profile!r}: the identity service refused user {self.username!r} for tenant "
                    f"{tenant!r}: {err.message}; check the password in {self.password_source}")  # fmt: skip

        doc, _ = await post_for_token(session, url, body, refusal=refusal, profile=self.profile, tls=self.tls)
        return parse_token_response(doc, now=self.clock())


#: Statuses with which an identity service refuses the credential itself (not a passing failure).
REFUSED = (400, 401, 403, 404)


async def post_for_token(
    session: aiohttp.ClientSession,
    url: str,
    body: Any,
    *,
    refusal: Callable[[ApiError], str],
    profile: str,
    scrub: Callable[[str], str] = str,
    tls: ssl.SSLContext | bool | None = None,
    what: str = "identity response",
) -> tuple[Any, Mapping[str, str]]:
    """POST ``body`` to an identity service's token URL; its parsed JSON answer and its headers. A status in
    ``REFUSED`` is a refused credential: ``AuthenticationError`` with ``refusal(err)`` as its message. Any other
    error status is raised as the transport maps it, its message passed through ``scrub`` first. A certificate
    that does not verify names the auth ``profile`` and where its CA can be trusted."""
    ctx: dict[str, Any] = {"method": "POST", "path": url}
    options: dict[str, Any] = {} if tls is None else {"ssl": tls}
    try:
        with map_aiohttp_errors(**ctx):
            async with session.post(url, json=body, headers={"Accept": "application/json"}, **options) as resp:
                raw = await resp.read()
                status, headers = resp.status, resp.headers
    except ApiError as exc:  # cannot reach it, its certificate, a broken answer: named with the profile and the URL
        raise name_failure(exc, profile, f"the identity service ({url})") from exc.__cause__
    if status in REFUSED:
        err = error_from_response(status, headers, raw, **ctx)
        raise AuthenticationError(refusal(err), status=status, request_id=err.request_id, **ctx)
    if status >= 400:
        err = error_from_response(status, headers, raw, **ctx)
        err.message = scrub(err.message)
        raise err
    try:
        return json.loads(raw.decode("utf-8")), headers
    except ValueError as exc:
        raise ProtocolError(f"{what} is not JSON", status=status, **ctx) from exc


@dataclass(slots=True)
class StaticTokenAuth:
    """A token the user already holds, and the one endpoint it is for; it cannot be refreshed."""

    endpoint_url: str
    token_value: Secret
    tenant_id: str | None = None
    profile: str = "default"
    _token: Token | None = field(default=None, init=False, repr=False)
    _revoked: bool = field(default=False, init=False, repr=False)

    async def token(self, session: aiohttp.ClientSession, *, lasting: bool = False) -> Token:
        """The fixed token; once the server refused it there is nothing to refresh to."""
        if self._revoked:
            raise AuthenticationError(
                f"auth profile {self.profile!r}: the server refused the fixed token (token_env); issue a new "
                "token and run again",
                status=401,
            )
        if self._token is None:
            self._token = Token(self.token_value, float("inf"), self.tenant_id, {})
        return self._token

    def invalidate(self, token: Token) -> None:
        """Mark the fixed token as refused."""
        self._revoked = True

    async def endpoint(self, session: aiohttp.ClientSession, region: str) -> str:
        """The fixed endpoint, whatever the region label."""
        return normalize_endpoint(self.endpoint_url)
