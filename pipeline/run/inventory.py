"""Discovery before planning: clients for every profile and region, the selected source images, and
what each target already holds of this job (its copies, their members, the target's read-only fields).

Listing is read-only. A target that cannot be reached is marked unavailable with the reason, so the job
still runs for the other targets; a source or credential failure is fatal.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import anyio

from pipeline.cloud.auth import Auth, PasswordAuth, StaticTokenAuth, TokenCache
from pipeline.cloud.client import ImageClient
from pipeline.cloud.cloudconfig import cloud_auth, load_cloud
from pipeline.cloud.keystone import KeystoneAuth
from pipeline.cloud.retry import RetryPolicy
from pipeline.cloud.transport import TransportConfig
from pipeline.config import AuthProfile, Endpoint, JobSpec
from pipeline.errors import ApiError, EmptySelectionError, NotFoundError, UsageError, first_error
from pipeline.models import READ_ONLY_FIELDS, Image, Member, RequestCounts
from pipeline.plan.adoption import Adoptable, match_adoptable
from pipeline.plan.metadiff import read_only_fields, schema_formats
from pipeline.plan.planner import PARTIAL_STATES, skip_reason, volume_backed_reason
from pipeline.plan.provenance import PROV_JOB, PROV_SOURCE_ID, carries_provenance, is_own_copy, retired_at
from pipeline.plan.references import ReferenceGraph, references_of
from pipeline.plan.selection import describe_selection, near_misses, select_images
from pipeline.report.logs import register_secret
from pipeline.slices import SLICE
from pipeline.state.failpoints import failpoint

__all__ = ["Clients", "Inventory", "TargetState", "discover", "retired_copies", "retry_policy", "transport_config"]

LIST_CONCURRENCY = 8
#: A target's image schema read by an earlier run is trusted this long (schemas change with cloud upgrades).
SCHEMA_MAX_AGE = 7 * 24 * 3600.0


def transport_config(spec: JobSpec) -> TransportConfig:
    """Connection settings from the job's ``[transfer]`` and ``[run]`` tables."""
    transfer = spec.transfer
    return TransportConfig(
        connect_timeout=transfer.connect_timeout, read_timeout=transfer.read_timeout,
        connections_per_region=transfer.connections_per_region,
        ca_bundle=str(spec.run.ca_bundle) if spec.run.ca_bundle else None, insecure=spec.run.insecure,
    )  # fmt: skip


def retry_policy(spec: JobSpec) -> RetryPolicy:
    """The low-level retry policy of a job: ``retries = N`` means at most N + 1 tries of a request (within
    an image x target, its retry budget caps them further; see ``retry.RetryBudget``)."""
    return RetryPolicy(attempts=spec.transfer.retries + 1)


class Clients:
    """One Auth per profile and one ImageClient per (profile, region), over the run's session."""

    def __init__(
        self, spec: JobSpec, session: aiohttp.ClientSession, retry: RetryPolicy, requests: RequestCounts | None = None
    ) -> None:
        self.spec = spec
        self.session = session
        self.retry = retry
        #: Every Image API request of the run, by kind and region (one count shared by all clients).
        self.requests = requests if requests is not None else RequestCounts()
        self._auth: dict[str, Auth] = {}
        self._clients: dict[tuple[str, str], ImageClient] = {}

    def auth(self, name: str) -> Auth:
        if name not in self._auth:
            self._auth[name] = _make_auth(self.spec.auth[name], self.retry)
        return self._auth[name]

    def client(self, profile: str, region: str) -> ImageClient:
        key = (profile, region)
        if key not in self._clients:
            auth = self.auth(profile)  # a clouds.yaml cloud's verify/cacert cover its image endpoints too
            tls = auth.tls if isinstance(auth, KeystoneAuth | PasswordAuth) else None
            self._clients[key] = ImageClient(self.session, auth, region, retry=self.retry, requests=self.requests,
                                             tls=tls)  # fmt: skip
        return self._clients[key]

    def tokens_issued(self) -> dict[str, int]:
        """Tokens each profile obtained so far (a fixed token counts none)."""
        return {name: auth.issued for name, auth in self._auth.items() if isinstance(auth, TokenCache)}

    async def tenant(self, profile: str) -> str | None:
        """The profile's tenant: configured, or the one its token names."""
        configured = self.spec.auth[profile].tenant_id
        if configured:
            return configured
        return (await self.auth(profile).token(self.session)).tenant_id


