"""Runs the emulator: one identity endpoint plus one Image API server per region, in one event loop.

``running_emulator()`` is the async context manager that tests, the bench and ``imgmig emulate`` use. It
stops every server it started, also when start-up fails half-way. The identity port also serves the
admin endpoints (``/_admin/...``) that change fault knobs, quotas, accepted formats and token lifetimes
at runtime, and give a view of every image in a region regardless of tenant (for invariant checks). Bind
to loopback only.
"""

from __future__ import annotations

import json
import shutil
import ssl
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from .app import RegionContext, build_region_app
from .faults import FaultPlan
from .identity import DEFAULT_TOKEN_TTL, Identity, UserEntry, identity_routes
from .quotas import parse_limits
from .schemas import DEFAULT_CONTAINER_FORMATS, DEFAULT_DISK_FORMATS, format_list
from .seed import load_seed
from .store import RegionStore

__all__ = ["DEFAULT_REGIONS", "Emulator", "running_emulator"]

#: NHN Cloud's image regions (current guide): Pangyo, Pyeongchon, Gwangju, Japan.
DEFAULT_REGIONS = ("KR1", "KR2", "KR3", "JP1")
HOST = "127.0.0.1"


@dataclass
class Emulator:
    """A running emulator: URLs, and direct access to each region's store and fault knobs."""

    identity: Identity
    regions: dict[str, RegionContext]
    data_dir: Path
    identity_url: str = ""
    urls: dict[str, str] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        """What ``imgmig emulate`` prints as its first line."""
        return {"identity_url": self.identity_url, "regions": dict(self.urls)}

    def faults(self, region: str) -> FaultPlan:
        return self.regions[region].faults

    def store(self, region: str) -> RegionStore:
        return self.regions[region].store

    # === admin endpoints

    def _region(self, request: web.Request) -> RegionContext:
        region = request.match_info["region"]
        if region not in self.regions:
            raise web.HTTPNotFound(text=f"no region {region}")
        return self.regions[region]

    async def _faults(self, request: web.Request) -> web.Response:
        plan = self._region(request).faults
        if request.method == "DELETE":
            plan.reset()
        elif request.method == "POST":
            try:
                plan.update(await request.json())
            except (ValueError, TypeError) as exc:
                return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(plan.to_json())

    async def _limits(self, request: web.Request) -> web.Response:
        """A region's quotas: POST replaces them (``{"image_count_total": 2, ...}``), DELETE removes them all;
        every answer is ``{"limits": {...}, "usage": {project: {limit: usage}}}``."""
        store = self._region(request).store
        if request.method == "DELETE":
            store.limits = {}
        elif request.method == "POST":
            try:
                store.limits = parse_limits(await request.json())
            except ValueError as exc:
                return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"limits": dict(store.limits), "usage": store.usage()})

    async def _formats(self, request: web.Request) -> web.Response:
        """A region's accepted formats: POST sets the lists it names (``{"disk_formats": [...],
        "container_formats": [...]}``), DELETE restores Glance's defaults; every answer shows both lists."""
        store = self._region(request).store
        if request.method == "DELETE":
            store.disk_formats, store.container_formats = DEFAULT_DISK_FORMATS, DEFAULT_CONTAINER_FORMATS
        elif request.method == "POST":
            try:
                doc = await request.json()
                if not isinstance(doc, dict) or set(doc) - {"disk_formats", "container_formats"}:
                    raise ValueError("formats are a JSON object with disk_formats and/or container_formats lists")
                disk = format_list(doc.get("disk_formats", store.disk_formats), "disk_formats")
                container = format_list(doc.get("container_formats", store.container_formats), "container_formats")
            except (ValueError, TypeError) as exc:
                return web.json_response({"error": str(exc)}, status=400)
            store.disk_formats, store.container_formats = disk, container
        return web.json_response(_formats_json(store))

    async def _token_ttl(self, request: web.Request) -> web.Response:
        doc = await request.json()
        self.identity.token_ttl = float(doc["seconds"])
        return web.json_response({"token_ttl": self.identity.token_ttl})

    async def _expire_tokens(self, request: web.Request) -> web.Response:
        return web.json_response({"expired": self.identity.expire_all()})

    async def _synthetic(self, request: web.Request) -> web.Response:
        """Create one synthetic image (the answer is the image), or ``count`` of them (a summary)."""
        doc = await request.json()
        store = self._region(request).store
        args = (doc["owner"], int(doc["size"]), str(doc.get("seed", "bench")))
        count = int(doc.get("count", 1))
        fields = dict(doc.get("fields", {}))
        if count == 1:
            return web.json_response(store.add_synthetic(*args, fields).to_json())
        ids = [store.add_synthetic(*args, {**fields, "name": f"{fields.get('name', 'synthetic')}-{i:06d}"}).id
               for i in range(count)]  # fmt: skip
        return web.json_response({"created": len(ids), "first": ids[0], "last": ids[-1]})

    async def _tokens(self, request: web.Request) -> web.Response:
        """Every live token id (so security tests can search outputs for them)."""
        return web.json_response({"tokens": sorted(self.identity.tokens)})

    async def _all_images(self, request: web.Request) -> web.Response:
        store = self._region(request).store
        images = []
        for rec in store.images.values():
            doc = rec.to_json()
            doc["_members"] = [m.to_json(rec.id) for m in rec.members.values()]
            images.append(doc)
        return web.json_response({"images": images, "deleted": sorted(store.deleted_ids)})

    async def _state(self, request: web.Request) -> web.Response:
        fired = {r: ctx.faults.fired for r, ctx in self.regions.items()}
        state = {**self.info(), "tokens_issued": self.identity.issued, "faults_fired": fired,
                 "tokens_issued_by_tenant": self.identity.issued_by_tenant,
                 "authentications_refused": self.identity.refused,
                 "stats": {r: ctx.stats.to_json() for r, ctx in self.regions.items()},
                 "limits": {r: dict(ctx.store.limits) for r, ctx in self.regions.items()},
                 "formats": {r: _formats_json(ctx.store) for r, ctx in self.regions.items()}}  # fmt: skip
        return web.json_response(state)

    async def _password(self, request: web.Request) -> web.Response:
        """Change a user's password now: tokens already issued stay valid until they expire."""
        doc = await request.json()
        self.identity.changed_passwords[str(doc["username"])] = str(doc["password"])
        return web.json_response({"changed": doc["username"]})

    def identity_app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024)
        app.add_routes(identity_routes(self.identity))
        app.add_routes([
            web.get("/_admin/state", self._state, allow_head=False),
            web.post("/_admin/token-ttl", self._token_ttl),
            web.post("/_admin/expire-tokens", self._expire_tokens),
            web.post("/_admin/password", self._password),
            web.route("*", "/_admin/faults/{region}", self._faults),
            web.route("*", "/_admin/limits/{region}", self._limits),
            web.route("*", "/_admin/formats/{region}", self._formats),
            web.post("/_admin/regions/{region}/synthetic", self._synthetic),
            web.get("/_admin/regions/{region}/images", self._all_images, allow_head=False),
            web.get("/_admin/tokens", self._tokens, allow_head=False),
        ])  # fmt: skip
        return app


