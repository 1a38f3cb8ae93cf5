"""Building blocks for job-level tests: source data sets, job files, CLI runs, and the invariants.

The invariants are checked through the emulator's admin view of every image in a region (all tenants),
so nothing the job did can hide: exactly one verified copy per selected image and target, nothing else
carrying the job's provenance, metadata equal to the source's.

The in-process half (``job``, ``run``, ``add``, ``copies``, ``assert_same``) drives the embedded emulator and
the runner in the test's own event loop; ``CRASH_POINTS`` are the fail points a ``kill -9`` is placed at.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from pipeline.cloud import ImageClient, PasswordAuth, Secret, new_session
from pipeline.config import JobSpec, parse_job
from pipeline.emulator import Emulator
from pipeline.emulator.store import ImageRecord, MemberRecord, iso_now
from pipeline.plan.provenance import PROVENANCE_PREFIX
from pipeline.report.summary import RunSummary
from pipeline.run.runner import RunControls, run_job

__all__ = [
    "CRASH_POINTS",
    "TARGETS",
    "MiB",
    "SourceImage",
    "add",
    "admin_images",
    "assert_same",
    "check_invariants",
    "copies",
    "job",
    "make_source",
    "run",
    "run_cli",
    "write_job",
]

PASSWORD_ENV = "IMGMIG_TEST_PASSWORD"
PASSWORD = "test-password-5f3a"  # the secret scanned for in every output (see test_security)


@dataclass
class SourceImage:
    id: str
    name: str
    size: int
    checksum: str
    fields: dict[str, Any]
    members: dict[str, str] = field(default_factory=dict)


def admin_images(admin: str, region: str) -> list[dict[str, Any]]:
    """Every image in ``region`` regardless of tenant, with ``_members`` (emulator admin view)."""
    with urllib.request.urlopen(f"{admin}/regions/{region}/images", timeout=30) as resp:
        images: list[dict[str, Any]] = json.loads(resp.read())["images"]
        return images


def _payload(name: str, size: int) -> bytes:
    seed = hashlib.sha256(name.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


DEFAULT_SET: list[tuple[int, dict[str, Any], dict[str, str]]] = [
    (3 << 20, {"name": "golden-a", "os_distro": "ubuntu", "hw_disk_bus": "virtio", "tags": ["golden", "한글"],
               "min_disk": 10, "min_ram": 512}, {}),
    (1 << 20, {"name": "golden-b", "os_type": "windows", "tags": ["golden"], "visibility": "shared"},
     {"partner": "accepted", "other": "pending"}),
    (0, {"name": "empty", "description": "유니코드"}, {}),
    (2 << 20, {"name": "locked", "protected": True, "os_version": "22.04"}, {}),
    ((5 << 20) + 123, {"name": "big-ish", "login_username": "ubuntu"}, {}),
]  # fmt: skip


async def _create(
    identity_url: str, tenant: str, region: str, specs: Any, partner: str, other: str
) -> list[SourceImage]:
    out = []
    async with new_session() as session:
        client = ImageClient(session, PasswordAuth(identity_url, tenant, "owner", Secret(PASSWORD)), region)
        for size, fields, members in specs:
            body = {"os_type": "linux", "disk_format": "raw", "container_format": "bare", **fields}
            protected = body.pop("protected", False)
            img = await client.create_image(body)
            data = _payload(fields["name"], size)
            await client.upload_image(img.id, _chunks(data), size=size)
            resolved = {partner if m == "partner" else other: s for m, s in members.items()}
            for member, status in resolved.items():
                await client.add_member(img.id, member)
                if status != "pending":
                    peer = ImageClient(session, PasswordAuth(identity_url, member, "peer", Secret(PASSWORD)), region)
                    await peer.update_member_status(img.id, member, status)
            if protected:
                await client.update_image(img.id, [{"op": "replace", "path": "/protected", "value": True}])
            out.append(SourceImage(img.id, fields["name"], size, hashlib.md5(data).hexdigest(),
                                   {**body, "protected": protected}, resolved))  # fmt: skip
    return out


async def _chunks(data: bytes):  # type: ignore[no-untyped-def]
    view = io.BytesIO(data)
    while chunk := view.read(1 << 20):
        yield chunk


def make_source(identity_url: str, tenant: str, *, partner: str, other: str, region: str = "KR1",
                specs: Any = None) -> list[SourceImage]:  # fmt: skip
    """Create the test data set in the source region (through the real API)."""
    return anyio.run(_create, identity_url, tenant, region, specs or DEFAULT_SET, partner, other)


def write_job(
    path: Path, *, name: str, identity_url: str, tenant: str, journal: Path,
    targets: tuple[str, ...] = ("KR2", "JP1"), extra: str = "", partner: str | None = None,
) -> Path:  # fmt: skip
    """A job file for ``tenant`` copying KR1 to ``targets`` (1 MiB chunks, so uploads span chunks)."""
    lines = [
        f'name = "{name}"',
        "[auth.main]", f'identity_url = "{identity_url}"', f'tenant_id = "{tenant}"', 'username = "owner"',
        f'password_env = "{PASSWORD_ENV}"',
    ]  # fmt: skip
    if partner:
        lines += ["[auth.partner]", f'identity_url = "{identity_url}"', f'tenant_id = "{partner}"',
                  'username = "peer"', f'password_env = "{PASSWORD_ENV}"']  # fmt: skip
    lines += ["[source]", 'auth = "main"', 'region = "KR1"']
    for region in targets:
        lines += ["[[targets]]", 'auth = "main"', f'region = "{region}"']
    lines += ["[transfer]", 'chunk_size = "1MiB"', "images_in_flight = 2", "buffer_depth = 2",
              'read_timeout = "20s"']  # fmt: skip
    lines += ["[run]", f'journal_dir = "{journal}"']
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120, cwd: Path | None = None,
            **popen: Any) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """``python -m pipeline ARGS`` with the test password set; never raises on a non-zero exit."""
    full_env = {**os.environ, PASSWORD_ENV: PASSWORD, **(env or {})}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, check=False, cwd=cwd, **popen)  # fmt: skip


def check_invariants(admin: str, job: str, sources: list[SourceImage], targets: tuple[str, ...], *,
                     tenant: str, member_map: dict[str, str] | None = None) -> None:  # fmt: skip
    """Exactly one verified copy per source image and target, nothing extra, metadata equal (through the
    emulator's admin view of every image)."""
    for region in targets:
        _check_region(region, job, sources, [i for i in admin_images(admin, region) if i["owner"] == tenant],
                      member_map=member_map)  # fmt: skip


def _check_region(
    region: str, job: str, sources: list[SourceImage], images: list[dict[str, Any]], *,
    member_map: dict[str, str] | None = None, member_status: dict[str, str] | None = None,
) -> None:  # fmt: skip
    """The invariants in one region, given every image the copying tenant owns there."""
    stray = [i["id"] for i in images if i.get("imgmig_job") != job]
    assert not stray, f"{region}: images without this job's provenance appeared: {stray}"
    by_source: dict[str, list[dict[str, Any]]] = {}
    for image in images:
        by_source.setdefault(image["imgmig_source_id"], []).append(image)
    assert set(by_source) == {s.id for s in sources}, f"{region}: copies of unknown or missing sources"
    for src in sources:
        copies = by_source[src.id]
        assert len(copies) == 1, f"{region}: {len(copies)} copies of {src.name}"
        copy = copies[0]
        assert copy["status"] == "active", f"{region}: {src.name} is {copy['status']}"
        assert (copy["size"], copy["checksum"]) == (src.size, src.checksum), f"{region}: {src.name} data"
        for key, value in src.fields.items():
            if key in ("disk_format", "container_format"):
                continue
            got = copy.get(key)
            if key == "tags":
                assert sorted(got) == sorted(value), f"{region}: {src.name} tags"
            else:
                assert got == value, f"{region}: {src.name} {key}: {got!r} != {value!r}"
        members = {m["member_id"]: m["status"] for m in copy["_members"]}
        wanted = {(member_map or {}).get(m, m) for m in src.members}
        assert set(members) == wanted, f"{region}: {src.name} members {members}"
        for member, status in (member_status or {}).items():
            if member in members:
                assert members[member] == status, f"{region}: {src.name} member {member}"


def new_tenants(n: int) -> list[str]:
    return [uuid.uuid4().hex for _ in range(n)]


async def _api_images(identity_url: str, tenant: str, region: str) -> list[Any]:
    async with new_session() as session:
        client = ImageClient(session, PasswordAuth(identity_url, tenant, "owner", Secret(PASSWORD)), region)
        found = {}
        for hidden in ("false", "true"):
            async for image in client.list_images({"owner": tenant, "visibility": "all", "os_hidden": hidden}):
                members = await client.list_members(image.id) if image.visibility == "shared" else []
                found[image.id] = {**image.raw, "_members": [{"member_id": m.member_id, "status": m.status}
                                                             for m in members]}  # fmt: skip
        return list(found.values())


async def _drift(identity_url: str, tenant: str, sources: list[SourceImage], key: str, value: str) -> None:
    async with new_session() as session:
        client = ImageClient(session, PasswordAuth(identity_url, tenant, "owner", Secret(PASSWORD)), "KR1")
        for src in sources:
            ops = [{"op": "add", "path": f"/{key}", "value": value}]
            if src.fields.get("protected"):  # a protected image cannot be modified: unprotect around it
                await client.update_image(src.id, [{"op": "replace", "path": "/protected", "value": False}])
                ops.append({"op": "replace", "path": "/protected", "value": True})
            await client.update_image(src.id, ops)


def drift_sources(identity_url: str, tenant: str, sources: list[SourceImage], key: str, value: str) -> None:
    """Set property ``key`` on every source image (through the API, as its owner): every copy drifts."""
    anyio.run(_drift, identity_url, tenant, sources, key, value)


def api_images(identity_url: str, tenant: str, region: str) -> list[dict[str, Any]]:
    """Every image of ``tenant`` in ``region`` as the Image API shows it (with ``_members``)."""
    images: list[dict[str, Any]] = anyio.run(_api_images, identity_url, tenant, region)
    return images


def check_invariants_api(identity_url: str, job: str, sources: list[SourceImage], targets: tuple[str, ...], *,
                         tenant: str, member_status: dict[str, str] | None = None) -> None:  # fmt: skip
    """The same invariants, seen through the Image API as the copying tenant (for real Glance, which has no
    admin view)."""
    for region in targets:
        images = anyio.run(_api_images, identity_url, tenant, region)
        _check_region(region, job, sources, images, member_status=member_status)


def assert_done_means_verified(journal_dir: Path, job: str, checksums: dict[str, str]) -> int:
    """Every image x target the journal calls done carries evidence: the md5 computed in flight and the
    checksum the target reported both equal the source's. Returns how many were checked."""
    from pipeline.state.journal import Journal

    state = Journal.read(journal_dir, job)
    checked = 0
    for image_id, entry in state.images.items():
        for label, target in entry.targets.items():
            if target.state != "done" or target.action not in ("copy", "resume", "replace"):
                continue
            evidence = target.evidence or {}
            assert evidence, f"{image_id} -> {label}: done without evidence"
            assert evidence["computed"].get("md5") == checksums[image_id], f"{image_id} -> {label}: computed md5"
            assert evidence["reported"].get("checksum") == checksums[image_id], f"{image_id} -> {label}: reported"
            assert evidence["reported"].get("status") == "active"
            checked += 1
    return checked


# In-process helpers: the embedded emulator (the ``emulator`` fixture) and the runner called directly.

TARGETS = ("KR2", "JP1")
MiB = 1 << 20


def job(emu: Emulator, tmp_path: Path, tenant: str, *, copy: dict[str, Any] | None = None,
        profiles: dict[str, str] | None = None, sections: dict[str, Any] | None = None) -> JobSpec:  # fmt: skip
    """A job KR1 -> KR2 + JP1 for ``tenant``; ``profiles`` adds named profiles for other tenants, ``sections``
    more tables (``select``, ``prune``, ...)."""
    auth = {"main": {"identity_url": emu.identity_url, "tenant_id": tenant, "username": "u", "password_env": "PW"}}
    for name, other in (profiles or {}).items():
        auth[name] = {
            "identity_url": emu.identity_url,
            "tenant_id": other,
            "username": name,
            "password_env": "PW",
        }
    doc: dict[str, Any] = {
        "name": "meta", "auth": auth, "source": {"auth": "main", "region": "KR1"},
        "targets": [{"auth": "main", "region": r} for r in TARGETS],
        "transfer": {"chunk_size": "1MiB", "images_in_flight": 6},
        "run": {"journal_dir": str(tmp_path / "state")},
    }  # fmt: skip
    if copy:
        doc["copy"] = copy
    doc.update(sections or {})
    return parse_job(doc, "test", {"PW": "pw"})


async def run(spec: JobSpec) -> RunSummary:
    """Run ``spec`` in this event loop, with no signal handlers installed."""
    return await run_job(spec, RunControls(signals=()))


def add(emu: Emulator, tenant: str, name: str, *, size: int = 64 * 1024, members: dict[str, str] | None = None,
        tags: list[str] | None = None, data: bytes | None = None, **fields: Any) -> ImageRecord:  # fmt: skip
    """An active source image (its bytes: ``data``, else its name repeated); tags are set directly so a source may
    carry tags NHN would refuse."""
    store = emu.store("KR1")
    if data is None:
        data = (name.encode() * (size // max(len(name.encode()), 1) + 1))[:size]
    rec = store.add_bytes(tenant, data, {"name": name, **fields})
    rec.tags = list(tags or [])
    now = iso_now()
    for member, status in (members or {}).items():
        rec.members[member] = MemberRecord(member, status, now, now)
    return rec


def copies(emu: Emulator, region: str, tenant: str) -> dict[str, ImageRecord]:
    """The copies job "meta" made for ``tenant`` in ``region``, by source image id."""
    return {r.properties["imgmig_source_id"]: r for r in emu.store(region).images.values()
            if r.owner == tenant and r.properties.get("imgmig_job") == "meta"}  # fmt: skip


CORE = ("name", "disk_format", "container_format", "min_disk", "min_ram", "visibility", "protected", "os_hidden",
        "size", "checksum", "os_hash_value")  # fmt: skip


def assert_same(src: ImageRecord, dst: ImageRecord, *, refused_tags: set[str] = frozenset(),  # type: ignore[assignment]
                member_status: dict[str, str] | None = None) -> None:  # fmt: skip
    """Field-by-field equality of a copy with its source."""
    for key in CORE:
        assert getattr(dst, key) == getattr(src, key), f"{src.name}: {key}"
    props = {k: v for k, v in dst.properties.items() if not k.startswith(PROVENANCE_PREFIX)}
    assert props == src.properties, f"{src.name}: properties"
    assert sorted(dst.tags) == sorted(set(src.tags) - refused_tags), f"{src.name}: tags"
    assert set(dst.members) == set(src.members), f"{src.name}: members"
    for member, status in (member_status or {}).items():
        assert dst.members[member].status == status, f"{src.name}: member {member}"


#: Where to die: discovery, planning, creation, mid-upload, after upload, verification, metadata,
#: after metadata, and in the middle of journal writes (a torn line).
CRASH_POINTS = [
    "listed",
    "planned",
    "created",
    "created@4",
    "uploading@2",
    "uploading@9",
    "uploaded",
    "uploaded@5",
    "verified",
    "verified@6",
    "metadata",
    "metadata@4",
    "synced@3",
    "journal_torn@3",
    "journal_torn@10",
    "journal_torn@22",
]
