"""The job file's sections as the spec: pydantic models (``extra="forbid"``, strict types, frozen) that every
other module reads, and ``JobSpec``, their assembly.

``load`` validates each section through its model separately, so one broken section does not hide the
problems of another; ``JobSpec`` is therefore a plain frozen dataclass holding the validated sections plus
what the file alone does not say (its name and path). An auth profile's secrets are never read from the
file: ``load`` puts them on the profile (private attributes) from the environment variables it names.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, PrivateAttr, field_validator

from pipeline.config.shard import Shard
from pipeline.config.values import (
    DEFAULT_BUFFER_DEPTH,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_COMMUNITY,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_CONNECTIONS_PER_REGION,
    DEFAULT_IDENTITY_URL,
    DEFAULT_IMAGES_IN_FLIGHT,
    DEFAULT_ON_CHANGE,
    DEFAULT_READ_TIMEOUT,
    DEFAULT_RETRIES,
    DEFAULT_VISIBILITY,
    Secret,
    _AuthRef,
    _AuthRefs,
    _aware_datetime,
    _between,
    _ChunkSize,
    _copy_properties,
    _Duration,
    _EnvName,
    _existing_path,
    _fraction,
    _Globs,
    _JobNames,
    _PathValue,
    _product,
    _Rate,
    _Size,
    _Text,
    _Texts,
    _Timeout,
    _Url,
    _visibility,
    normalize_endpoint,
)

__all__ = [
    "AuthProfile",
    "CopyOptions",
    "Endpoint",
    "JobSpec",
    "PruneOptions",
    "RunOptions",
    "Select",
    "Source",
    "Target",
    "TransferOptions",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class AuthProfile(_Section):
    #: "nhn" (NHN Cloud's Keystone v2.0-style identity, the default) or "keystone" (Keystone v3).
    type: Literal["nhn", "keystone"] = "nhn"
    identity_url: _Url = DEFAULT_IDENTITY_URL
    tenant_id: _Text | None = None
    username: _Text | None = None
    password_env: _EnvName | None = None
    endpoint: _Url | None = None
    token_env: _EnvName | None = None
    # Keystone v3 (type = "keystone")
    auth_url: _Url | None = None
    user_id: _Text | None = None
    user_domain_name: _Text | None = None
    user_domain_id: _Text | None = None
    project_name: _Text | None = None
    project_id: _Text | None = None
    project_domain_name: _Text | None = None
    project_domain_id: _Text | None = None
    application_credential_id: _Text | None = None
    application_credential_name: _Text | None = None
    application_credential_secret_env: _EnvName | None = None
    interface: Literal["public", "internal", "admin"] = "public"
    #: A cloud of clouds.yaml (found where openstacksdk looks), or "envvars" for the OS_* variables.
    cloud: _Text | None = None

    # Set by ``load`` (never from the file): the profile's name, and the secrets its *_env keys name.
    _name: str = PrivateAttr("")
    _password: Secret | None = PrivateAttr(None)
    _token: Secret | None = PrivateAttr(None)
    _application_credential_secret: Secret | None = PrivateAttr(None)

    @property
    def name(self) -> str:
        return self._name

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        yield "name", self._name
        yield from super().__repr_args__()
        for key in ("password", "token", "application_credential_secret"):  # shown as Secret('***')
            if (secret := getattr(self, f"_{key}")) is not None:
                yield key, secret

    @property
    def password(self) -> Secret | None:
        return self._password

    @property
    def token(self) -> Secret | None:
        return self._token

    @property
    def application_credential_secret(self) -> Secret | None:
        return self._application_credential_secret

    @property
    def kind(self) -> str:
        """``nhn`` (identity URL + tenant + username + password), ``token`` (a fixed endpoint + token),
        ``keystone`` (Keystone v3: a password with a project scope, or an application credential) or ``cloud``
        (a clouds.yaml cloud, or the OS_* variables)."""
        if self.cloud is not None:
            return "cloud"
        if self.type == "keystone":
            return "keystone"
        return "token" if self.endpoint is not None or self.token_env is not None else "nhn"

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


class Endpoint(_Section):
    """One side of the copy: an auth profile name and a region."""

    auth: _AuthRef
    region: _Text


class Source(Endpoint):
    #: NHN: switch nhncloud_allow_download on for a gated source while it is read, then back.
    enable_download: bool = False


#: The properties NHN Cloud's Create Image requires (its guide: ``os_type`` is a required request field).
NHN_REQUIRED_PROPERTIES = ("os_type",)


class Target(Endpoint):
    """A target: where copies go, and the target's own rules for creating them."""

    #: Properties a create must carry; None: NHN's (``os_type``) for an NHN profile, none for any other.
    required_properties: _Texts | None = None
    #: Values for required properties that a source lacks (over ``[copy] defaults``).
    defaults: Mapping[str, _Text] = Field(default_factory=dict)


