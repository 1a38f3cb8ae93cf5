"""The journal's records folded into state: per image, per target, per run. Pure: no file, no clock.

``JournalState.apply`` folds one record; ``to_json``/``from_json`` are the snapshot's form. Journals of other
imgmig versions of the same ``FORMAT`` stay readable both ways: unknown record kinds and unknown fields (in
records and in snapshots) are ignored, missing fields take their defaults, and unknown values of known fields
(a state or outcome this version does not know) are kept as they are and shown as such.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, TypeVar

from pipeline.errors import ExitCode
from pipeline.outcomes import is_final
from pipeline.state.evidence import compact_evidence, expanded_evidence
from pipeline.state.packed import pack, unpack

__all__ = [
    "ENCODER",
    "FORMAT",
    "ImageEntry",
    "Images",
    "JournalState",
    "RunEntry",
    "TargetEntry",
    "compact_evidence",
    "expanded_evidence",
    "fold_target",
    "image_json",
    "last_success",
    "loaded_image",
]

#: The journal's on-disk format (snapshots carry it).
FORMAT = 1
#: One encoder for every record and snapshot: json.dumps with options builds a new encoder on each call.
ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str)

#: Target fields a "target" record may set; anything else in the record is ignored by the state.
_TARGET_FIELDS = frozenset({"action", "state", "target_id", "bytes", "attempts", "error", "evidence",
                            "source_checksum", "metadata", "problems", "pending_members", "reason",
                            "phases"})  # fmt: skip


@dataclass(slots=True)
class TargetEntry:
    region: str
    action: str | None = None
    state: str = "planned"
    target_id: str | None = None
    bytes: int = 0
    attempts: int = 0
    error: str | None = None
    evidence: dict[str, Any] | None = None
    source_checksum: str | None = None
    metadata: str | None = None
    problems: list[str] = field(default_factory=list)
    pending_members: list[str] = field(default_factory=list)
    reason: str | None = None
    updated_at: float = 0.0
    #: Every target image id this job created for this image x target, and which were deleted.
    created: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    #: The id a create was sent with and not yet confirmed (its answer may have been lost).
    creating: str | None = None
    #: When the upload, verification and metadata phases began (Unix time); None in older journals.
    phases: dict[str, float] | None = None


@dataclass(slots=True)
class ImageEntry:
    image_id: str
    name: str | None = None
    size: int | None = None
    checksum: str | None = None
    status: str | None = None
    skipped: str | None = None
    targets: dict[str, TargetEntry] = field(default_factory=dict)
    #: What the format inspector made of the image's head (``transfer.inspection``: format, safe, mismatch,
    #: reason) and the source checksum it was judged for: a later run or plan reuses it while that is unchanged.
    inspected: dict[str, Any] | None = None


@dataclass(slots=True)
class RunEntry:
    run_id: str
    pid: int
    started_at: float
    finished_at: float | None = None
    outcome: str | None = None
    exit_code: int | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    #: Conditions of whole targets during the run: {"quota_full": {label: why}, "unavailable": {label: why}}.
    conditions: dict[str, Any] = field(default_factory=dict)
    #: Why the run stopped, when it ended fatal (secrets scrubbed).
    error: str | None = None
    #: Whether the run got as far as its plan (``report`` shows the last such run by default).
    planned: bool = False


class Images:
    """The journal's images by id. An image being worked on is held as its entry ("hot"); any other may be held
    packed (``packed``: its snapshot JSON, deflated; a tenth of the entry's size), so that the journal of a large
    catalogue takes memory for the images in flight, not for every image. ``pack`` puts an entry away, ``hot``
    takes it out to change it (only ``JournalState.apply`` changes entries).

    Reading (``get``, ``[]``, iterating) a packed image decodes it without keeping it; the last one decoded is
    kept, because a reader asks for the same image a few times in a row. An entry read is a snapshot of the
    image: read it again after a record."""

    __slots__ = ("_by_id", "_last")

    def __init__(self) -> None:
        self._by_id: dict[str, ImageEntry | bytes] = {}
        self._last: ImageEntry | None = None

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_id)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._by_id

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Images):
            return NotImplemented
        return len(self) == len(other) and all(other.get(k) == v for k, v in self.items())

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Images({len(self)} images, {self.hot_count()} as entries)"

    def __getitem__(self, image_id: str) -> ImageEntry:
        entry = self.get(image_id)
        if entry is None:
            raise KeyError(image_id)
        return entry

    def get(self, image_id: str) -> ImageEntry | None:
        value = self._by_id.get(image_id)
        if value is None or type(value) is ImageEntry:
            return value
        last = self._last
        if last is not None and last.image_id == image_id:
            return last
        entry = self._last = _unpacked(value)  # type: ignore[arg-type]
        return entry

    def keys(self) -> Iterator[str]:
        return iter(self._by_id)

    def values(self) -> Iterator[ImageEntry]:
        return (self[image_id] for image_id in list(self._by_id))

    def items(self) -> Iterator[tuple[str, ImageEntry]]:
        return ((image_id, self[image_id]) for image_id in list(self._by_id))

    def hot(self, image_id: str) -> ImageEntry | None:
        """The image's entry, to change it (unpacked first if it was packed), or None."""
        value = self._by_id.get(image_id)
        if value is None or type(value) is ImageEntry:
            return value
        entry = self._by_id[image_id] = self[image_id]
        return entry

    def add(self, entry: ImageEntry) -> None:
        self._by_id[entry.image_id] = entry

    def pack(self, image_id: str) -> None:
        """Put the image's entry away (nothing happens to an image held packed already, or unknown)."""
        value = self._by_id.get(image_id)
        if type(value) is ImageEntry:
            self._by_id[image_id] = pack(ENCODER.encode(image_json(value)).encode())
            self._last = value  # the same image read right after: no decoding

    def pack_all(self) -> None:
        for image_id in [k for k, v in self._by_id.items() if type(v) is ImageEntry]:
            self.pack(image_id)

    def add_packed(self, image_id: str, encoded: bytes) -> None:
        """An image in its snapshot JSON (``image_json``, encoded), held packed."""
        self._by_id[image_id] = pack(encoded)

    def encoded(self, image_id: str) -> bytes:
        """The image's snapshot JSON (``image_json``, encoded): what a packed image holds, unpacked."""
        value = self._by_id[image_id]
        if type(value) is bytes:
            return unpack(value)
        return ENCODER.encode(image_json(value)).encode()  # type: ignore[arg-type]

    def hot_count(self) -> int:
        """How many images are held as entries (the rest are packed)."""
        return sum(1 for v in self._by_id.values() if type(v) is ImageEntry)


@dataclass
class JournalState:
    """Everything the journal knows, rebuilt by applying records in order. Pure."""

    job: str
    seq: int = 0
    images: Images = field(default_factory=Images)
    runs: list[RunEntry] = field(default_factory=list)
    #: Number of image and target entries, kept up to date by ``apply`` (drives the snapshot cadence).
    entries: int = 0
    #: Source images whose download permission a run switched on and has not put back yet: image id ->
    #: the original ``nhncloud_allow_download`` value (None: the attribute was absent).
    open_sources: dict[str, str | None] = field(default_factory=dict)
    #: What each target's ``/v2/schemas/image`` marked read-only and the formats it lists, and when it was read:
    #: target label -> {"at": unix time, "read_only": [field, ...], "disk_formats": [...] | None,
    #: "container_formats": [...] | None} (a rerun does not read the schema again while it is fresh).
    schemas: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: How many source images the last run selected (a prune refuses when the selection shrinks too much).
    selected: int | None = None
    #: How many image x target entries are in each state (0 or more), kept up to date like ``entries``; a
    #: snapshot records them (``imgmig status`` counts from there, and from what the log changed since).
    counts: Counter[str] = field(default_factory=Counter, compare=False)
    #: The ``counts`` that the snapshot this state was read from recorded (None: none, an earlier imgmig's).
    recorded: dict[str, int] | None = field(default=None, compare=False, repr=False)

    def target(self, image_id: str, region: str) -> TargetEntry | None:
        image = self.images.get(image_id)
        return image.targets.get(region) if image else None

    def inspected(self, image_id: str, checksum: str | None) -> dict[str, Any] | None:
        """The format verdict journalled for the image while its source's checksum is ``checksum``; None when
        there is none, or the source changed since."""
        image = self.images.get(image_id)
        seen = image.inspected if image is not None else None
        return seen if isinstance(seen, dict) and checksum and seen.get("checksum") == checksum else None

    def apply(self, rec: dict[str, Any]) -> None:
        """Apply one record (unknown kinds are ignored, so newer journals stay readable)."""
        seq = rec.get("seq", self.seq)
        if seq > self.seq:
            self.seq = seq
        kind, at = rec.get("kind"), rec.get("at", 0.0)
        if kind == "run_started":
            self.runs.append(RunEntry(rec["run"], int(rec.get("pid", 0)), at))
        elif kind == "run_finished":
            run = self._run(rec.get("run"))
            if run is not None:
                run.finished_at, run.outcome = at, rec.get("outcome")
                run.exit_code, run.summary = rec.get("exit_code"), dict(rec.get("summary") or {})
                run.conditions = dict(rec.get("conditions") or {})
                run.error = rec.get("error")
        elif kind == "planned":
            run = self._run(rec.get("run"))
            if run is not None:
                run.planned = True
        elif kind == "image":
            entry = self._image(rec["image_id"])
            for key in ("name", "size", "checksum", "status", "skipped", "inspected"):
                if key in rec:
                    setattr(entry, key, rec[key])
            # the plan of every target of this image, in the same record (one write per image)
            for region, planned in (rec.get("plan") or {}).items():
                self._target(entry, region, planned, at)
        elif kind == "target":
            self._target(self._image(rec["image_id"]), rec["region"], rec, at)
        elif kind == "source":  # the download permission of a source: opened (intent first), restored
            if rec.get("download") == "opening":
                self.open_sources[rec["image_id"]] = rec.get("original")
            elif rec.get("download") == "restored":
                self.open_sources.pop(rec["image_id"], None)
        elif kind == "selection":
            self.selected = int(rec.get("count", 0))
        elif kind == "schema":
            self.schemas[rec["region"]] = {"at": at, "read_only": list(rec.get("read_only") or []),
                                           "disk_formats": rec.get("disk_formats"),
                                           "container_formats": rec.get("container_formats")}  # fmt: skip

    def _run(self, run_id: Any) -> RunEntry | None:
        """The run a record names (the newest with that id), or None."""
        return next((run for run in reversed(self.runs) if run.run_id == run_id), None)

    def _target(self, image: ImageEntry, region: str, rec: dict[str, Any], at: float) -> None:
        target = image.targets.get(region)
        if target is None:
            region = sys.intern(region)  # one string per target label, however many entries
            target = image.targets[region] = TargetEntry(region)
            self.entries += 1
            self.counts[target.state] += 1
        before = target.state
        fold_target(target, rec, at)
        if target.state != before:
            self.counts[before] -= 1
            self.counts[target.state] += 1

    def _image(self, image_id: str) -> ImageEntry:
        entry = self.images.hot(image_id)
        if entry is None:
            entry = ImageEntry(image_id)
            self.images.add(entry)
            self.entries += 1
        return entry

    def to_json(self) -> dict[str, Any]:
        return {**self.head_json(), "images": {k: image_json(v) for k, v in self.images.items()}}

    def load_image(self, image_id: str, raw: dict[str, Any]) -> None:
        """Add one image from its snapshot form (``image_json``)."""
        entry = loaded_image(image_id, raw)
        self.images.add(entry)
        self.entries += 1 + len(entry.targets)
        self.counts.update(target.state for target in entry.targets.values())

    def load_packed(self, image_id: str, encoded: bytes, targets: Mapping[str, Any]) -> None:
        """Add one image from its snapshot form as a snapshot holds it (``image_json``, encoded), held packed
        (``Images``); ``targets``: the snapshot form's targets (parsed)."""
        self.images.add_packed(image_id, encoded)
        self.entries += 1 + len(targets)
        self.counts.update(target.get("state", _PLANNED) for target in targets.values())

    def head_json(self) -> dict[str, Any]:
        """The snapshot's form of everything but the images (small, whatever the catalogue)."""
        return {"format": FORMAT, "job": self.job, "seq": self.seq, "runs": [_as_dict(r) for r in self.runs],
                "open_sources": dict(self.open_sources), "schemas": dict(self.schemas),
                "selected": self.selected, "counts": +self.counts}  # fmt: skip

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> JournalState:
        """The state a snapshot holds; fields this version does not know are ignored (see the module doc)."""
        state = cls(job=str(doc["job"]), seq=int(doc["seq"]))
        for image_id, raw in doc.get("images", {}).items():
            state.load_image(image_id, raw)
        state.runs = [_known(RunEntry, r) for r in doc.get("runs", [])]
        state.open_sources = dict(doc.get("open_sources") or {})
        state.schemas = dict(doc.get("schemas") or {})
        state.selected = doc.get("selected")
        state.recorded = doc.get("counts")
        return state


_Entry = TypeVar("_Entry", TargetEntry, ImageEntry, RunEntry)
#: Each entry's field names, in order (the entries have slots: no ``__dict__`` per entry).
_NAMES: dict[type, tuple[str, ...]] = {cls: tuple(f.name for f in fields(cls))
                                       for cls in (TargetEntry, ImageEntry, RunEntry)}  # fmt: skip


def _as_dict(entry: Any) -> dict[str, Any]:
    """An entry's fields as a new dict (shallow, like ``vars`` of a plain dataclass; ``asdict`` deep-copies)."""
    return {name: getattr(entry, name) for name in _NAMES[type(entry)]}


_FIELDS: dict[type, frozenset[str]] = {cls: frozenset(names) for cls, names in _NAMES.items()}


def _known(cls: type[_Entry], doc: dict[str, Any]) -> _Entry:
    """An entry from its snapshot form, ignoring the fields a newer imgmig added."""
    names = _FIELDS[cls]
    return cls(**{k: v for k, v in doc.items() if k in names})


def loaded_image(image_id: str, raw: dict[str, Any], *, compact: bool = True) -> ImageEntry:
    """An image's entry from its snapshot form (``image_json``); ``compact``: its repeated values interned (for
    an entry that is kept)."""
    raw = {**raw, "image_id": image_id}
    targets = {r: _loaded_target(r, t, compact=compact) for r, t in raw.get("targets", {}).items()}
    return _known(ImageEntry, {**raw, "targets": targets})


def _unpacked(packed: bytes) -> ImageEntry:
    """A packed image's entry (not compacted: it is let go again soon)."""
    raw = json.loads(unpack(packed))
    targets = {r: _loaded_target(r, t, compact=False) for r, t in raw.get("targets", {}).items()}
    return _known(ImageEntry, {**raw, "targets": targets})


#: Each entry field's default: a snapshot leaves out the fields that hold it (``_known`` puts it back).
def _defaults(cls: type) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(cls):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif callable(f.default_factory):
            out[f.name] = f.default_factory()
    return out


_DEFAULTS: dict[type, dict[str, Any]] = {cls: _defaults(cls) for cls in (TargetEntry, ImageEntry)}
_PLANNED = _DEFAULTS[TargetEntry]["state"]
_NO_VALUE = object()


def image_json(entry: ImageEntry) -> dict[str, Any]:
    """One image's snapshot form: shallow views of its entries (``dataclasses.asdict`` deep-copies and costs 5x
    more on large journals), without the fields that hold their default and with the evidence compacted: a
    snapshot entry says only what it knows."""
    return {**_stored(entry, ImageEntry), "targets": {r: _stored_target(t) for r, t in entry.targets.items()}}


def _stored(entry: Any, cls: type) -> dict[str, Any]:
    """An entry's snapshot form: its fields, less those that hold their default."""
    defaults = _DEFAULTS[cls]
    return {k: v for k, v in _as_dict(entry).items() if k != "targets" and defaults.get(k, _NO_VALUE) != v}


def _stored_target(target: TargetEntry) -> dict[str, Any]:
    doc = _stored(target, TargetEntry)
    del doc["region"]  # the key it is stored under
    if target.evidence:
        doc["evidence"] = compact_evidence(target.evidence)
    return doc


def _loaded_target(region: str, doc: dict[str, Any], *, compact: bool = True) -> TargetEntry:
    target = _known(TargetEntry, {**doc, "region": region})
    if target.evidence:
        target.evidence = expanded_evidence(target.evidence)
    if compact:
        _compact(target)
    return target


#: Target fields whose values repeat across a journal (a few actions, states, reasons...): interned.
_REPEATED = ("region", "action", "state", "metadata", "reason")


def _compact(target: TargetEntry, changed: Collection[str] | None = None) -> None:
    """Share what a journal of 100,000 entries would otherwise hold 100,000 times: the repeated values and the keys
    of the small dicts (a snapshot is parsed a line at a time, so nothing is shared between lines by the parser),
    and the copies of one string (the source checksum is the md5 computed, the first created id the target id).
    ``changed``: the fields a record just set (None: a whole entry, loaded): only those are looked at again."""
    intern = sys.intern
    for name in _REPEATED:
        value = getattr(target, name)
        if type(value) is str and (changed is None or name in changed):
            setattr(target, name, intern(value))
    evidence = target.evidence
    if evidence and (changed is None or "evidence" in changed or "source_checksum" in changed):
        computed, reported = evidence.get("computed"), evidence.get("reported")
        if isinstance(computed, dict):
            computed = {intern(k): v for k, v in computed.items()}
            if target.source_checksum is not None and computed.get("md5") == target.source_checksum:
                target.source_checksum = computed["md5"]
        if isinstance(reported, dict):
            reported = {intern(k): intern(v) if k in ("status", "os_hash_algo") and type(v) is str else v
                        for k, v in reported.items()}  # fmt: skip
        target.evidence = {intern(k): v for k, v in evidence.items()}
        if computed is not None:
            target.evidence["computed"] = computed
        if reported is not None:
            target.evidence["reported"] = reported
    if target.phases and (changed is None or "phases" in changed):
        target.phases = {intern(k): v for k, v in target.phases.items()}
    if changed is None and target.created and target.created[0] == target.target_id:  # a record shares it already
        target.created[0] = target.target_id


def fold_target(target: TargetEntry, rec: Mapping[str, Any], at: float) -> None:
    """Apply one "target" record, or one target's plan in an "image" record, to ``target`` (the journal state and
    the HTML report's timeline both fold records with this)."""
    if is_final(rec.get("state")):
        # a final record states its outcome in full; what it leaves out is empty
        target.error, target.problems, target.pending_members = None, [], []
    for key, value in rec.items():
        if key in _TARGET_FIELDS:
            setattr(target, key, expanded_evidence(value) if key == "evidence" and value else value)
    target.updated_at = at
    if rec.get("creating"):
        target.creating = rec["creating"]
    if rec.get("created"):
        target.created.append(rec["created"])
        target.target_id, target.state = rec["created"], "uploading"
        target.creating = None
    if rec.get("deleted"):
        target.deleted.append(rec["deleted"])
    _compact(target, rec.keys())


def last_success(runs: Iterable[RunEntry]) -> float | None:
    """When the newest successful run (finished, exit code 0) finished, as Unix time; None if none has."""
    times = [r.finished_at for r in runs if r.exit_code == ExitCode.OK and r.finished_at is not None]
    return max(times) if times else None