def _make_auth(profile: AuthProfile, retry: RetryPolicy) -> Auth:
    if profile.kind == "cloud":  # clouds.yaml / OS_*: resolved now, the way openstacksdk resolves it
        cloud = load_cloud(profile.cloud)
        auth = cloud_auth(cloud, profile.name, retry)
        if isinstance(auth, KeystoneAuth) and "interface" in profile.model_fields_set:  # the job file's wins
            auth.interface = profile.interface
        for secret in (cloud.password, cloud.application_credential_secret):
            if secret is not None:
                register_secret(secret.reveal())
        return auth
    if profile.kind == "keystone":
        for secret in (profile.password, profile.application_credential_secret):
            if secret is not None:
                register_secret(secret.reveal())
        if profile.auth_url is None:  # the job file's validation requires it
            raise UsageError(f'auth profile {profile.name!r}: type = "keystone" needs auth_url')
        return KeystoneAuth(
            profile.auth_url, profile.name, username=profile.username, user_id=profile.user_id,
            user_domain_name=profile.user_domain_name, user_domain_id=profile.user_domain_id,
            password=profile.password, project_name=profile.project_name, project_id=profile.project_id,
            project_domain_name=profile.project_domain_name, project_domain_id=profile.project_domain_id,
            application_credential_id=profile.application_credential_id,
            application_credential_name=profile.application_credential_name,
            application_credential_secret=profile.application_credential_secret, interface=profile.interface,
            retry=retry,
        )  # fmt: skip
    if profile.endpoint is not None:
        if profile.token is None:
            raise UsageError(f"auth profile {profile.name!r}: token_env is not set in the environment")
        register_secret(profile.token.reveal())
        return StaticTokenAuth(profile.endpoint, profile.token, profile.tenant_id, profile=profile.name)
    if profile.password is None or not profile.tenant_id or not profile.username:
        raise UsageError(f"auth profile {profile.name!r}: password_env is not set in the environment")
    register_secret(profile.password.reveal())
    return PasswordAuth(profile.identity_url, profile.tenant_id, profile.username, profile.password, retry=retry,
                        profile=profile.name)  # fmt: skip


@dataclass
class TargetState:
    label: str
    endpoint: Endpoint
    client: ImageClient
    tenant_id: str | None = None
    copies: list[Image] = field(default_factory=list)
    #: This job's copies that a grace-period prune retired (``imgmig_retired_at``): not among ``copies``.
    retired: list[Image] = field(default_factory=list)
    #: ``[copy] adopt``: the images without provenance that are identical to a selected source, and the near misses.
    adoptable: Adoptable | None = None
    #: ``[copy] adopt``: the target project's active images without provenance, until they are matched.
    candidates: list[Image] = field(default_factory=list)
    members: dict[str, list[Member]] = field(default_factory=dict)
    read_only: frozenset[str] = frozenset()
    #: The disk and container formats the target's schema lists (None: not known, nothing is refused for it).
    disk_formats: frozenset[str] | None = None
    container_formats: frozenset[str] | None = None
    #: What this discovery learned from a schema it read (the journal's "schema" record: read_only, the two
    #: format lists); None when a fresh one was known.
    schema_read: dict[str, Any] | None = None
    algorithms: frozenset[str] = frozenset()
    #: Why this target cannot be used in this run (unreachable region), or None.
    error: str | None = None
    #: The target is a clouds.yaml cloud that NHN Cloud's identity (v2password) serves.
    nhn_cloud: bool = False


@dataclass
class Inventory:
    source: ImageClient
    source_tenant: str | None
    images: list[Image]
    missing_ids: list[str]
    source_members: dict[str, list[Member]]
    targets: dict[str, TargetState]
    #: Source images whose details could not be read (their steps fail; the others go on).
    image_errors: dict[str, str] = field(default_factory=dict)
    #: Sources that no longer exist, of this job's unfinished copies (queued, saving, killed) in some target:
    #: those copies never held verified data, and the sweep deletes them.
    vanished_sources: frozenset[str] = frozenset()
    #: The references between the images (``[copy] reference_properties``), and the images included for them.
    references: ReferenceGraph = field(default_factory=ReferenceGraph)
    #: How many source images the whole selection matched, every shard's included (``imgmig_selected_images``).
    selected_count: int = 0


