"""Plain data shared by every layer: images and members as the Image API returns them, and the one rule that
says whether a copy holds an image's bytes. No I/O.

``Image.from_api`` checks the types of the fields imgmig relies on, so a malformed answer becomes a
``ProtocolError`` for that call instead of a ``KeyError`` deep in the engine.

``Content`` is what is known of a run of bytes (its size and digests). ``Content.held_by`` is the digest rule:
the planner (is a copy good), the engine (the stream at EOF, a target after upload, a copy found mid-run),
``verify`` and ``verify --deep`` all decide with it, and ``source_content`` says what a copy must hold.
"""

from __future__ import annotations

import enum
import marshal
import sys
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import ProtocolError

__all__ = [
    "CORE_FIELDS",
    "READ_ONLY_FIELDS",
    "RESERVED_PREFIXES",
    "Content",
    "Image",
    "Member",
    "RequestCounts",
    "Verdict",
    "Verification",
    "is_reserved_field",
    "source_content",
]

#: Fields every Glance v2 image has; anything else at the top level is a custom property.
CORE_FIELDS = frozenset(
    {
        "id", "name", "status", "visibility", "protected", "owner", "size", "virtual_size",
        "checksum", "os_hash_algo", "os_hash_value", "min_disk", "min_ram", "disk_format",
        "container_format", "created_at", "updated_at", "tags", "self", "file", "schema",
        "locations", "direct_url", "os_hidden", "stores",
    }
)  # fmt: skip

#: Fields a client must never send (read-only or reserved in Glance 33); the fallback when the
#: server does not offer /v2/schemas/image.
READ_ONLY_FIELDS = frozenset(
    {
        "id", "status", "checksum", "size", "virtual_size", "created_at", "updated_at", "self",
        "file", "schema", "owner", "locations", "location", "direct_url", "os_hash_algo",
        "os_hash_value", "stores", "deleted", "deleted_at",
    }
)  # fmt: skip
RESERVED_PREFIXES = ("os_glance_",)


def is_reserved_field(key: str) -> bool:
    """Whether ``key`` is read-only or reserved, so it must never be sent to a server."""
    return key in READ_ONLY_FIELDS or key.startswith(RESERVED_PREFIXES)


#: Fields an image document repeats that say nothing (each is derived from the id or fixed): not kept.
_DERIVED_FIELDS = frozenset({"self", "file", "schema"})
#: Fields whose values repeat across a catalogue (a handful of statuses, formats, owners...): their strings are
#: interned, so 100,000 images share one "active" instead of holding 100,000.
_REPEATED_FIELDS = frozenset({"status", "visibility", "disk_format", "container_format", "os_hash_algo", "owner",
                              "os_type", "os_distro", "architecture", "hypervisor_type", "imgmig_job",
                              "imgmig_source_region"})  # fmt: skip

#: Optional fields imgmig relies on, by the type they must have when present (not null).
_STRING_FIELDS = ("name", "checksum", "os_hash_algo", "os_hash_value", "visibility", "owner", "disk_format",
                  "container_format", "updated_at", "created_at")  # fmt: skip
_COUNT_FIELDS = ("size", "virtual_size", "min_disk", "min_ram")


def _wrong_type(key: str, value: Any) -> ProtocolError:
    return ProtocolError(f"image field {key!r} has the wrong type ({type(value).__name__})")


def _slim(obj: dict[str, Any]) -> dict[str, Any]:
    """An image document as ``Image`` keeps it: without the derived fields and the core fields that are null (a
    missing core field reads as None all the same), repeated values interned. A catalogue's images are held
    until the plan is made: this halves what each costs (a dict of up to 21 keys is half the size of one of 22).
    Custom properties are all kept as they are."""
    intern = sys.intern
    return {key: intern(value) if key in _REPEATED_FIELDS and type(value) is str else value
            for key, value in obj.items()
            if key not in _DERIVED_FIELDS and (value is not None or key not in CORE_FIELDS)}  # fmt: skip


#: The fields a packed document holds by position, in this order (``_pack_doc``): a document's keys cost nothing,
#: only its values do; any other field follows in a dict. The four slot fields are ``...`` when the ``Image`` holds
#: them, and an absent field is ``None`` (a core field that is null is not kept: ``_slim``).
_LAYOUT = ("name", "disk_format", "container_format", "visibility", "size", "virtual_size", "status", "checksum",
           "protected", "min_ram", "min_disk", "owner", "os_hidden", "os_hash_algo", "os_hash_value", "id",
           "created_at", "updated_at", "tags", "os_type", "imgmig_job", "imgmig_source_id", "imgmig_source_region",
           "imgmig_source_checksum")  # fmt: skip
