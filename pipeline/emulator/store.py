"""One region's images: records, visibility, the queued -> saving -> active state machine, and data on disk.

Image data never lives in memory: uploads stream into ``<data_dir>/<id>.part`` (hashed on the way, md5
and sha512) and are renamed on success; synthetic images generate their bytes on read. Everything here is
synchronous; the aiohttp handlers in ``app.py`` call it and run file I/O in worker threads.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from . import synthetic
from .fields import (
    CORE_WRITABLE,
    MAX_MEMBERS,
    MAX_PROPERTIES,
    GlanceError,
    check_writable,
    validate_core,
    validate_property,
    validate_tag,
)

__all__ = ["Caller", "ImageRecord", "MemberRecord", "RegionStore", "UploadWriter", "iso_now"]

MEMBER_STATUSES = ("pending", "accepted", "rejected")


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
    """Receives one upload: writes to a .part file, hashes md5 + sha512; commit renames, abort removes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.part = path.with_suffix(".part")
        self._file: BinaryIO = open(self.part, "wb")  # noqa: SIM115 - closed in commit/abort
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._sha = hashlib.sha512()
        self.size = 0

    def write(self, data: bytes) -> None:
        """Write and hash one piece (called from a worker thread: hashlib releases the GIL)."""
        self._md5.update(data)
        self._sha.update(data)
        self._file.write(data)
        self.size += len(data)

    def commit(self) -> tuple[int, str, str]:
        self._file.close()
        os.replace(self.part, self.path)
        return self.size, self._md5.hexdigest(), self._sha.hexdigest()

    def abort(self) -> None:
        self._file.close()
        self.part.unlink(missing_ok=True)


