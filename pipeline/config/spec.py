"""Job files: ``jobs/*.toml`` read into a frozen ``JobSpec``, with every problem reported at once.

Three passes, all collecting into one list of (dotted key path, message):

1. structure: each section (and each auth profile and target) goes through its own pydantic model
   in ``specschema`` (``extra="forbid"``, strict types), so one broken section does not hide the problems of another;
   sizes, rates and durations are parsed by ``units``;
2. references: auth profile names, duplicate targets, a target that is the source;
3. secrets: ``password_env`` / ``token_env`` are looked up in the ``environ`` mapping given.

Any problem raises one ``JobSpecError`` (exit 2) listing them all. Validation makes no network calls;
it touches the file system only to read the job file and to check that ``ca_bundle`` exists.
Secrets live in ``Secret`` objects, so neither ``repr(spec)`` nor any message shows them.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pipeline.cloud.auth import DEFAULT_IDENTITY_URL, Secret, normalize_endpoint
from pipeline.config.schema import (
    _NAME,
    _TOP_LEVEL,
    DEFAULT_BUFFER_DEPTH,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_COMMUNITY,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_CONNECTIONS_PER_REGION,
    DEFAULT_IMAGES_IN_FLIGHT,
    DEFAULT_ON_CHANGE,
    DEFAULT_READ_TIMEOUT,
    DEFAULT_RETRIES,
    DEFAULT_VISIBILITY,
    _dotted,
    _kind,
    _Problems,
    _Raw,
    _RawAuth,
    _RawCopy,
    _RawEndpoint,
    _RawRun,
    _RawSelect,
    _RawSource,
    _RawTransfer,
    _unknown_key,
    _validate,
)
from pipeline.errors import JobSpecError
from pipeline.units import format_size

__all__ = [
    "DEFAULT_BUFFER_DEPTH",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_COMMUNITY",
    "DEFAULT_CONNECTIONS_PER_REGION",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_IDENTITY_URL",
    "DEFAULT_IMAGES_IN_FLIGHT",
    "DEFAULT_JOURNAL_ROOT",
    "DEFAULT_ON_CHANGE",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_RETRIES",
    "DEFAULT_VISIBILITY",
    "AuthProfile",
    "CopyOptions",
    "Endpoint",
    "JobSpec",
    "RunOptions",
    "Select",
    "TransferOptions",
    "load_job",
    "parse_job",
]

#: The journal lives in ``DEFAULT_JOURNAL_ROOT / name`` unless ``run.journal_dir`` says otherwise.
DEFAULT_JOURNAL_ROOT = Path("state")

# === the data model: what every other module reads


@dataclass(frozen=True, slots=True)
class AuthProfile:
    """Named credentials, of one ``kind``: ``nhn`` (identity URL + tenant + username + password),
    ``token`` (a fixed endpoint + token), ``keystone`` (Keystone v3: a password with a project scope, or
    an application credential) or ``cloud`` (a clouds.yaml cloud, or the OS_* variables)."""

    name: str
    kind: str = "nhn"
    identity_url: str = DEFAULT_IDENTITY_URL
    tenant_id: str | None = None
    username: str | None = None
    password_env: str | None = None
    endpoint: str | None = None
    token_env: str | None = None
    password: Secret | None = None
    token: Secret | None = None
    auth_url: str | None = None
    user_id: str | None = None
    user_domain_name: str | None = None
    user_domain_id: str | None = None
    project_name: str | None = None
    project_id: str | None = None
    project_domain_name: str | None = None
    project_domain_id: str | None = None
    application_credential_id: str | None = None
    application_credential_name: str | None = None
    application_credential_secret_env: str | None = None
    application_credential_secret: Secret | None = None
    interface: str = "public"
    cloud: str | None = None

    @property
    def location(self) -> str:
        """Where the profile points (its endpoint, identity and project, or cloud); equal means the same place."""
        if self.kind == "token":
            return normalize_endpoint(self.endpoint or "")
        if self.kind == "cloud":
            return f"cloud {self.cloud}"
        if self.kind == "keystone":
            project = self.project_id or f"{self.project_domain_id or self.project_domain_name}/{self.project_name}"
            who = self.application_credential_id or self.application_credential_name or project
            return f"{(self.auth_url or '').rstrip('/')} {who}"
        return f"{self.identity_url.rstrip('/')} tenant {self.tenant_id}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One side of the copy: an auth profile name and a region (``enable_download``: the source only)."""

    auth: str
    region: str
    #: NHN: switch a gated source's nhncloud_allow_download on while it is read, and back afterwards.
    enable_download: bool = False