#: Fields whose value is usually lower-case hex, held as its bytes (half the size, and deflate cannot do better
#: with hex); a value that would not come back the same stays a string.
_HEX_FIELDS = frozenset({"checksum", "os_hash_value", "imgmig_source_checksum"})
#: Fields whose value is usually a UUID, held as its 16 bytes (same rule).
_UUID_FIELDS = frozenset({"id", "imgmig_source_id"})
#: The fields that an ``Image`` holds in its slots: a packed document has ``...`` in their place and gets them back
#: when it is decoded. An id and an owner cost about 40 bytes a document, deflated.
_SLOT_FIELDS = ("id", "status", "visibility", "owner")
#: What a packed document is made of (as ``marshal`` writes it), so that deflate finds a document's words here.
_DOC_WORDS = marshal.dumps(
    (("image", "qcow2", "bare", ..., 4096, 4096, ..., b"", False, 0, 0, ..., False, "sha512", b"", ...,
      "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z", [], "linux", "", b"", "", b""),
     {"os_distro": "ubuntu", "hw_disk_bus": "virtio", "hw_vif_model": "virtio", "architecture": "x86_64",
      "imgmig_copied_at": "", "nhncloud_product": "", "description": ""}))  # fmt: skip
#: deflate's level, window (4 KiB: an image document is 0.5-2 KiB) and memory level: about 160 bytes a document of
#: a copy (it was 290 bytes with the document's keys, and its digests and ids as hex), in about 10 us.
_DOC_LEVEL, _DOC_WBITS, _DOC_MEMLEVEL = 6, -12, 8
#: How many packed images' documents stay decoded (the last ones read): a planner or an engine reads one image's
#: fields a few times in a row, and a few images at once.
_WARM_DOCS = 64
_warm: dict[int, tuple[Image, Mapping[str, Any]]] = {}


def _held(key: str, value: Any) -> Any:
    """``value`` as a packed document holds it (``_HEX_FIELDS``, ``_UUID_FIELDS``); bytes never come from JSON."""
    if type(value) is str:
        if key in _HEX_FIELDS and len(value) % 2 == 0:
            try:
                raw = bytes.fromhex(value)
            except ValueError:
                return value
            return raw if raw.hex() == value else value
        if key in _UUID_FIELDS and len(value) == 36:
            try:
                held = uuid.UUID(value)
            except ValueError:
                return value
            return held.bytes if str(held) == value else value
    return value


def _pack_doc(image: Image, doc: Mapping[str, Any]) -> bytes:
    packer = zlib.compressobj(_DOC_LEVEL, zlib.DEFLATED, _DOC_WBITS, _DOC_MEMLEVEL, zlib.Z_DEFAULT_STRATEGY, _DOC_WORDS)
    values = []
    for key in _LAYOUT:
        value = doc.get(key)
        if key in _SLOT_FIELDS and type(value) is str and value == getattr(image, key):
            value = ...
        values.append(_held(key, value))
    # a field of the layout that is there with a null value goes with the others (None in the layout: absent)
    extra = {key: value for key, value in doc.items() if key not in _LAYOUT_KEYS or value is None}
    return packer.compress(marshal.dumps((tuple(values), extra))) + packer.flush()


_LAYOUT_KEYS = frozenset(_LAYOUT)


def _warm_doc(image: Image, packed: bytes) -> Mapping[str, Any]:
    """A packed image's document, decoded (kept among the last ``_WARM_DOCS`` decoded)."""
    hit = _warm.get(id(image))
    if hit is not None and hit[0] is image:
        return hit[1]
    unpacker = zlib.decompressobj(_DOC_WBITS, _DOC_WORDS)
    values, extra = marshal.loads(unpacker.decompress(packed) + unpacker.flush())
    doc: dict[str, Any] = {}
    for key, value in zip(_LAYOUT, values, strict=True):
        if value is None:
            continue
        if value is ...:
            value = getattr(image, key)
        elif type(value) is bytes:
            value = str(uuid.UUID(bytes=value)) if key in _UUID_FIELDS else value.hex()
        doc[key] = value
    doc.update(extra)
    _warm[id(image)] = (image, doc)
    if len(_warm) > _WARM_DOCS:
        _warm.pop(next(iter(_warm)), None)
    return doc