class Select(_Section):
    """Which source images to copy; an image must pass every filter that is set."""

    ids: _Texts = ()
    names: _Globs = ()
    visibility: Annotated[tuple[str, ...], PlainValidator(_visibility)] = DEFAULT_VISIBILITY
    tags: _Texts = ()
    owner: _Text | None = None
    #: A volume-backed snapshot (its data is a block-storage snapshot, not in the Image API): "block" fails it
    #: with the reason (exit 1), "skip" lists it as skipped.
    volume_backed: Literal["block", "skip"] = "block"
    #: A selection that matches no source image at all is a failure (exit 1) unless this is true.
    allow_empty: bool = False
    size_min: _Size | None = None
    size_max: _Size | None = None
    nhncloud_product: Annotated[str, PlainValidator(_product)] | None = None
    updated_since: Annotated[datetime, PlainValidator(_aware_datetime)] | None = None
    properties: Mapping[str, str] = Field(default_factory=dict)

    @field_validator("size_max")
    @classmethod
    def _no_limit(cls, value: int | None) -> int | None:
        return value or None  # 0: no upper limit


class CopyOptions(_Section):
    """What travels with the bytes, and what to do when a target already differs."""

    properties: Annotated[bool | tuple[str, ...], PlainValidator(_copy_properties)] = True
    exclude_properties: _Globs = ()
    tags: bool = True
    members: bool = True
    visibility: bool = True
    protected: bool = True
    on_change: Literal["replace", "keep"] = DEFAULT_ON_CHANGE
    additive: bool = False
    member_map: Mapping[str, _Text] = Field(default_factory=dict)
    accept_members_with: _AuthRefs = ()
    community: Literal["skip", "private", "community"] = DEFAULT_COMMUNITY
    #: Values for properties a target requires and a source lacks (a target's own ``defaults`` win).
    defaults: Mapping[str, _Text] = Field(default_factory=dict)
    #: Properties that name another image of the source region: rewritten in each target to that image's copy.
    reference_properties: _Texts = ("kernel_id", "ramdisk_id")
    #: "exact": an image already in a target, without imgmig provenance, identical to a selected source (name,
    #: size, digests, formats; owned by the target project, active) is adopted as its copy: nothing uploaded.
    adopt: Literal["none", "exact"] = "none"
    #: Copy an image whose content differs from its disk_format (a qcow2 labelled raw), with a warning; an unsafe
    #: image (a backing file, an external data file...) is refused all the same.
    allow_format_mismatch: bool = False


class TransferOptions(_Section):
    """How hard to push: concurrency, chunking, bandwidth, retries, timeouts (seconds, bytes/s)."""

    images_in_flight: Annotated[int, AfterValidator(_between(1, 64))] = DEFAULT_IMAGES_IN_FLIGHT
    chunk_size: _ChunkSize = DEFAULT_CHUNK_SIZE
    buffer_depth: Annotated[int, AfterValidator(_between(1, 64))] = DEFAULT_BUFFER_DEPTH
    bandwidth: _Rate = None
    region_bandwidth: Mapping[str, _Rate] = Field(default_factory=dict)
    retries: Annotated[int, AfterValidator(_between(0, 100))] = DEFAULT_RETRIES
    connections_per_region: Annotated[int, AfterValidator(_between(1, 256))] = DEFAULT_CONNECTIONS_PER_REGION
    spool_dir: _PathValue | None = None
    connect_timeout: _Timeout = DEFAULT_CONNECT_TIMEOUT
    read_timeout: _Timeout = DEFAULT_READ_TIMEOUT
    #: How long the source may send nothing before its stream is reopened; None: ``read_timeout``.
    source_stall_timeout: _Timeout | None = None

    @field_validator("region_bandwidth")
    @classmethod
    def _limited_only(cls, value: Mapping[str, float | None]) -> dict[str, float]:
        return {region: bps for region, bps in value.items() if bps is not None}  # "0": unlimited, no entry