@dataclass(frozen=True, slots=True)
class Select:
    """Which source images to copy; an image must pass every filter that is set."""

    ids: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    visibility: tuple[str, ...] = DEFAULT_VISIBILITY
    tags: tuple[str, ...] = ()
    owner: str | None = None
    size_min: int | None = None
    size_max: int | None = None
    nhncloud_product: str | None = None
    updated_since: datetime | None = None
    properties: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CopyOptions:
    """What travels with the bytes, and what to do when a target already differs."""

    properties: bool | tuple[str, ...] = True
    exclude_properties: tuple[str, ...] = ()
    tags: bool = True
    members: bool = True
    visibility: bool = True
    protected: bool = True
    on_change: Literal["replace", "keep"] = DEFAULT_ON_CHANGE
    additive: bool = False
    member_map: Mapping[str, str] = field(default_factory=dict)
    accept_members_with: tuple[str, ...] = ()
    community: Literal["skip", "private", "community"] = DEFAULT_COMMUNITY


@dataclass(frozen=True, slots=True)
class TransferOptions:
    """How hard to push: concurrency, chunking, bandwidth, retries, timeouts (seconds, bytes/s)."""

    images_in_flight: int = DEFAULT_IMAGES_IN_FLIGHT
    chunk_size: int = DEFAULT_CHUNK_SIZE
    buffer_depth: int = DEFAULT_BUFFER_DEPTH
    bandwidth: float | None = None
    region_bandwidth: Mapping[str, float] = field(default_factory=dict)
    retries: int = DEFAULT_RETRIES
    connections_per_region: int = DEFAULT_CONNECTIONS_PER_REGION
    spool_dir: Path | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    #: How long the source may send nothing before its stream is reopened; None: ``read_timeout``.
    source_stall_timeout: float | None = None


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Where the journal lives, how long a run may take, and TLS settings."""

    journal_dir: Path
    max_runtime: float | None = None
    metrics_file: Path | None = None
    ca_bundle: Path | None = None
    insecure: bool = False


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A whole validated job file."""

    name: str
    path: Path | None
    auth: Mapping[str, AuthProfile]
    source: Endpoint
    targets: tuple[Endpoint, ...]
    select: Select
    copy: CopyOptions
    transfer: TransferOptions
    run: RunOptions

    def profile(self, endpoint: Endpoint) -> AuthProfile:
        """The auth profile an endpoint names (validation guarantees it exists)."""
        return self.auth[endpoint.auth]


# === sections that are more than a model: the name, auth profiles, targets


def _job_name(value: object, problems: _Problems) -> str | None:
    if value is None:
        problems.append(("name", "missing required key"))
    elif not isinstance(value, str):
        problems.append(("name", f"expected a string, got {_kind(value)}"))
    elif not _NAME.fullmatch(value):
        problems.append(("name", "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"))
    else:
        return value
    return None


_KEYSTONE_KEYS = frozenset({
    "auth_url", "user_id", "user_domain_name", "user_domain_id", "project_name", "project_id",
    "project_domain_name", "project_domain_id", "application_credential_id", "application_credential_name",
    "application_credential_secret_env", "interface",
})  # fmt: skip