async def _list_all(client: ImageClient, filters: Mapping[str, Any]) -> list[Image]:
    """Every image matching ``filters``, hidden (os_hidden) ones included: the two listings run at once (at
    WAN latency, one round trip per page instead of two), and are merged in the same order as one after the
    other."""
    pages: dict[str, list[Image]] = {}

    async def listing(hidden: str) -> None:
        listed = client.list_images({**filters, "os_hidden": hidden}, packed=True)
        pages[hidden] = [image async for image in listed]

    with _one_error():
        async with anyio.create_task_group() as tg:
            for hidden in ("false", "true"):
                tg.start_soon(listing, hidden)
    found: dict[str, Image] = {}
    for hidden in ("false", "true"):
        for image in pages.pop(hidden):
            found.setdefault(image.id, image)
    return list(found.values())


async def _members(
    client: ImageClient, images: Sequence[Image], errors: dict[str, str] | None = None
) -> dict[str, list[Member]]:
    """Members of every shared image; with ``errors``, a failure is recorded per image instead of raised."""
    limiter = anyio.CapacityLimiter(LIST_CONCURRENCY)
    out: dict[str, list[Member]] = {}

    async def fetch(image: Image) -> None:
        async with limiter:
            try:
                out[image.id] = await client.list_members(image.id)
            except ApiError as exc:  # a dead credential is not an ApiError: it stops the job (exit 4)
                if errors is None:
                    raise
                errors[image.id] = f"cannot read the source image's members: {exc}"

    with _one_error():
        async with anyio.create_task_group() as tg:
            for image in images:
                if image.visibility == "shared":
                    tg.start_soon(fetch, image)
    return out


@contextlib.contextmanager
def _one_error() -> Iterator[None]:
    """The error of concurrent reads as itself, not as an exception group (``first_error`` picks the one that
    explains them), so an unreachable region is caught as the ``ApiError`` it is."""
    try:
        yield
    except BaseExceptionGroup as group:
        error = first_error(group)
        raise error from (None if error is group else group)


async def _source_images(spec: JobSpec, client: ImageClient, owner: str | None) -> tuple[list[Image], list[str]]:
    """The selected source images, of every shard (references may join images of different shards into one
    group, see ``_with_references``), and the selected ids this shard owns that do not exist."""
    select = spec.select
    missing: list[str] = []
    if select.ids:
        images = []
        for image_id in select.ids:
            try:
                images.append(await client.get_image(image_id))
            except NotFoundError:
                if spec.owns(image_id):
                    missing.append(image_id)
        return select_images(images, select, owner), missing
    filters: dict[str, Any] = {"visibility": "all"}
    if owner:
        filters["owner"] = owner
    if select.tags:
        filters["tag"] = list(select.tags)
    filters.update(select.properties)
    listed = await _list_all(client, filters)
    picked: list[Image] = []
    for at in range(0, len(listed), SLICE):  # a rule on names, tags or properties decodes each document
        picked += select_images(listed[at : at + SLICE], select, owner)
        await anyio.lowlevel.checkpoint()
    return picked, missing


async def _with_references(
    spec: JobSpec, client: ImageClient, selected: list[Image]
) -> tuple[list[Image], ReferenceGraph]:
    """The selected images plus every image they reference (``[copy] reference_properties``), fetched from the
    source and included, referenced ones first; and the graph of the references, with the ones that cannot be
    resolved (gone, another project's, never copied, a loop) blocking the images that make them."""
    graph = ReferenceGraph()
    known = {image.id: image for image in selected}
    gone: set[str] = set()
    queue = deque(selected)
    number = 0
    while queue:
        image = queue.popleft()
        number += 1
        if number % SLICE == 0:  # each image's document is decoded to find its references: 0.8 s at 100,000
            await anyio.lowlevel.checkpoint()
        for prop, target in references_of(image, spec.copy.reference_properties).items():
            graph.add(image, prop, target)
            if target in known or target in gone:
                continue
            try:
                found = await client.get_image(target)
            except NotFoundError:
                gone.add(target)
                continue
            known[target] = found
            graph.include(target, image, prop)
            queue.append(found)
    for referrer, refs in graph.refs.items():
        for prop, target in refs.items():
            why = ("it cannot be read in the source region (deleted, or another project's)" if target in gone
                   else skip_reason(known[target], spec.copy) or volume_backed_reason(known[target]))  # fmt: skip
            if why:
                graph.block(referrer, f"its {prop} names image {target}, which cannot be copied: {why}")
    graph.close_loops()
    graph.spread_blocks()
    return graph.ordered(list(known.values())), graph


