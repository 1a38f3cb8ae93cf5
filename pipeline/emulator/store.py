"""One region's images: records, visibility, the queued -> saving -> active state machine, and data on disk.

Image data never lives in memory: uploads stream into ``<data_dir>/<id>.part`` (hashed on the way, md5
and sha512) and are renamed on success; synthetic images generate their bytes on read. Everything here is
synchronous; the aiohttp handlers in ``app.py`` and ``transfer.py`` call it, the latter running file I/O
in worker threads.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import time
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from . import quotas, synthetic
from .fields import CORE_WRITABLE, MAX_TAGS, GlanceError, parse_create, tags_quota_error, validate_tag
from .formats import HEAD_BYTES, judge_format, unsafe
from .schemas import DEFAULT_CONTAINER_FORMATS, DEFAULT_DISK_FORMATS, schema_documents

__all__ = [
    "ALLOW_DOWNLOAD",
    "Caller",
    "ImageRecord",
    "MemberRecord",
    "RegionStore",
    "UploadWriter",
    "check_policy",
    "iso_now",
]


_NOT_VISIBLE = "No image found with ID {}"
#: NHN's per-image download permission (a string property, like every custom property).
ALLOW_DOWNLOAD = "nhncloud_allow_download"


def iso_now(clock: float | None = None) -> str:
    """A Glance timestamp: ``2026-11-30T09:33:07Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if clock is None else clock))


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the tenant (project) a token belongs to."""

    tenant_id: str
    user_id: str = ""
    roles: tuple[str, ...] = ("member", "reader")


@dataclass(slots=True)
class MemberRecord:
    member_id: str
    status: str
    created_at: str
    updated_at: str

    def to_json(self, image_id: str) -> dict[str, Any]:
        return {
            "member_id": self.member_id,
            "image_id": image_id,
            "status": self.status,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "schema": "/v2/schemas/member",
        }


@dataclass(slots=True)
class ImageRecord:
    id: str
    owner: str
    seq: int
    created_at: str
    updated_at: str
    name: str | None = None
    status: str = "queued"
    # NHN guide, Create Image response example: an image created without visibility is "private"
    # (Glance 33 itself defaults to "shared")
    visibility: str = "private"
    protected: bool = False
    os_hidden: bool = False
    min_ram: int = 0
    min_disk: int = 0
    disk_format: str | None = None
    container_format: str | None = None
    size: int | None = None
    virtual_size: int | None = None
    checksum: str | None = None
    os_hash_algo: str | None = None
    os_hash_value: str | None = None
    tags: list[str] = field(default_factory=list)
    properties: dict[str, str] = field(default_factory=dict)
    members: dict[str, MemberRecord] = field(default_factory=dict)
    data_path: Path | None = None
    synthetic_seed: str | None = None
    #: Data a rejected (415) upload left in the store: Glance 33 then answers 500 to every new upload.
    orphan_path: Path | None = None
    #: Uploaded to a region with ``discard_uploads`` on: digests kept, bytes not.
    discarded: bool = False

    def to_json(self) -> dict[str, Any]:
        """The image as Glance renders it: custom properties first, then the core fields in order."""
        doc: dict[str, Any] = dict(self.properties)
        doc.update(
            name=self.name, disk_format=self.disk_format, container_format=self.container_format,
            visibility=self.visibility, size=self.size, virtual_size=self.virtual_size,
            status=self.status, checksum=self.checksum, protected=self.protected,
            min_ram=self.min_ram, min_disk=self.min_disk, owner=self.owner, os_hidden=self.os_hidden,
            os_hash_algo=self.os_hash_algo, os_hash_value=self.os_hash_value, id=self.id,
            created_at=self.created_at, updated_at=self.updated_at, tags=list(self.tags),
            self=f"/v2/images/{self.id}", file=f"/v2/images/{self.id}/file", schema="/v2/schemas/image",
        )  # fmt: skip
        return doc

    def get_field(self, key: str) -> Any:
        if key in CORE_WRITABLE or key in ("status", "size", "checksum", "owner", "id"):
            return getattr(self, key)
        return self.properties.get(key)


class UploadWriter:
    """Receives one upload: writes to a .part file, hashes md5 + the region's hashing algorithm (sha512,
    as Glance's ``hashing_algorithm`` default); commit renames, abort removes."""

    def __init__(self, path: Path, *, discard: bool = False, algorithm: str = "sha512") -> None:
        self.path = path
        self.part = path.with_suffix(".part")
        self.discard = discard
        self._file: BinaryIO = open(os.devnull if discard else self.part, "wb")
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._sha = hashlib.new(algorithm)
        self.size = 0
        #: The first bytes, for disk-format inspection.
        self.head = b""

    def write(self, data: bytes) -> None:
        """Write and hash one piece (called from a worker thread: hashlib releases the GIL)."""
        if len(self.head) < HEAD_BYTES:
            self.head += data[: HEAD_BYTES - len(self.head)]
        self._md5.update(data)
        self._sha.update(data)
        self._file.write(data)
        self.size += len(data)

    def commit(self) -> tuple[int, str, str]:
        self._file.close()
        if not self.discard:
            os.replace(self.part, self.path)
        return self.size, self._md5.hexdigest(), self._sha.hexdigest()

    def abort(self) -> None:
        self._file.close()
        if not self.discard:
            self.part.unlink(missing_ok=True)