def _keystone_form(given: set[str], loc: tuple[str | int, ...], problems: _Problems) -> bool:
    """Whether a ``type = "keystone"`` profile names what Keystone v3 needs (problems listed if not)."""
    before = len(problems)
    if "auth_url" not in given:
        problems.append((_dotted((*loc, "auth_url")), "missing required key (the Keystone v3 URL)"))
    stray = given - _KEYSTONE_KEYS - {"type", "username", "password_env"}
    problems.extend((_dotted((*loc, k)), "not a Keystone v3 key") for k in sorted(stray))
    user = "user_id" in given or ("username" in given and given & {"user_domain_name", "user_domain_id"})
    if given & {"application_credential_id", "application_credential_name", "application_credential_secret_env"}:
        if "application_credential_secret_env" not in given:
            problems.append((_dotted((*loc, "application_credential_secret_env")), "missing required key"))
        if "application_credential_id" not in given and not ("application_credential_name" in given and user):
            problems.append((_dotted(loc), "an application credential needs application_credential_id, or "
                                           "application_credential_name with the user (user_id, or username "
                                           "and user_domain_name or user_domain_id)"))  # fmt: skip
        return len(problems) == before
    if "password_env" not in given:
        problems.append((_dotted((*loc, "password_env")), "missing required key"))
    if not user:
        problems.append((_dotted(loc), "needs user_id, or username with user_domain_name or user_domain_id"))
    if "project_id" not in given and not (
        "project_name" in given and given & {"project_domain_name", "project_domain_id"}
    ):
        problems.append((_dotted(loc), "needs project_id, or project_name with project_domain_name or "
                                       "project_domain_id"))  # fmt: skip
    return len(problems) == before


def _auth_form(given: set[str], loc: tuple[str | int, ...], problems: _Problems) -> bool | None:
    """True for the token form, False for the password form, None (and a problem) for neither or both."""
    token_form = bool(given & {"endpoint", "token_env"})
    if token_form and given & {"username", "password_env"}:
        problems.append((_dotted(loc), "use either username + password_env or endpoint + token_env, not both"))
        return None
    if not token_form and not given & {"tenant_id", "username", "password_env"}:
        problems.append((_dotted(loc), "needs tenant_id, username and password_env, or endpoint and token_env"))
        return None
    needed = ("endpoint", "token_env") if token_form else ("tenant_id", "username", "password_env")
    missing = [key for key in needed if key not in given]
    problems.extend((_dotted((*loc, key)), "missing required key") for key in missing)
    return None if missing else token_form


def _auth_profile(
    name: str, table: object, env: Mapping[str, str], need_secrets: bool, problems: _Problems
) -> AuthProfile | None:
    loc: tuple[str | int, ...] = ("auth", name)
    raw = _validate(_RawAuth, table, loc, problems, None)
    given = set(table) if isinstance(table, dict) else set()
    if "cloud" in given:  # clouds.yaml or OS_*: read when the job runs (secrets may sit in those files)
        others = given - {"cloud", "interface"}
        problems.extend((_dotted((*loc, k)), "not allowed with cloud (the cloud supplies it)") for k in sorted(others))
        if raw is None or others:
            return None
        return AuthProfile(name=name, kind="cloud", cloud=raw.cloud,
                           interface=raw.interface if "interface" in given else "")  # fmt: skip
    if isinstance(table, dict) and table.get("type") == "keystone":
        if not _keystone_form(given, loc, problems) or raw is None:
            return None
        return _keystone_profile(name, raw, env, need_secrets, loc, problems)
    # The form is judged on the keys present, so it is reported even when a value is bad.
    stray = given & (_KEYSTONE_KEYS - {"interface"})
    problems.extend((_dotted((*loc, k)), 'a Keystone v3 key: set type = "keystone"') for k in sorted(stray))
    token_form = _auth_form(given, loc, problems) if isinstance(table, dict) else None
    if raw is None or token_form is None or stray:
        return None
    env_key = "token_env" if token_form else "password_env"
    variable = str(getattr(raw, env_key))
    secret = None
    if need_secrets:
        value = env.get(variable)
        if value:
            secret = Secret(value)
        else:  # the value is never put in a message, even an empty one
            state = "not set" if value is None else "empty"
            problems.append((_dotted((*loc, env_key)), f"environment variable {variable} is {state}"))
    return AuthProfile(
        name=name,
        kind="token" if token_form else "nhn",
        identity_url=raw.identity_url,
        tenant_id=raw.tenant_id,
        username=raw.username,
        password_env=raw.password_env,
        endpoint=raw.endpoint,
        token_env=raw.token_env,
        password=None if token_form else secret,
        token=secret if token_form else None,
    )