async def _target_listing(
    spec: JobSpec, clients: Clients, label: str, endpoint: Endpoint, schemas: Mapping[str, Mapping[str, Any]] | None
) -> TargetState:
    """What a target holds of this job (every shard's copies; ``_target_state`` keeps this shard's), and its
    image schema unless the journal knows a fresh one: the two reads at once. Runs while the source is listed."""
    state = TargetState(label, endpoint, clients.client(endpoint.auth, endpoint.region))
    try:
        # a clouds.yaml cloud with auth_type v2password is NHN Cloud's identity: NHN's create rules apply
        state.nhn_cloud = spec.auth[endpoint.auth].kind == "cloud" and isinstance(clients.auth(endpoint.auth),
                                                                                   PasswordAuth)  # fmt: skip
        state.tenant_id = await clients.tenant(endpoint.auth)
        filters: dict[str, Any] = {"visibility": "all"}
        if state.tenant_id:
            filters["owner"] = state.tenant_id
        known = (schemas or {}).get(label)
        schema: Mapping[str, Any] | None = None
        listed: dict[str, list[Image]] = {}

        async def read_schema() -> None:
            nonlocal schema
            with contextlib.suppress(ApiError):  # no schema offered: the built-in read-only set applies
                schema = await state.client.get_schema("image")

        async def list_named(name: str) -> None:
            listed[name] = await _list_all(state.client, {PROV_JOB: name, **filters} if name else filters)

        # this job's copies, under its name and each previous one; with adoption on, every image of the project
        # instead (one listing: the images without provenance are the ones it may adopt)
        names = ("",) if spec.copy.adopt != "none" else spec.names
        with _one_error():
            async with anyio.create_task_group() as tg:
                if known is None or time.time() - known.get("at", 0.0) >= SCHEMA_MAX_AGE:
                    tg.start_soon(read_schema)
                    known = None
                for name in names:
                    tg.start_soon(list_named, name)
        state.copies = [image for name in names for image in listed.pop(name)]
        if known is None:
            disk, container = schema_formats(schema)
            known = state.schema_read = {"read_only": sorted(read_only_fields(schema) - READ_ONLY_FIELDS),
                                         "disk_formats": disk, "container_formats": container}  # fmt: skip
        state.read_only = READ_ONLY_FIELDS | frozenset(known.get("read_only") or ())
        formats = known.get("disk_formats"), known.get("container_formats")
        state.disk_formats, state.container_formats = (frozenset(f) if f is not None else None for f in formats)
    except ApiError as exc:  # unreachable or failing region; credential and catalog errors are fatal
        state.error = f"target {label} is unavailable: {exc}"
    return state


async def _target_state(spec: JobSpec, state: TargetState, source_algo: str, owns: Callable[[str], bool]) -> None:
    """Keep this shard's copies of what ``_target_listing`` found, and read the members of the shared ones."""
    if state.error is not None:
        state.copies = []
        return
    try:
        # the filters are re-checked on every image: a server that ignores an unknown property filter
        # (or the owner filter) must not make another job's images, or anybody's, look like our copies
        # a shard sees only the copies of the source images it owns: it never sweeps, reuses or changes
        # another shard's copy, not even a queued leftover
        kept: list[Image] = []
        algos: set[str] = set()
        adopting = spec.copy.adopt != "none"
        for number, c in enumerate(state.copies, start=1):
            if number % SLICE == 0:  # one pass, in slices: a listed image's document is decoded to be read
                await anyio.lowlevel.checkpoint()
            ours = not state.tenant_id or c.owner == state.tenant_id
            if ours and is_own_copy(c, spec.names) and owns(str(c.raw.get(PROV_SOURCE_ID))):
                (kept if retired_at(c) is None else state.retired).append(c)
                if c.os_hash_algo:
                    algos.add(c.os_hash_algo.lower())
            elif adopting and ours and c.status == "active" and not carries_provenance(c):
                state.candidates.append(c)
        state.copies = kept
        state.members = await _members(state.client, state.copies)
        state.algorithms = frozenset(algos or {source_algo})
    except ApiError as exc:  # unreachable or failing region; credential and catalog errors are fatal
        state.copies, state.members = [], {}
        state.error = f"target {state.label} is unavailable: {exc}"