class RegionStore:
    """All images of one region, with Glance's visibility and ownership rules."""

    def __init__(self, region: str, data_dir: Path) -> None:
        self.region = region
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.images: dict[str, ImageRecord] = {}
        self.deleted_ids: set[str] = set()
        self._seq = itertools.count()

    # === lookup and permissions

    def can_see(self, rec: ImageRecord, caller: Caller) -> bool:
        if rec.owner == caller.tenant_id or rec.visibility in ("public", "community"):
            return True
        return rec.visibility == "shared" and caller.tenant_id in rec.members

    def visible(self, image_id: str, caller: Caller) -> ImageRecord:
        rec = self.images.get(image_id)
        if rec is None or not self.can_see(rec, caller):
            raise GlanceError(404, explanation=f"No image found with ID {image_id}")
        return rec

    def owned(self, image_id: str, caller: Caller, action: str) -> ImageRecord:
        rec = self.visible(image_id, caller)
        if rec.owner != caller.tenant_id:
            raise GlanceError(403, detail=f"You are not authorized to complete {action} action.")
        return rec

    def all_visible(self, caller: Caller) -> Iterator[ImageRecord]:
        return (rec for rec in self.images.values() if self.can_see(rec, caller))

    # === create / delete

    def create(self, body: dict[str, Any], caller: Caller) -> ImageRecord:
        """POST /v2/images: validate every field first, then create a queued image."""
        for key in body:
            check_writable(key, on_create=True)
        owner = body.get("owner", caller.tenant_id)
        if owner != caller.tenant_id:
            raise GlanceError(403, detail=f"You are not permitted to create images owned by '{owner}'")
        image_id = body.get("id") or str(uuid.uuid4())
        try:
            image_id = str(uuid.UUID(str(image_id)))
        except ValueError:
            raise GlanceError(400, detail=f"Provided object does not match schema 'image': "
                                          f"'{image_id}' is not a 'uuid'") from None  # fmt: skip
        if image_id in self.images or image_id in self.deleted_ids:
            raise GlanceError(409, detail=f"Image ID {image_id} already exists!")
        # NHN guide, Create Image: name and os_type are required ("O") request fields
        for required in ("name", "os_type"):
            if body.get(required) in (None, ""):
                raise GlanceError(400, detail=f"'{required}' is a required property")
        now = iso_now()
        rec = ImageRecord(id=image_id, owner=owner, seq=next(self._seq), created_at=now, updated_at=now)
        props: dict[str, str] = {}
        for key, value in body.items():
            if key in ("id", "owner", "os_hash_algo", "os_hash_value"):
                continue
            if key in CORE_WRITABLE:
                setattr(rec, key, validate_core(key, value))
            else:
                props[key] = validate_property(key, value)
        if len(props) > MAX_PROPERTIES:
            raise _too_many_properties(len(props))
        rec.properties = props
        self.images[image_id] = rec
        return rec

    def delete(self, image_id: str, caller: Caller) -> None:
        rec = self.images.get(image_id)
        if rec is None or not self.can_see(rec, caller):
            raise GlanceError(404, explanation=f"Failed to find image {image_id} to delete")
        if rec.owner != caller.tenant_id:
            raise GlanceError(403, detail="You are not authorized to complete delete_image action.")
        if rec.protected:
            raise GlanceError(403, detail=f"Image {image_id} is protected and cannot be deleted.")
        # NHN guide, Delete Image: "Images with public visibility cannot be deleted."
        if rec.visibility == "public":
            raise GlanceError(403, detail=f"Image {image_id} is public and cannot be deleted.")
        del self.images[image_id]
        self.deleted_ids.add(image_id)
        if rec.data_path is not None:
            rec.data_path.unlink(missing_ok=True)

    def touch(self, rec: ImageRecord) -> None:
        rec.updated_at = iso_now()

    # === tags

    def add_tag(self, image_id: str, tag: str, caller: Caller) -> None:
        rec = self._tag_target(image_id, caller)
        validate_tag(tag)
        self.check_modifiable(rec)
        if tag not in rec.tags:
            if len(rec.tags) >= 128:
                raise GlanceError(413, detail="The limit has been exceeded on the number of allowed image "
                                              f"tags. Attempted: {len(rec.tags) + 1}, Maximum: 128")  # fmt: skip
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
        rec = self.images.get(image_id)
        if rec is None or not self.can_see(rec, caller):
            raise GlanceError(404, explanation=f"Image {image_id} not found.")
        if rec.owner != caller.tenant_id:
            raise GlanceError(403, detail="You are not authorized to complete modify_image action.")
        return rec

    @staticmethod
    def check_modifiable(rec: ImageRecord) -> None:
        """NHN guide, image field 'protected': "Cannot be modified or deleted when protected=true"."""
        if rec.protected:
            raise GlanceError(403, detail=f"Image {rec.id} is protected and cannot be modified.")

    # === members

    def _shared_for_members(self, rec: ImageRecord, verb: str) -> None:
        if rec.visibility != "shared":
            if verb == "create":
                raise GlanceError(403, detail=f"Not allowed to create members for image {rec.id}.")
            raise GlanceError(403, detail=f"Not allowed to list members for image {rec.id}: "
                                          "Only shared images have members.")  # fmt: skip

    def add_member(self, image_id: str, member_id: Any, caller: Caller) -> MemberRecord:
        rec = self.owned(image_id, caller, "add_member")
        self._shared_for_members(rec, "create")
        if not isinstance(member_id, str) or not member_id:
            raise GlanceError(400, detail="Member to be added not specified")
        if member_id in rec.members:
            raise GlanceError(409, detail=f"Member {member_id} is duplicated for image {image_id}")
        if len(rec.members) >= MAX_MEMBERS:
            raise GlanceError(413, detail="The limit has been exceeded on the number of allowed image "
                                          f"members for this image. Attempted: {len(rec.members) + 1}, "
                                          f"Maximum: {MAX_MEMBERS}")  # fmt: skip
        now = iso_now()
        member = MemberRecord(member_id, "pending", now, now)
        rec.members[member_id] = member
        return member

    def list_members(self, image_id: str, caller: Caller) -> list[MemberRecord]:
        rec = self.visible(image_id, caller)
        self._shared_for_members(rec, "list")
        if rec.owner == caller.tenant_id:
            return list(rec.members.values())
        return [m for m in rec.members.values() if m.member_id == caller.tenant_id]

    def get_member(self, image_id: str, member_id: str, caller: Caller) -> MemberRecord:
        rec = self.visible(image_id, caller)
        self._shared_for_members(rec, "list")
        member = rec.members.get(member_id)
        if member is None or (rec.owner != caller.tenant_id and member_id != caller.tenant_id):
            raise GlanceError(404, detail=f"{member_id} not found in the member list of the image {image_id}.")
        return member

    def update_member(self, image_id: str, member_id: str, status: Any, caller: Caller) -> MemberRecord:
        member = self.get_member(image_id, member_id, caller)
        if caller.tenant_id != member_id:
            raise GlanceError(403, detail="You are not authorized to complete modify_member action.")
        if status not in MEMBER_STATUSES:
            raise GlanceError(400, detail='Incorrect request: Status must be "pending", "accepted" or "rejected".')
        member.status = status
        member.updated_at = iso_now()
        return member

    def delete_member(self, image_id: str, member_id: str, caller: Caller) -> None:
        rec = self.visible(image_id, caller)
        if rec.owner != caller.tenant_id:
            raise GlanceError(403, detail="You are not authorized to complete delete_member action.")
        self._shared_for_members(rec, "list")
        if member_id not in rec.members:
            raise GlanceError(404, detail=f"{member_id} not found in the member list of the image {image_id}.")
        del rec.members[member_id]

    # === data

    def begin_upload(self, image_id: str, caller: Caller) -> tuple[ImageRecord, UploadWriter]:
        rec = self.owned(image_id, caller, "upload_image")
        if rec.status != "queued":
            raise GlanceError(409, detail=f"Image status transition from {rec.status} to saving is not allowed")
        if not rec.disk_format or not rec.container_format:
            raise GlanceError(400, detail="Properties disk_format, container_format must be set prior to "
                                          "saving data.")  # fmt: skip
        rec.status = "saving"
        self.touch(rec)
        return rec, UploadWriter(self.data_dir / rec.id)

    def finish_upload(self, rec: ImageRecord, writer: UploadWriter, *, ok: bool) -> None:
        """Commit a complete upload (active) or abort a broken one (back to queued, no data)."""
        if not ok or rec.id not in self.images:
            writer.abort()
            if rec.id in self.images:
                rec.status = "queued"
                self.touch(rec)
            return
        size, md5, sha = writer.commit()
        rec.data_path = writer.path
        rec.size, rec.checksum = size, md5
        rec.os_hash_algo, rec.os_hash_value = "sha512", sha
        rec.virtual_size = size if rec.disk_format == "raw" and size else None
        rec.status = "active"
        self.touch(rec)

    def _seeded(self, owner: str, fields: dict[str, Any]) -> ImageRecord:
        body = {"name": "seeded", "os_type": "linux", "disk_format": "raw", "container_format": "bare",
                **fields}  # fmt: skip
        visibility = body.pop("visibility", "private")
        protected = body.pop("protected", False)
        rec = self.create(body, Caller(owner))
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

    def read_chunks(self, rec: ImageRecord, start: int, end: int, chunk: int) -> Iterator[bytes]:
        """Bytes [start, end) of an active image, in pieces of at most ``chunk`` (blocking I/O)."""
        if rec.synthetic_seed is not None:
            assert rec.size is not None
            for piece in synthetic.synthetic_chunks(rec.synthetic_seed, rec.size, start, end):
                for i in range(0, len(piece), chunk):
                    yield piece[i : i + chunk]
            return
        assert rec.data_path is not None
        with open(rec.data_path, "rb") as fh:
            fh.seek(start)
            remaining = end - start
            while remaining > 0:
                data = fh.read(min(chunk, remaining))
                if not data:
                    return
                remaining -= len(data)
                yield data


def _too_many_properties(count: int) -> GlanceError:
    return GlanceError(
        413,
        detail="The limit has been exceeded on the number of allowed image properties. "
        f"Attempted: {count}, Maximum: {MAX_PROPERTIES}",
    )