def _secret(variable: str | None, env: Mapping[str, str], key: str, loc: tuple[str | int, ...],
            problems: _Problems) -> Secret | None:  # fmt: skip
    """The secret in environment variable ``variable``, or a problem naming the variable (never its value)."""
    if variable is None:
        return None
    value = env.get(variable)
    if value:
        return Secret(value)
    problems.append(
        (_dotted((*loc, key)), f"environment variable {variable} is {'not set' if value is None else 'empty'}")
    )
    return None


def _keystone_profile(
    name: str, raw: _RawAuth, env: Mapping[str, str], need_secrets: bool, loc: tuple[str | int, ...],
    problems: _Problems,
) -> AuthProfile:  # fmt: skip
    password = secret = None
    if need_secrets:
        password = _secret(raw.password_env, env, "password_env", loc, problems)
        secret = _secret(raw.application_credential_secret_env, env, "application_credential_secret_env", loc,
                         problems)  # fmt: skip
    return AuthProfile(
        name=name, kind="keystone", username=raw.username, password_env=raw.password_env, password=password,
        auth_url=raw.auth_url, user_id=raw.user_id, user_domain_name=raw.user_domain_name,
        user_domain_id=raw.user_domain_id, project_name=raw.project_name, project_id=raw.project_id,
        project_domain_name=raw.project_domain_name, project_domain_id=raw.project_domain_id,
        application_credential_id=raw.application_credential_id,
        application_credential_name=raw.application_credential_name,
        application_credential_secret_env=raw.application_credential_secret_env,
        application_credential_secret=secret, interface=raw.interface,
    )  # fmt: skip


def _auth(value: object, env: Mapping[str, str], need_secrets: bool, problems: _Problems) -> dict[str, AuthProfile]:
    if value is None:
        problems.append(("auth", "missing required key"))
    elif not isinstance(value, dict):
        problems.append(("auth", f"expected a table, got {_kind(value)}"))
    elif not value:
        problems.append(("auth", "define at least one profile, like [auth.src]"))
    else:
        profiles = {name: _auth_profile(name, table, env, need_secrets, problems) for name, table in value.items()}
        return {name: profile for name, profile in profiles.items() if profile}
    return {}


def _targets(value: object, problems: _Problems, profiles: list[str] | None) -> list[_RawEndpoint | None]:
    if value is None:
        problems.append(("targets", "missing required key"))
    elif not isinstance(value, list):
        problems.append(("targets", f"expected an array of tables ([[targets]]), got {_kind(value)}"))
    elif not value:
        problems.append(("targets", "at least one target is required"))
    else:
        return [_validate(_RawEndpoint, item, ("targets", i), problems, profiles) for i, item in enumerate(value)]
    return []


# === checks across sections


def _check_places(
    source: _RawEndpoint | None,
    targets: list[_RawEndpoint | None],
    profiles: Mapping[str, AuthProfile],
    problems: _Problems,
) -> None:
    """A target must differ from the source and from every earlier target (location + region)."""

    def place(end: _RawEndpoint | None) -> tuple[str, str] | None:
        if end is None:
            return None
        # A broken profile still has a name: the same name and region is the same place.
        profile = profiles.get(end.auth)
        return (profile.location if profile else f"auth {end.auth}", end.region)

    here = place(source)
    seen: dict[tuple[str, str], int] = {}
    for i, target in enumerate(targets):
        key = place(target)
        if key is None:
            continue
        if key == here:
            problems.append((f"targets[{i}]", "target is the source (same location and region)"))
        elif key in seen:
            where = f"targets[{seen[key]}]"
            problems.append((f"targets[{i}]", f"duplicate target: same location and region as {where}"))
        else:
            seen[key] = i


