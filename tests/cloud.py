"""Test access to a backend (the embedded emulator, or real Glance 33) through the same interface.

Every test gets fresh tenant ids, so tests sharing one long-lived backend never see each other's images.
``Cloud.raw`` sends a request with aiohttp directly, for asserting exact statuses, headers and bodies.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from pipeline.cloud import ImageClient, PasswordAuth, Secret
from pipeline.cloud.retry import RetryPolicy
from pipeline.emulator import Emulator

__all__ = ["FAST_RETRY", "Cloud", "RawResponse", "new_tenant"]

#: Retries without real waiting, so fault tests stay fast.
FAST_RETRY = RetryPolicy(attempts=5, initial=0.01, maximum=0.05, max_retry_after=0.2)


def new_tenant() -> str:
    """A fresh tenant id in NHN's 32-hex format."""
    return uuid.uuid4().hex


@dataclass
class RawResponse:
    status: int
    headers: Any
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Cloud:
    """One backend as tests see it."""

    kind: str
    identity_url: str
    regions: dict[str, str]
    session: aiohttp.ClientSession
    emulator: Emulator | None = None
    t1: str = field(default_factory=new_tenant)
    t2: str = field(default_factory=new_tenant)
    t3: str = field(default_factory=new_tenant)
    _auths: dict[str, PasswordAuth] = field(default_factory=dict)

    @property
    def nhn_rules(self) -> bool:
        """Whether the backend applies the NHN guide's stricter rules (the emulator does; Glance not)."""
        return self.kind == "emulator"

    def auth(self, tenant: str | None = None) -> PasswordAuth:
        tenant = tenant or self.t1
        if tenant not in self._auths:
            self._auths[tenant] = PasswordAuth(
                self.identity_url, tenant, f"user-{tenant[:8]}", Secret("s3cret-pw"), retry=FAST_RETRY
            )
        return self._auths[tenant]

    def client(self, tenant: str | None = None, region: str = "KR1") -> ImageClient:
        return ImageClient(self.session, self.auth(tenant), region, retry=FAST_RETRY)

    async def token(self, tenant: str | None = None) -> str:
        return (await self.auth(tenant).token(self.session)).id.reveal()

    async def raw(
        self,
        method: str,
        path: str,
        *,
        region: str = "KR1",
        tenant: str | None = None,
        token: str | None = "auto",
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> RawResponse:
        hdrs = dict(headers or {})
        if token == "auto":
            hdrs["X-Auth-Token"] = await self.token(tenant)
        elif token is not None:
            hdrs["X-Auth-Token"] = token
        async with self.session.request(method, self.regions[region] + path, headers=hdrs, **kwargs) as resp:
            return RawResponse(resp.status, resp.headers, await resp.read())

    def image_fields(self, **extra: Any) -> dict[str, Any]:
        """Create-image fields valid on every backend (NHN requires name and os_type)."""
        return {"name": "img", "os_type": "linux", "disk_format": "raw", "container_format": "bare", **extra}