class Image:
    """One image as a region reports it; ``raw`` keeps every field, including custom properties. Immutable.

    An image of a listing is held packed (``from_api(..., packed=True)``): its document marshalled and deflated,
    a fifth of the dict's size. A catalogue's listings are held until the plan is made, and most of their images
    are then never read again; ``raw`` decodes a packed document when it is read (about 6 us; the last ones
    decoded are kept)."""

    __slots__ = ("_doc", "id", "owner", "status", "visibility")

    def __init__(self, raw: Mapping[str, Any], *, packed: bool = False) -> None:
        # the fields that every pass over a catalogue reads (selection, the checks of a target's copies), held
        # outside the document so that such a pass decodes nothing (the values are interned: ``_slim``)
        self.id: str = str(raw["id"])
        status, visibility, owner = raw.get("status"), raw.get("visibility"), raw.get("owner")
        self.status: str = status if isinstance(status, str) else ""
        self.visibility: str | None = visibility if isinstance(visibility, str) else None
        self.owner: str | None = owner if isinstance(owner, str) else None
        self._doc: Mapping[str, Any] | bytes = _pack_doc(self, raw) if packed else raw

    @property
    def raw(self) -> Mapping[str, Any]:
        doc = self._doc
        if type(doc) is bytes:
            return _warm_doc(self, doc)
        return doc  # type: ignore[return-value]

    @property
    def packed(self) -> bool:
        return type(self._doc) is bytes

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Image):
            return NotImplemented
        return self.id == other.id and self.raw == other.raw

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Image(raw={dict(self.raw)!r})"

    @classmethod
    def from_api(cls, obj: Any, *, packed: bool = False) -> Image:
        """Validate the fields imgmig relies on and wrap the record (``packed``: see the class)."""
        if not isinstance(obj, dict):
            raise ProtocolError(f"image record is a {type(obj).__name__}, not an object")
        get = obj.get  # every image of every listing passes here: plain loops, no call per field
        for key in ("id", "status"):
            value = get(key)
            if value is None:
                raise ProtocolError(f"image record has no {key!r}")
            if not isinstance(value, str):
                raise _wrong_type(key, value)
        for key in _STRING_FIELDS:
            value = get(key)
            if value is not None and not isinstance(value, str):
                raise _wrong_type(key, value)
        for key in _COUNT_FIELDS:
            value = get(key)
            if value is None:
                continue
            # bool is an int subclass; a size of True is as wrong as a size of "x"
            if not isinstance(value, int) or isinstance(value, bool):
                raise _wrong_type(key, value)
            if value < 0:
                raise ProtocolError(f"image field {key!r} is negative")
        protected = get("protected")
        if protected is not None and not isinstance(protected, bool):
            raise _wrong_type("protected", protected)
        tags = get("tags")
        if tags is not None:
            if not isinstance(tags, list):
                raise _wrong_type("tags", tags)
            if not all(isinstance(t, str) for t in tags):
                raise ProtocolError("image field 'tags' holds a non-string")
        return cls(_slim(obj), packed=packed)

    def _str(self, key: str) -> str | None:
        value = self.raw.get(key)
        return value if isinstance(value, str) else None

    def _int(self, key: str) -> int | None:
        value = self.raw.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def name(self) -> str | None:
        return self._str("name")

    @property
    def size(self) -> int | None:
        return self._int("size")

    @property
    def checksum(self) -> str | None:
        return self._str("checksum")

    @property
    def os_hash_algo(self) -> str | None:
        return self._str("os_hash_algo")

    @property
    def os_hash_value(self) -> str | None:
        return self._str("os_hash_value")

    @property
    def protected(self) -> bool:
        return self.raw.get("protected") is True

    @property
    def tags(self) -> list[str]:
        return [t for t in self.raw.get("tags") or [] if isinstance(t, str)]

    @property
    def updated_at(self) -> str | None:
        return self._str("updated_at")

    @property
    def publishes_digest(self) -> bool:
        """Whether the image states any digest of its bytes (md5 ``checksum`` or ``os_hash_value``)."""
        return bool(self.checksum or (self.os_hash_algo and self.os_hash_value))

    @property
    def content(self) -> Content:
        """What the image states of its bytes (``Content.stated``)."""
        return Content.stated(self.raw)

    def properties(self) -> dict[str, Any]:
        """Custom (non-core) properties, e.g. os_type, hw_*, imgmig_source_id."""
        return {k: v for k, v in self.raw.items() if k not in CORE_FIELDS}


class Verdict(enum.Enum):
    OK = "ok"
    MISMATCH = "mismatch"
    INCOMPLETE = "incomplete"


@dataclass(frozen=True, slots=True)
class Verification:
    verdict: Verdict
    reason: str = ""
    #: True when nothing could be compared but the size (no digest known): the computed ones are unchecked.
    unverified_source: bool = False

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.OK


