"""``imgmig check``: authenticate every profile of a job and resolve every region it names. No image is
read or changed: the check costs one token per profile (and, for a fixed token, one schema read to see
that the server accepts it)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pipeline.cloud.auth import StaticTokenAuth
from pipeline.cloud.client import ImageClient
from pipeline.cloud.transport import new_session
from pipeline.config import JobSpec
from pipeline.errors import ApiError, AuthenticationError, ImgmigError, RegionNotFoundError, TLSVerificationError
from pipeline.run.inventory import Clients, retry_policy, transport_config
from pipeline.run.paths import check_paths

__all__ = ["CheckReport", "check_job"]

_KINDS = {"nhn": "NHN identity (Keystone v2.0 style)", "token": "fixed endpoint and token",
          "keystone": "Keystone v3", "cloud": "clouds.yaml / OS_* cloud"}  # fmt: skip


def _iso(t: float) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t != float("inf") else None


@dataclass
class ProfileCheck:
    name: str
    kind: str
    #: ok; refused (the credential: exit 4); unreachable (no answer: exit 1); tls (its certificate: exit 1)
    state: str = "ok"
    project: str | None = None
    expires_at: str | None = None
    endpoints: dict[str, str] = field(default_factory=dict)
    error: str | None = None


@dataclass
class PlaceCheck:
    role: str
    auth: str
    region: str
    endpoint: str | None = None
    error: str | None = None


@dataclass
class CheckReport:
    """What ``check`` found; ``error`` is the first problem (its exit code: 4 credential, 2 region)."""

    job: str
    profiles: list[ProfileCheck] = field(default_factory=list)
    places: list[PlaceCheck] = field(default_factory=list)
    #: The directories a run writes in, each created and written once: key -> path.
    paths: dict[str, str] = field(default_factory=dict)
    error: ImgmigError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        return {"job": self.job, "ok": self.ok, "exit_code": self.error.exit_code if self.error else 0,
                "profiles": [vars(p) for p in self.profiles], "places": [vars(p) for p in self.places],
                "paths": dict(self.paths)}  # fmt: skip

    def render(self) -> str:
        lines = [f"job {self.job}: {'ok' if self.ok else 'PROBLEMS'}"]
        for p in self.profiles:
            lines.append(f"  [auth.{p.name}] {_KINDS.get(p.kind, p.kind)}: "
                         + (f"{p.state.upper()}: {p.error}" if p.error else f"project {p.project}, token expires "
                            f"{p.expires_at or 'never (fixed token)'}"))  # fmt: skip
            lines += [f"    {region}: {url}" for region, url in sorted(p.endpoints.items())]
        for place in self.places:
            where = place.endpoint or f"NOT RESOLVED: {place.error}"
            lines.append(f"  {place.role} {place.region} (auth {place.auth}): {where}")
        lines += [f"  {key}: {path} (created and written)" for key, path in self.paths.items()]
        return "\n".join(lines)


async def check_job(spec: JobSpec) -> CheckReport:
    """Authenticate each profile once, then resolve the source's and every target's image endpoint."""
    report = CheckReport(spec.name, paths=check_paths(spec, write=True))
    async with new_session(transport_config(spec)) as session:
        clients = Clients(spec, session, retry_policy(spec))
        refused: set[str] = set()
        for name, profile in spec.auth.items():
            found = ProfileCheck(name, profile.kind)
            report.profiles.append(found)
            auth = clients.auth(name)
            try:
                token = await auth.token(session)
                if isinstance(auth, StaticTokenAuth):  # a fixed token is only known good once a server says so
                    await ImageClient(session, auth, "fixed").get_schema("image")
            except AuthenticationError as exc:
                found.state, found.error, report.error = "refused", str(exc), report.error or exc
                refused.add(name)
                continue
            except ApiError as exc:  # no answer, or a certificate that does not verify: exit 1 (the message names
                # the profile and the URL)
                found.state = "tls" if isinstance(exc, TLSVerificationError) else "unreachable"
                found.error, report.error = str(exc), report.error or exc
                refused.add(name)
                continue
            found.project = token.tenant_id or profile.tenant_id
            found.expires_at = _iso(token.expires_at)
            found.endpoints = dict(token.endpoints)
        places = [("source", spec.source), *(("target", t) for t in spec.labelled_targets().values())]
        for role, place in places:
            checked = PlaceCheck(role, place.auth, place.region)
            report.places.append(checked)
            if place.auth in refused:
                checked.error = f"auth profile {place.auth!r} has no token"
                continue
            try:
                checked.endpoint = await clients.client(place.auth, place.region).endpoint()
            except (RegionNotFoundError, ApiError) as exc:
                checked.error = str(exc)
                if isinstance(exc, RegionNotFoundError) and report.error is None:
                    report.error = exc
    return report