def _fields(raw: _Raw) -> dict[str, Any]:
    """A raw model's values as dataclass keyword arguments, arrays frozen into tuples."""
    return {key: tuple(value) if isinstance(value, list) else value for key, value in raw}


# === entry points


def parse_job(
    doc: Mapping[str, Any],
    source: str,
    environ: Mapping[str, str] | None = None,
    *,
    need_secrets: bool = True,
) -> JobSpec:
    """Validate a parsed TOML document; raise ``JobSpecError`` listing every problem found.

    ``environ`` (default ``os.environ``) supplies the secrets named by ``password_env``/``token_env``;
    with ``need_secrets=False`` they are neither required nor read (for ``plan``-like commands).
    """
    env = os.environ if environ is None else environ
    problems: _Problems = [
        (_dotted((key,)), _unknown_key(key, list(_TOP_LEVEL))) for key in doc if key not in _TOP_LEVEL
    ]
    name = _job_name(doc.get("name"), problems)
    auth = doc.get("auth")
    names = list(auth) if isinstance(auth, dict) else None  # references are checked against these
    profiles = _auth(auth, env, need_secrets, problems)
    src = None
    if "source" not in doc:
        problems.append(("source", "missing required key"))
    else:
        src = _validate(_RawSource, doc["source"], ("source",), problems, names)
    targets = _targets(doc.get("targets"), problems, names)
    select = _validate(_RawSelect, doc.get("select", {}), ("select",), problems, names)
    copy = _validate(_RawCopy, doc.get("copy", {}), ("copy",), problems, names)
    transfer = _validate(_RawTransfer, doc.get("transfer", {}), ("transfer",), problems, names)
    run = _validate(_RawRun, doc.get("run", {}), ("run",), problems, names)

    _check_places(src, targets, profiles, problems)
    if select and select.size_min is not None and select.size_max and select.size_min > select.size_max:
        problems.append(("select.size_min", f"is larger than select.size_max ({format_size(select.size_max)})"))
    if transfer and src and targets and all(targets):
        regions = {src.region} | {t.region for t in targets if t}
        problems.extend(
            (
                _dotted(("transfer", "region_bandwidth", region)),
                "is neither the source region nor a target region",
            )
            for region in transfer.region_bandwidth
            if region not in regions
        )
    # Without problems every section parsed; the second half only tells the type checker so.
    if problems or not (name and src and targets and select and copy and transfer and run):
        raise JobSpecError(source, problems)
    return JobSpec(
        name=name,
        path=None,
        auth=profiles,
        source=Endpoint(src.auth, src.region, enable_download=src.enable_download),
        targets=tuple(Endpoint(t.auth, t.region) for t in targets if t),
        select=Select(**{**_fields(select), "size_max": select.size_max or None}),
        copy=CopyOptions(**_fields(copy)),
        transfer=TransferOptions(
            **{
                **_fields(transfer),
                "region_bandwidth": {r: bps for r, bps in transfer.region_bandwidth.items() if bps is not None},
            }
        ),
        run=RunOptions(**{**_fields(run), "journal_dir": run.journal_dir or DEFAULT_JOURNAL_ROOT / name}),
    )


def load_job(
    path: str | os.PathLike[str], environ: Mapping[str, str] | None = None, *, need_secrets: bool = True
) -> JobSpec:
    """Read and validate a job file; every problem (unreadable, bad TOML, invalid) is a ``JobSpecError``."""
    source = os.fspath(path)
    try:
        with open(path, "rb") as file:
            doc = tomllib.load(file)
    except OSError as exc:
        raise JobSpecError(source, [("", f"cannot read the file: {exc.strerror or exc}")]) from exc
    except UnicodeDecodeError as exc:
        raise JobSpecError(source, [("", "the file is not UTF-8 text")]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise JobSpecError(source, [("", f"TOML syntax error: {exc}")]) from exc
    return replace(parse_job(doc, source, environ, need_secrets=need_secrets), path=Path(source))