@dataclass(frozen=True, slots=True)
class Content:
    """What is known of a run of bytes: its size and its digests by (lower-case) algorithm, md5 included."""

    size: int | None
    digests: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def stated(cls, record: Mapping[str, Any]) -> Content:
        """What an image record states of its bytes: its size, ``checksum`` (md5) and ``os_hash_algo``'s
        ``os_hash_value``."""
        digests: dict[str, str] = {}
        checksum, algo, value = record.get("checksum"), record.get("os_hash_algo"), record.get("os_hash_value")
        if isinstance(checksum, str) and checksum:
            digests["md5"] = checksum
        if isinstance(algo, str) and algo and isinstance(value, str) and value:
            digests[algo.lower()] = value
        size = record.get("size")
        return cls(size if isinstance(size, int) and not isinstance(size, bool) else None, digests)

    def held_by(self, other: Content, *, complete: bool = False) -> Verification:
        """The digest rule: does ``other`` (a copy, a stream, bytes read back) hold the bytes described here?

        - mismatch: the sizes differ, or a digest both know differs;
        - incomplete: they know no digest in common (with ``complete``: ``other`` states a digest not known
          here, as a target may hash with an algorithm the stream was not hashed with);
        - ok: the size is the same and every digest both know is equal, at least one of them. When nothing is
          known here but the size (a source that states no digest, with nothing computed from it), the size
          decides, and the verdict says the bytes were not verified (``unverified_source``). With neither a size
          nor a digest known, nothing can be judged: incomplete.
        """
        if self.size is None and not self.digests:
            return Verification(Verdict.INCOMPLETE, "neither a size nor a digest is known to compare with")
        if self.size is not None and other.size != self.size:
            return Verification(Verdict.MISMATCH, f"size {other.size} != {self.size}")
        common = [algo for algo in other.digests if algo in self.digests]
        for algo in common:
            if other.digests[algo] != self.digests[algo]:
                name = "checksum (md5)" if algo == "md5" else algo
                mismatch = f"{name} {other.digests[algo]} does not match {self.digests[algo]}"
                return Verification(Verdict.MISMATCH, mismatch)
        unknown = [algo for algo in other.digests if algo not in self.digests]
        if complete and unknown:
            return Verification(Verdict.INCOMPLETE, f"{', '.join(unknown)} was not computed from the bytes sent")
        if not common:
            if not self.digests:
                return Verification(Verdict.OK, unverified_source=True)
            return Verification(Verdict.INCOMPLETE, f"no digest in common (known: {', '.join(self.digests)}; "
                                                    f"stated: {', '.join(other.digests) or 'none'})")  # fmt: skip
        return Verification(Verdict.OK)


def source_content(image: Image, computed: Mapping[str, str] | None = None) -> Content:
    """What a copy of ``image`` must hold: the size and digests it states, plus the digests ``computed`` from
    its bytes (this run's verified stream, or those journalled when the copy was made) for the algorithms it
    does not state: a copy that hashes with another algorithm is then judged by it, and a source that states no
    digest by what was computed. With nothing known but the size, the size decides (``Content.held_by``).
    Computed digests come only from a stream verified against the digests the source states."""
    stated = image.content
    if not computed:
        return stated
    return Content(stated.size, {**{algo.lower(): value for algo, value in computed.items()}, **stated.digests})


@dataclass(frozen=True, slots=True)
class Member:
    """One image membership: a tenant the image is shared with, and its status."""

    image_id: str
    member_id: str
    status: str
    created_at: str | None = None
    updated_at: str | None = None

    @classmethod
    def from_api(cls, obj: Any) -> Member:
        """Validate and wrap a member record."""
        if not isinstance(obj, dict):
            raise ProtocolError(f"member record is a {type(obj).__name__}, not an object")
        for key in ("image_id", "member_id", "status"):
            if not isinstance(obj.get(key), str):
                raise ProtocolError(f"member record has no string {key!r}")
        return cls(
            image_id=obj["image_id"],
            member_id=obj["member_id"],
            status=obj["status"],
            created_at=obj.get("created_at") if isinstance(obj.get("created_at"), str) else None,
            updated_at=obj.get("updated_at") if isinstance(obj.get("updated_at"), str) else None,
        )


class RequestCounts:
    """HTTP requests sent to the Image API, by kind and region (the run summary, report and metrics show
    them). Kinds: list, get, create, upload, download, patch, tags, members, delete, schemas, deactivate,
    reactivate."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def add(self, kind: str, region: str) -> None:
        key = (kind, region)
        self.counts[key] = self.counts.get(key, 0) + 1

    def by_region(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (kind, region), n in sorted(self.counts.items()):
            out.setdefault(region, {})[kind] = n
        return out

    @property
    def total(self) -> int:
        return sum(self.counts.values())