class RunOptions(_Section):
    """Where the journal lives, how long a run may take, metrics, and TLS settings."""

    #: ``load`` fills it in: ``state/<job name>`` unless the file says otherwise.
    journal_dir: _PathValue = Path()
    #: A node_exporter textfile (``*.prom``) rewritten atomically every 30 s and at the end of each run.
    metrics_file: _PathValue | None = None
    max_runtime: _Duration = None
    #: Names this job had before: their copies are taken over (their ``imgmig_job`` rewritten), not made again.
    previous_names: _JobNames = ()
    ca_bundle: Annotated[Path, PlainValidator(_existing_path)] | None = None
    insecure: bool = False


def _auto_or_bool(value: object) -> Literal["auto"] | bool:
    if value == "auto" or isinstance(value, bool):
        return value
    raise ValueError(f'must be "auto", true or false, got {value!r}')


class PruneOptions(_Section):
    """Mirrors: delete this job's copies whose source is no longer selected or no longer exists, within limits
    that keep a broken source or a wrong scope from emptying a DR site."""

    enabled: bool = False
    #: The most copies one run may delete; a plan with more deletes nothing (required when enabled).
    max_delete: Annotated[int, AfterValidator(_between(0, 10_000_000))] | None = None
    #: Refuse to prune when the selection shrank by more than this share since the last run.
    max_shrink: Annotated[float, PlainValidator(_fraction)] = 0.5
    #: Unprotect and delete protected copies too (otherwise they are kept, and the plan says so).
    prune_protected: bool = False
    #: Retire a copy (marked, hidden, deactivated) instead of deleting it, and delete it this long after; None:
    #: delete at once. A source selected again within the grace period gets its retired copy back.
    grace: _Duration = None
    #: Whether a retirement deactivates the copy: "auto" where the target is not NHN Cloud (whose guide documents
    #: no deactivation), or always / never.
    deactivate: Annotated[Literal["auto"] | bool, PlainValidator(_auto_or_bool)] = "auto"
    #: Prune adopted copies too ([copy] adopt); otherwise they are kept.
    adopted: bool = False


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A whole validated job file."""

    name: str
    path: Path | None
    auth: Mapping[str, AuthProfile]
    source: Source
    targets: tuple[Target, ...]
    select: Select
    copy: CopyOptions
    transfer: TransferOptions
    run: RunOptions
    prune: PruneOptions = field(default_factory=PruneOptions)
    #: The part of the job this process runs (``--shard``/``--shards``); None: all of it. ``run.journal_dir``
    #: is then the shard's own directory.
    shard: Shard | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """This job's name and the names it had before (``[run] previous_names``): its copies carry one of them."""
        return (self.name, *self.run.previous_names)

    def owns(self, source_id: str) -> bool:
        """Whether this process handles source image ``source_id`` (always, unless sharded)."""
        return self.shard is None or self.shard.owns(source_id)

    def profile(self, endpoint: Endpoint) -> AuthProfile:
        """The auth profile an endpoint names (validation guarantees it exists)."""
        return self.auth[endpoint.auth]

    def labelled_targets(self) -> dict[str, Target]:
        """A short, unique name per target: its region, or ``region@profile`` when a region repeats."""
        regions = [t.region for t in self.targets]
        return {(t.region if regions.count(t.region) == 1 else f"{t.region}@{t.auth}"): t for t in self.targets}

    def required_properties(self, target: Target, *, nhn_cloud: bool = False) -> tuple[str, ...]:
        """The properties a create in ``target`` must carry: its own list, else NHN's for an NHN profile (or, with
        ``nhn_cloud``, a clouds.yaml cloud found to be NHN's: ``auth_type: v2password``)."""
        if target.required_properties is not None:
            return target.required_properties
        return NHN_REQUIRED_PROPERTIES if self.is_nhn(target, nhn_cloud=nhn_cloud) else ()

    def is_nhn(self, endpoint: Endpoint, *, nhn_cloud: bool = False) -> bool:
        """Whether ``endpoint`` is NHN Cloud: an NHN profile, or (``nhn_cloud``) a clouds.yaml cloud found to be
        NHN's (``auth_type: v2password``)."""
        profile = self.profile(endpoint)
        return (profile.type == "nhn" and profile.cloud is None) or nhn_cloud

    def defaults(self, target: Target) -> dict[str, str]:
        """The values a copy in ``target`` takes for required properties its source lacks."""
        return {**self.copy.defaults, **target.defaults}