async def discover(
    spec: JobSpec, clients: Clients, schemas: Mapping[str, Mapping[str, Any]] | None = None
) -> Inventory:
    """Authenticate, list the source selection and every target's copies of this job. ``schemas``: what the
    journal knows of each target's image schema (``JournalState.schemas``); one fresher than
    ``SCHEMA_MAX_AGE`` is not read again, so a rerun with nothing to do costs listings only."""
    source = clients.client(spec.source.auth, spec.source.region)
    source_tenant = await clients.tenant(spec.source.auth)
    owner = spec.select.owner or source_tenant
    listed: dict[str, TargetState] = {}
    selection: list[tuple[list[Image], list[str]]] = []

    async def list_target(label: str, endpoint: Endpoint) -> None:
        listed[label] = await _target_listing(spec, clients, label, endpoint, schemas)

    with _one_error():
        async with anyio.create_task_group() as tg:  # the source and every target at once
            for label, endpoint in spec.labelled_targets().items():
                tg.start_soon(list_target, label, endpoint)
            selection.append(await _source_images(spec, source, owner))
    selected, missing = selection[0]
    if not selected and not spec.select.allow_empty:  # judged on the whole selection, before the shard filter
        visible = await _list_all(source, {"visibility": "all", **({"owner": owner} if owner else {})})
        raise EmptySelectionError(spec.source.region, describe_selection(spec.select, owner),
                                  near_misses(spec.select, owner, visible))  # fmt: skip
    every, references = await _with_references(spec, source, selected)
    roots = references.roots()

    def owns(source_id: str) -> bool:  # a group joined by references belongs to the shard of its smallest id
        return spec.owns(roots.get(source_id, source_id))

    images = [image for image in every if owns(image.id)]
    image_errors: dict[str, str] = {}
    source_members = await _members(source, images, image_errors)
    algo = next((i.os_hash_algo.lower() for i in images if i.os_hash_algo), "sha512")
    ordered = {label: listed[label] for label in spec.labelled_targets()}
    with _one_error():
        async with anyio.create_task_group() as tg:
            for state in ordered.values():
                tg.start_soon(_target_state, spec, state, algo, owns)
    for state in ordered.values():  # [copy] adopt: what each target holds that is identical to a selected source
        if spec.copy.adopt != "none" and state.error is None:
            state.adoptable, state.candidates = match_adoptable(images, state.candidates), []
    vanished = await _vanished_sources(source, images, ordered.values())
    failpoint("listed")
    return Inventory(source, source_tenant, images, missing, source_members, ordered, image_errors, vanished,
                     references, len(selected))  # fmt: skip


async def retired_copies(spec: JobSpec, clients: Clients) -> dict[str, TargetState]:
    """Each target's copies of this job (this shard's), the retired ones in ``retired``: what ``imgmig restore``
    needs, without the source (a source deleted by mistake is why a copy is restored)."""
    listed: dict[str, TargetState] = {}

    async def list_target(label: str, endpoint: Endpoint) -> None:
        state = await _target_listing(spec, clients, label, endpoint, {label: {"at": time.time()}})
        await _target_state(spec, state, "sha512", spec.owns)
        listed[label] = state

    with _one_error():
        async with anyio.create_task_group() as tg:
            for label, endpoint in spec.labelled_targets().items():
                tg.start_soon(list_target, label, endpoint)
    return {label: listed[label] for label in spec.labelled_targets()}


async def _vanished_sources(
    source: ImageClient, images: Sequence[Image], targets: Iterable[TargetState]
) -> frozenset[str]:
    """The sources, among those of this job's unfinished copies that no selected image explains, that no longer
    exist (one GET each: 404). Such a copy is what a run left when its source vanished under it."""
    selected = {image.id for image in images}
    orphaned = {str(c.raw.get(PROV_SOURCE_ID)) for t in targets for c in t.copies
                if c.status in PARTIAL_STATES and c.raw.get(PROV_SOURCE_ID) not in selected}  # fmt: skip
    gone = set()
    for source_id in sorted(orphaned):
        try:
            await source.get_image(source_id)
        except NotFoundError:
            gone.add(source_id)
    return frozenset(gone)
