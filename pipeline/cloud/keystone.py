"""Keystone v3 identity: project-scoped password and application-credential tokens, their refresh, and the
image endpoints of the v3 catalog for one interface.

``KeystoneAuth`` posts to ``{auth_url}/v3/auth/tokens``, takes the token from the ``X-Subject-Token``
header, and caches it with its lifetime measured on the server's clock. Refreshes happen before expiry,
under a lock re-checked after taking it, so many waiting tasks cause one request. A credential Keystone
refuses (400/401/403/404: a deleted application credential id answers 404) is remembered and raised again
as ``AuthenticationError`` without another request; 5xx and connection errors go through the RetryPolicy.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import anyio

from pipeline.cloud.auth import Token, TokenCache, catalog_token, post_for_token
from pipeline.cloud.retry import RetryPolicy
from pipeline.config.values import Secret
from pipeline.errors import ApiError, AuthenticationError, ProtocolError, UsageError

__all__ = ["INTERFACES", "KeystoneAuth", "normalize_interface", "parse_v3_token", "v3_url"]

INTERFACES = ("public", "internal", "admin")
#: Keystone's answers to a credential it will not accept: never retried, the job stops (exit 4).
#: A request still has to reach the region and be validated there (keystonemiddleware asks Keystone): a token
#: is only used while it outlives this margin too (at most a quarter of its life, for very short tokens).
REQUEST_MARGIN = 1.0


def normalize_interface(value: str) -> str:
    """``public``/``internal``/``admin``, also from the v2 spelling ``publicURL`` (as keystoneauth accepts)."""
    name = value.strip()
    name = (name[:-3] if name.endswith("URL") else name).lower()
    if name not in INTERFACES:
        raise UsageError(f"interface {value!r} is not one of {', '.join(INTERFACES)} (or publicURL, ...)")
    return name


def v3_url(auth_url: str) -> str:
    """The identity v3 base URL from an ``auth_url`` given with or without ``/v3``."""
    url = auth_url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"auth_url {auth_url!r} is not an http(s) URL")
    tail = url.rsplit("/", 1)[-1]
    if tail == "v3":
        return url
    if tail.startswith("v") and tail[1:].replace(".", "").isdigit():
        raise UsageError(f"auth_url {auth_url!r} names identity {tail}; KeystoneAuth speaks identity v3 only")
    return url + "/v3"


def parse_v3_token(doc: Any, token_id: str | None, *, interface: str, now: float) -> Token:
    """Token (its id from the X-Subject-Token header), expiry, project and the image endpoints for ``interface``
    from a v3 ``token`` document."""
    token = doc.get("token") if isinstance(doc, dict) else None
    if not isinstance(token, dict):
        raise ProtocolError("identity v3 response has no token object")
    if not token_id:
        raise ProtocolError("identity v3 response has no X-Subject-Token header")

    def of_interface(ep: Mapping[str, Any]) -> tuple[str, str] | None:
        region, url = ep.get("region_id") or ep.get("region"), ep.get("url")
        ok = ep.get("interface") == interface and isinstance(url, str) and isinstance(region, str) and region
        return (region, url) if ok else None  # type: ignore[return-value]

    return catalog_token(token_id, token, token.get("catalog"), of_interface, expires_key="expires_at",
                         scope_key="project", now=now, what="identity v3 response")  # fmt: skip


@dataclass(slots=True)
class KeystoneAuth(TokenCache):
    """A Keystone v3 identity: a password with a project scope, or an application credential (no scope).

    Users are named by ``user_id`` or ``username`` + ``user_domain_id``/``user_domain_name``; projects by
    ``project_id`` or ``project_name`` + ``project_domain_id``/``project_domain_name``; an application
    credential by ``application_credential_id`` or ``application_credential_name`` + its user.
    """

    auth_url: str
    profile: str = "default"
    username: str | None = None
    user_id: str | None = None
    user_domain_name: str | None = None
    user_domain_id: str | None = None
    password: Secret | None = None
    project_name: str | None = None
    project_id: str | None = None
    project_domain_name: str | None = None
    project_domain_id: str | None = None
    application_credential_id: str | None = None
    application_credential_name: str | None = None
    application_credential_secret: Secret | None = None
    interface: str = "public"
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: TLS for this cloud's connections (clouds.yaml verify/cacert); None: the session's.
    tls: ssl.SSLContext | bool | None = None
    clock: Callable[[], float] = field(default=time.time, repr=False)
    _token: Token | None = field(default=None, init=False, repr=False)
    _project: str | None = field(default=None, init=False, repr=False)
    _lock: anyio.Lock = field(default_factory=anyio.Lock, init=False, repr=False)
    #: Set once Keystone refused the credential: nothing is ever sent with it again.
    _refused: AuthenticationError | None = field(default=None, init=False, repr=False)
    _unreachable: tuple[float, ApiError] | None = field(default=None, init=False, repr=False)
    #: How many tokens were issued; tests and the summary use it to show refreshes happened.
    issued: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.auth_url = v3_url(self.auth_url)
        self.interface = normalize_interface(self.interface)
        missing = self._missing()
        if missing:
            raise UsageError(f"auth profile {self.profile!r} ({self.kind}): missing {'; '.join(missing)}")

    @property
    def kind(self) -> str:
        """``application credential`` or ``password``: what the profile authenticates with."""
        return "application credential" if self.application_credential_secret is not None else "password"

    @property
    def tenant_id(self) -> str | None:
        """The project the tokens are scoped to, once the first token told (None before)."""
        return self._project

    def _missing(self) -> list[str]:
        user_ok = bool(self.user_id or (self.username and (self.user_domain_id or self.user_domain_name)))
        need_user = "user_id, or username with user_domain_id or user_domain_name"
        if self.application_credential_secret is not None:
            if self.password is not None:
                return ["one of password or application_credential_secret, not both"]
            if self.application_credential_id or (self.application_credential_name and user_ok):
                return []
            return [f"application_credential_id, or application_credential_name with {need_user}"]
        problems = [] if self.password is not None else ["password (or application_credential_secret)"]
        if not user_ok:
            problems.append(need_user)
        if not (self.project_id or (self.project_name and (self.project_domain_id or self.project_domain_name))):
            problems.append("project_id, or project_name with project_domain_id or project_domain_name")
        return problems

    @property
    def token_url(self) -> str:
        return self.auth_url + "/auth/tokens"

    def _got(self, token: Token) -> None:
        self._project = token.tenant_id or self._project

    def _usable(self, token: Token, lasting: bool) -> bool:
        # Keystone's times are whole seconds: keep a margin so a token is not sent in its last moment
        margin = min(REQUEST_MARGIN, 0.25 * max(0.0, token.expires_at - token.issued_at))
        return token.fresh(self.clock() + margin, lasting=lasting)

    def _domain(self, domain_id: str | None, domain_name: str | None) -> dict[str, str]:
        return {"id": domain_id} if domain_id else {"name": domain_name or ""}

    def _user(self) -> dict[str, Any]:
        if self.user_id:
            return {"id": self.user_id}
        return {"name": self.username, "domain": self._domain(self.user_domain_id, self.user_domain_name)}

    def _body(self) -> dict[str, Any]:
        if self.application_credential_secret is not None:
            cred: dict[str, Any] = {"secret": self.application_credential_secret.reveal()}
            if self.application_credential_id:
                cred["id"] = self.application_credential_id
            else:
                cred.update(name=self.application_credential_name, user=self._user())
            # the token is scoped to the credential's own project: a scope block is not allowed
            return {"auth": {"identity": {"methods": ["application_credential"], "application_credential": cred}}}
        if self.password is None:  # __post_init__ refused such a profile already
            raise UsageError(f"auth profile {self.profile!r} ({self.kind}): missing password")
        user = {**self._user(), "password": self.password.reveal()}
        project = (
            {"id": self.project_id}
            if self.project_id
            else {"name": self.project_name, "domain": self._domain(self.project_domain_id, self.project_domain_name)}
        )
        return {
            "auth": {"identity": {"methods": ["password"], "password": {"user": user}}, "scope": {"project": project}}
        }

    def _who(self) -> str:
        """The identity in words, for error messages: names and ids only, never a secret."""
        if self.user_id:
            user = f"user id {self.user_id!r}"
        else:
            user = f"user {self.username!r} in domain {self.user_domain_id or self.user_domain_name!r}"
        if self.application_credential_secret is not None:
            if self.application_credential_id:
                return f"application credential id {self.application_credential_id!r}"
            return f"application credential {self.application_credential_name!r} of {user}"
        if self.project_id:
            return f"password of {user} for project id {self.project_id!r}"
        domain = self.project_domain_id or self.project_domain_name
        return f"password of {user} for project {self.project_name!r} in domain {domain!r}"

    def _scrub(self, text: str) -> str:
        for secret in (self.password, self.application_credential_secret):
            if secret is not None and secret.reveal():
                text = text.replace(secret.reveal(), "***")
        return text

    async def _fetch(self, session: aiohttp.ClientSession) -> Token:
        def refusal(err: ApiError) -> str:
            return (f"auth profile {self.profile!r}: Keystone refused the {self._who()}: {self._scrub(err.message)}; "
                    f"check the {self.kind} (it may be wrong, expired or deleted)")  # fmt: skip

        doc, headers = await post_for_token(session, self.token_url, self._body(), refusal=refusal,
                                            profile=self.profile, scrub=self._scrub, tls=self.tls,
                                            what="identity v3 response")  # fmt: skip
        return parse_v3_token(doc, headers.get("X-Subject-Token"), interface=self.interface, now=self.clock())