class RegionStore:
    """All images of one region, with Glance's visibility and ownership rules.

    ``require_format_match`` switches on Glance 33's upload inspection (415 when the bytes do not match a
    bare image's disk_format, and when they fail the inspector's safety checks); it is off by default, like older
    Glance releases, and on in the contract tests, like the real-Glance harness. ``refuse_unsafe`` alone is Glance
    33 with ``require_image_format_match`` off: a label may lie, but unsafe bytes (a qcow2 backing file...) are
    refused all the same.

    Region configuration, plain data that tests set directly (or through the admin endpoints): ``limits``
    (Glance's unified limits for every project, see ``quotas``; empty: no quota) and ``disk_formats`` /
    ``container_formats`` (Glance's ``[image_format]`` lists: the schema's enums, checked on create and
    PATCH).
    """

    def __init__(
        self, region: str, data_dir: Path, *, require_format_match: bool = False, download_rule: bool = True
    ) -> None:
        self.region = region
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.images: dict[str, ImageRecord] = {}
        self.deleted_ids: set[str] = set()
        self.require_format_match = require_format_match
        self.refuse_unsafe = require_format_match
        #: NHN's download permission (current guide, Download Image): data is served only when the image's
        #: nhncloud_allow_download is true and the caller has the member (or admin) role. Off: plain Glance.
        self.download_rule = download_rule
        #: Glance's ``hashing_algorithm`` for this region (``os_hash_algo`` of what is uploaded here).
        self.hashing_algorithm = "sha512"
        #: Limit name -> limit (``quotas.LIMITS``), for every project; an absent name is unlimited.
        self.limits: dict[str, int] = {}
        #: The formats this region accepts (Glance's ``[image_format] disk_formats`` / ``container_formats``).
        self.disk_formats: tuple[str, ...] = DEFAULT_DISK_FORMATS
        self.container_formats: tuple[str, ...] = DEFAULT_CONTAINER_FORMATS
        self._seq = itertools.count()
        #: Bumped before and after every request that may change images (see ``stats_middleware``): a
        #: listing walk's cached order (``listing``) is reused only while it is unchanged.
        self.version = 0
        #: Listing walks in progress: query (without marker) -> (version, ordered records, id -> position).
        self.walks: dict[tuple[Any, ...], tuple[int, list[ImageRecord], dict[str, int]]] = {}

    # === configuration

    def schema(self, name: str = "image") -> dict[str, Any] | None:
        """The region's ``/v2/schemas/{name}`` document (its format enums follow the configuration)."""
        return schema_documents(tuple(self.disk_formats), tuple(self.container_formats)).get(name)

    def image_schema(self) -> dict[str, Any]:
        return schema_documents(tuple(self.disk_formats), tuple(self.container_formats))["image"]

    def enforce_quota(self, resource: str, project: str, delta: int = 0) -> None:
        """quotas.LimitExceeded (413) when ``project``'s usage of ``resource`` plus ``delta`` is over its limit."""
        quotas.enforce(self.limits, self.images.values(), project, resource, delta)

    def usage(self) -> dict[str, dict[str, int]]:
        """Every project's current usage of each limit (projects that own images here)."""
        return {owner: quotas.usage(self.images.values(), owner)
                for owner in sorted({rec.owner for rec in self.images.values()})}  # fmt: skip

    # === lookup and permissions

    def can_see(self, rec: ImageRecord, caller: Caller) -> bool:
        if rec.owner == caller.tenant_id or rec.visibility in ("public", "community"):
            return True
        return rec.visibility == "shared" and caller.tenant_id in rec.members

    def visible(self, image_id: str, caller: Caller, message: str = _NOT_VISIBLE) -> ImageRecord:
        """The image if ``caller`` may see it, else 404 (``message`` with the id, Glance's wording)."""
        rec = self.images.get(image_id)
        if rec is None or not self.can_see(rec, caller):
            raise GlanceError(404, message.format(image_id))
        return rec

    def owned(self, image_id: str, caller: Caller, action: str) -> ImageRecord:
        rec = self.visible(image_id, caller)
        check_policy(rec, caller, action)
        return rec

    def all_visible(self, caller: Caller) -> Iterator[ImageRecord]:
        return (rec for rec in self.images.values() if self.can_see(rec, caller))

    # === create / delete

    def create(self, body: Any, caller: Caller, *, existing: bool = False) -> ImageRecord:
        """POST /v2/images: validate every field first, with the region's formats and image_count_total quota,
        then create a queued image. ``existing`` (seeding: an image that is already there) skips the quota
        and accepts Glance's default formats whatever the region's configuration."""

        def admit() -> None:
            self.enforce_quota(quotas.IMAGE_COUNT_TOTAL, caller.tenant_id, delta=1)

        if existing:
            core, props, tags = parse_create(body, caller.tenant_id)
        else:
            core, props, tags = parse_create(body, caller.tenant_id, schema=self.image_schema(), admit=admit)
        image_id = core.pop("id", None) or str(uuid.uuid4())
        if image_id in self.images or image_id in self.deleted_ids:
            raise GlanceError(409, f"Image ID {image_id} already exists!")
        now = iso_now()
        rec = ImageRecord(id=image_id, owner=caller.tenant_id, seq=next(self._seq), created_at=now,
                          updated_at=now, tags=tags, properties=props)  # fmt: skip
        for key, value in core.items():
            if key in CORE_WRITABLE:
                setattr(rec, key, value)
        self.images[image_id] = rec
        return rec

    def delete(self, image_id: str, caller: Caller) -> None:
        rec = self.visible(image_id, caller, "Failed to find image {} to delete")
        check_policy(rec, caller, "delete_image")
        if rec.protected:
            raise GlanceError(403, f"Image {image_id} is protected and cannot be deleted.")
        # NHN guide, Delete Image: "Images with public visibility cannot be deleted."
        if rec.visibility == "public":
            raise GlanceError(403, f"Image {image_id} is public and cannot be deleted.")
        del self.images[image_id]
        self.deleted_ids.add(image_id)
        for path in (rec.data_path, rec.orphan_path):
            if path is not None:
                path.unlink(missing_ok=True)

    def touch(self, rec: ImageRecord) -> None:
        rec.updated_at = iso_now()

    # === deactivate / reactivate

    def set_activation(self, image_id: str, caller: Caller, action: str) -> ImageRecord:
        """POST /actions/deactivate|reactivate after the body check: lookup (404), the policy (admin, or the
        member role in the owner's project: 403), then Glance's domain transition (active <-> deactivated;
        a no-op, nothing saved, when the image is already there; 403 from any other status)."""
        rec = self.visible(image_id, caller)
        if "admin" not in caller.roles and not ("member" in caller.roles and rec.owner == caller.tenant_id):
            raise GlanceError(403, f"You are not authorized to complete {action} action.")
        source, target = ("active", "deactivated") if action == "deactivate" else ("deactivated", "active")
        if rec.status == target:
            return rec
        if rec.status != source:
            raise GlanceError(403, f"Not allowed to {action} image in status '{rec.status}'")
        rec.status = target
        self.touch(rec)
        return rec

    # === tags

    def add_tag(self, image_id: str, tag: str, caller: Caller) -> None:
        validate_tag(tag)
        rec = self._tag_target(image_id, caller)
        self.check_modifiable(rec)
        if tag not in rec.tags:
            if len(rec.tags) >= MAX_TAGS:
                quota = tags_quota_error(len(rec.tags) + 1).explanation
                raise GlanceError(413, f"Image tag limit exceeded for image {image_id}: {quota}:")
            rec.tags.append(tag)
            self.touch(rec)

    def delete_tag(self, image_id: str, tag: str, caller: Caller) -> None:
        rec = self._tag_target(image_id, caller)
        if tag not in rec.tags:
            raise GlanceError(404)
        self.check_modifiable(rec)
        rec.tags.remove(tag)
        self.touch(rec)

    def _tag_target(self, image_id: str, caller: Caller) -> ImageRecord:
        rec = self.visible(image_id, caller, "Image {} not found.")
        check_policy(rec, caller, "modify_image")
        return rec

    @staticmethod
    def check_modifiable(rec: ImageRecord) -> None:
        """NHN guide, image field 'protected': "Cannot be modified or deleted when protected=true"."""
        if rec.protected:
            raise GlanceError(403, f"Image {rec.id} is protected and cannot be modified.")

    # === data

    def begin_upload(
        self, image_id: str, caller: Caller, *, discard: bool = False, size: int | None = None
    ) -> tuple[ImageRecord, UploadWriter]:
        """Glance's upload up to the data: the image_size_total quota for the announced ``size`` (before the
        image is even looked up), the move to saving, then the image_count_uploading quota (which puts the
        image back to queued when it refuses)."""
        self.enforce_quota(quotas.IMAGE_SIZE_TOTAL, caller.tenant_id, delta=0 if size is None else size // quotas.MIB)
        rec = self.owned(image_id, caller, "upload_image")
        if rec.status != "queued":
            raise GlanceError(409, f"Image status transition from {rec.status} to saving is not allowed")
        if not rec.disk_format or not rec.container_format:
            raise GlanceError(400, "Properties disk_format, container_format must be set prior to saving "
                                   "data.")  # fmt: skip
        rec.status = "saving"
        try:
            self.enforce_quota(quotas.IMAGE_COUNT_UPLOADING, caller.tenant_id)
        except quotas.LimitExceeded:
            rec.status = "queued"  # image_data.py's _restore
            self.touch(rec)
            raise
        if rec.orphan_path is not None:
            # Glance 33 quirk kept on purpose: the rejected upload's file is still in the store, so
            # glance_store refuses the new one (Duplicate) and Glance answers a bare 500
            rec.status = "queued"
            raise GlanceError(500)
        self.touch(rec)
        return rec, UploadWriter(self.data_dir / rec.id, discard=discard, algorithm=self.hashing_algorithm)

    def finish_upload(self, rec: ImageRecord, writer: UploadWriter, *, ok: bool) -> None:
        """Commit a complete upload (active), abort a broken one (back to queued, no data), or refuse one
        whose bytes do not match the disk format (415, with Glance 33's leftovers)."""
        if not ok or rec.id not in self.images:
            writer.abort()
            if rec.id in self.images:
                rec.status = "queued"
                self.touch(rec)
            return
        size, md5, sha = writer.commit()
        verdict = judge_format(rec.disk_format, rec.container_format, writer.head, size)
        refused = None
        if (self.refuse_unsafe or self.require_format_match) and rec.container_format == "bare":
            refused = unsafe(writer.head, match=self.require_format_match)
        if refused is None and not verdict.ok and self.require_format_match:
            refused = f"Image disk_format {rec.disk_format} does not match stream data {verdict.detected}"
        if refused is not None:
            # Glance 33 quirk kept on purpose: the image is queued again, but checksum and os_hash_* of the
            # refused bytes stay set and the file stays in the store
            rec.orphan_path = writer.path
            rec.checksum, rec.os_hash_algo, rec.os_hash_value = md5, self.hashing_algorithm, sha
            rec.status = "queued"
            self.touch(rec)
            raise GlanceError(415, detail=refused)
        rec.data_path = None if writer.discard else writer.path
        rec.discarded = writer.discard
        rec.size, rec.checksum = size, md5
        rec.os_hash_algo, rec.os_hash_value = self.hashing_algorithm, sha
        rec.virtual_size = verdict.virtual_size if verdict.ok else None
        rec.status = "active"
        self.touch(rec)

    def _seeded(self, owner: str, fields: dict[str, Any]) -> ImageRecord:
        body = {"name": "seeded", "os_type": "linux", "disk_format": "raw", "container_format": "bare",
                **fields}  # fmt: skip
        visibility = body.pop("visibility", "private")
        protected = body.pop("protected", False)
        rec = self.create(body, Caller(owner), existing=True)
        rec.visibility = visibility  # seeding may create public images, which users cannot
        rec.protected = protected
        return rec

    def add_bytes(self, owner: str, data: bytes, fields: dict[str, Any]) -> ImageRecord:
        """An active image holding ``data`` (seeding and tests)."""
        rec = self._seeded(owner, fields)
        writer = UploadWriter(self.data_dir / rec.id)
        writer.write(data)
        rec.status = "queued"
        self.finish_upload(rec, writer, ok=True)
        return rec

    def add_synthetic(self, owner: str, size: int, seed: str, fields: dict[str, Any]) -> ImageRecord:
        """An active image whose bytes are generated on read (benchmarks, large demo images)."""
        rec = self._seeded(owner, {"name": f"synthetic-{seed}", **fields})
        md5, sha = synthetic.digests(seed, size)
        rec.synthetic_seed = seed
        rec.size, rec.checksum, rec.os_hash_algo, rec.os_hash_value = size, md5, "sha512", sha
        rec.virtual_size = size if rec.disk_format == "raw" and size else None
        rec.status = "active"
        return rec

    def check_download(self, rec: ImageRecord, caller: Caller) -> None:
        """Glance's image_data.download: a deactivated image's data only for an admin (before any policy).
        Then NHN guide, Download Image: "You can download the image if all the conditions below are met: you
        have ADMIN or MEMBER permission ...; the nhncloud_allow_download attribute of the image is true"."""
        if rec.status == "deactivated" and "admin" not in caller.roles:
            raise GlanceError(403, "The requested image has been deactivated. Image data download is forbidden.")
        if not self.download_rule:
            return
        if not {"member", "admin"} & set(caller.roles):
            raise GlanceError(403, "You are not authorized to download this image: the ADMIN or MEMBER role is "
                                   "needed.")  # fmt: skip
        # An image without the attribute is served (what imgmig's planner assumes too): the guide does not
        # say what NHN does with one, and images users create carry none until they set it.
        value = rec.properties.get(ALLOW_DOWNLOAD)
        if value is not None and str(value).lower() != "true":
            raise GlanceError(403, f"Image {rec.id} cannot be downloaded: its {ALLOW_DOWNLOAD} attribute is not "
                                   "true. Set it to true with the Image Modification API.")  # fmt: skip

    def read_chunks(self, rec: ImageRecord, start: int, end: int, chunk: int) -> Generator[bytes]:
        """Bytes [start, end) of an active image, in pieces of at most ``chunk`` (blocking I/O)."""
        if rec.synthetic_seed is not None:
            for piece in synthetic.synthetic_chunks(rec.synthetic_seed, rec.size or 0, start, end):
                for i in range(0, len(piece), chunk):
                    yield piece[i : i + chunk]
            return
        if rec.data_path is None:
            raise GlanceError(500, "the emulator discarded this image's data (discard_uploads knob)")
        with open(rec.data_path, "rb") as fh:
            fh.seek(start)
            remaining = end - start
            while remaining > 0:
                data = fh.read(min(chunk, remaining))
                if not data:
                    return
                remaining -= len(data)
                yield data


def check_policy(rec: ImageRecord, caller: Caller, action: str) -> None:
    """403 for a caller who can see the image but does not own it (Glance's default RBAC policy)."""
    if rec.owner != caller.tenant_id:
        raise GlanceError(403, f"You are not authorized to complete {action} action.")