def _formats_json(store: RegionStore) -> dict[str, list[str]]:
    return {"disk_formats": list(store.disk_formats), "container_formats": list(store.container_formats)}


async def _listen(stack: AsyncExitStack, app: web.Application, port: int, tls: ssl.SSLContext | None = None) -> str:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, HOST, port, reuse_address=True, ssl_context=tls)
    await site.start()
    sockets = getattr(site._server, "sockets", None) or []  # aiohttp has no public accessor
    bound = sockets[0].getsockname()[1] if sockets else port
    return f"{'https' if tls else 'http'}://{HOST}:{bound}"


@asynccontextmanager
async def running_emulator(
    regions: Sequence[str] = DEFAULT_REGIONS,
    *,
    port: int = 0,
    data_dir: Path | None = None,
    seed: str | None = None,
    token_ttl: float = DEFAULT_TOKEN_TTL,
    users: dict[str, UserEntry] | None = None,
    require_format_match: bool = False,
    tls: ssl.SSLContext | None = None,
    download_rule: bool = True,
    disk_formats: Sequence[str] | None = None,
    container_formats: Sequence[str] | None = None,
) -> AsyncIterator[Emulator]:
    """Start the identity endpoint and every region; stop them all on exit (also on failure).

    With ``port=0`` every server gets an ephemeral port; with a fixed port the identity endpoint takes it
    and region *i* takes ``port + 1 + i``. Without ``data_dir`` image data goes to a temporary directory
    that is removed on exit. ``require_format_match`` turns on Glance 33's upload inspection (415 for bytes
    that do not match a bare image's disk_format); it is off by default, as in Glance releases before 33.
    ``tls`` serves every endpoint over HTTPS with that server context. ``download_rule`` applies NHN's
    download permission (``nhncloud_allow_download``); off, any image with data can be downloaded (Glance).
    ``disk_formats`` / ``container_formats`` are every region's accepted formats (Glance's ``[image_format]``
    options; default: Glance's defaults).
    """
    async with AsyncExitStack() as stack:
        if data_dir is None:
            tmp = tempfile.mkdtemp(prefix="imgmig-emulator-")
            stack.callback(shutil.rmtree, tmp, ignore_errors=True)
            data_dir = Path(tmp)
        identity = Identity(token_ttl=token_ttl, users=users)
        contexts = {
            name: RegionContext(
                name,
                RegionStore(
                    name, data_dir / name, require_format_match=require_format_match, download_rule=download_rule
                ),
                FaultPlan(),
                identity,
            )
            for name in regions
        }
        for ctx in contexts.values():
            if disk_formats is not None:
                ctx.store.disk_formats = format_list(disk_formats, "disk_formats")
            if container_formats is not None:
                ctx.store.container_formats = format_list(container_formats, "container_formats")
        emu = Emulator(identity=identity, regions=contexts, data_dir=data_dir)
        emu.identity_url = await _listen(stack, emu.identity_app(), port, tls) + "/v2.0"
        identity.url = emu.identity_url
        for i, (name, ctx) in enumerate(contexts.items()):
            emu.urls[name] = await _listen(stack, build_region_app(ctx), port + 1 + i if port else 0, tls)
        identity.catalog.update(emu.urls)
        if seed:
            load_seed(emu.store(next(iter(contexts))), seed)
        yield emu


def info_line(emu: Emulator) -> str:
    """The single JSON line ``imgmig emulate`` prints first."""
    return json.dumps(emu.info(), separators=(", ", ": "))
