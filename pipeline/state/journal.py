"""The job journal: append-only JSON lines plus periodic atomic snapshots, and the pure state they build.

Layout of ``journal_dir`` (0700; every file 0600):

- ``journal.jsonl``: one record per line, ``{"seq": n, "at": t, "kind": ..., ..., "crc": "<crc32>"}``,
  appended with one ``write`` each; the CRC-32 of the line's own JSON makes any damaged byte detectable.
  A ``kill -9`` can tear at most the line being written; that torn tail (no newline) is ignored and cut
  on the next open. A damaged line *before* the last one is corruption: opening fails
  with ``JournalCorruptError`` instead of silently dropping state.
- ``snapshot.json``: the whole state at ``seq`` S, written to a temporary file, fsynced, renamed over
  the old one, then the directory fsynced. Records with ``seq <= S`` are then redundant and the log is
  cut. Snapshots are taken when the log grows past twice the state's size, so the cost per record stays
  flat however big the job (rewriting one JSON file per record would be O(n) each, O(n^2) per job).
- ``lock``: see ``JobLock``.

The log is fsynced in groups (``flush``, on a timer in the runner), not per record: a process crash
loses nothing that was written (it is in the OS), a power cut loses at most the last group, and the
provenance properties on target images let the next run find what those records described.

A record that cannot be written (disk full, I/O error) is cut back off the log: the file is truncated to
the end of the last complete record, and the journal refuses every later write of this run, so a partial
line can never end up in the middle of the log. The run stops with the journal error; the next open
loads cleanly.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from pipeline.errors import JournalCorruptError, JournalError, LockHeldError
from pipeline.state.failpoints import die, hit

__all__ = ["ImageEntry", "JobLock", "Journal", "JournalState", "RunEntry", "TargetEntry", "secure_dir"]

#: One encoder for every record: json.dumps with options builds a new encoder on each call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str)
LOG = "journal.jsonl"
SNAPSHOT = "snapshot.json"
LOCK = "lock"
FORMAT = 1
MIN_SNAPSHOT_RECORDS = 5000

#: Target fields a "target" record may set; anything else in the record is ignored by the state.
_FINAL_STATES = frozenset({"done", "failed", "skipped", "cancelled"})
_TARGET_FIELDS = frozenset({"action", "state", "target_id", "bytes", "attempts", "error", "evidence",
                            "source_checksum", "metadata", "problems", "pending_members", "reason"})  # fmt: skip


def secure_dir(path: Path) -> Path:
    """Create ``path`` (and parents) with mode 0700; tighten it if it already exists."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o700)
    return path


@dataclass
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


@dataclass
class ImageEntry:
    image_id: str
    name: str | None = None
    size: int | None = None
    checksum: str | None = None
    status: str | None = None
    skipped: str | None = None
    targets: dict[str, TargetEntry] = field(default_factory=dict)


@dataclass
class RunEntry:
    run_id: str
    pid: int
    started_at: float
    finished_at: float | None = None
    outcome: str | None = None
    exit_code: int | None = None
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class JournalState:
    """Everything the journal knows, rebuilt by applying records in order. Pure."""

    job: str
    seq: int = 0
    images: dict[str, ImageEntry] = field(default_factory=dict)
    runs: list[RunEntry] = field(default_factory=list)
    #: Number of image and target entries, kept up to date by ``apply`` (drives the snapshot cadence).
    entries: int = 0
    #: Source images whose download permission a run switched on and has not put back yet: image id ->
    #: the original ``nhncloud_allow_download`` value (None: the attribute was absent).
    open_sources: dict[str, str | None] = field(default_factory=dict)

    def target(self, image_id: str, region: str) -> TargetEntry | None:
        image = self.images.get(image_id)
        return image.targets.get(region) if image else None

    def apply(self, rec: dict[str, Any]) -> None:
        """Apply one record (unknown kinds are ignored, so newer journals stay readable)."""
        seq = rec.get("seq", self.seq)
        if seq > self.seq:
            self.seq = seq
        kind, at = rec.get("kind"), rec.get("at", 0.0)
        if kind == "run_started":
            self.runs.append(RunEntry(rec["run"], int(rec.get("pid", 0)), at))
        elif kind == "run_finished":
            for run in reversed(self.runs):
                if run.run_id == rec["run"]:
                    run.finished_at, run.outcome = at, rec.get("outcome")
                    run.exit_code, run.summary = rec.get("exit_code"), dict(rec.get("summary") or {})
                    break
        elif kind == "image":
            entry = self._image(rec["image_id"])
            for key in ("name", "size", "checksum", "status", "skipped"):
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

    def _target(self, image: ImageEntry, region: str, rec: dict[str, Any], at: float) -> None:
        target = image.targets.get(region)
        if target is None:
            target = image.targets[region] = TargetEntry(region)
            self.entries += 1
        if rec.get("state") in _FINAL_STATES:
            # a final record states its outcome in full; what it leaves out is empty
            target.error, target.problems, target.pending_members = None, [], []
        for key, value in rec.items():
            if key in _TARGET_FIELDS:
                setattr(target, key, value)
        target.updated_at = at
        if rec.get("creating"):
            target.creating = rec["creating"]
        if rec.get("created"):
            target.created.append(rec["created"])
            target.target_id, target.state = rec["created"], "uploading"
            target.creating = None
        if rec.get("deleted"):
            target.deleted.append(rec["deleted"])

    def _image(self, image_id: str) -> ImageEntry:
        entry = self.images.get(image_id)
        if entry is None:
            entry = self.images[image_id] = ImageEntry(image_id)
            self.entries += 1
        return entry

    def to_json(self) -> dict[str, Any]:
        # plain __dict__ views: dataclasses.asdict deep-copies and costs 5x more on large journals
        images = {k: {**vars(v), "targets": {r: vars(t) for r, t in v.targets.items()}} for k, v in self.images.items()}
        return {"format": FORMAT, "job": self.job, "seq": self.seq, "images": images,
                "runs": [vars(r) for r in self.runs], "open_sources": dict(self.open_sources)}  # fmt: skip

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> JournalState:
        state = cls(job=str(doc["job"]), seq=int(doc["seq"]))
        for image_id, raw in doc.get("images", {}).items():
            targets = {r: TargetEntry(**t) for r, t in raw.pop("targets", {}).items()}
            state.images[image_id] = ImageEntry(**raw, targets=targets)
            state.entries += 1 + len(targets)
        state.runs = [RunEntry(**r) for r in doc.get("runs", [])]
        state.open_sources = dict(doc.get("open_sources") or {})
        return state


class Journal:
    """One job's journal, opened for appending. Not thread-safe; used from the event loop."""

    def __init__(self, directory: Path, state: JournalState, fd: int, log_records: int, length: int = 0) -> None:
        self.directory = directory
        self.state = state
        self._fd = fd
        self._log_records = log_records
        #: Byte length of the log up to its last complete record: where a failed write is cut back to.
        self._length = length
        #: Records written since the last fsync (the group commit skips a sync when there are none).
        self._unsynced = 0
        #: The first write failure: after it, this journal refuses every write of the run.
        self._broken: JournalError | None = None
        #: Seconds spent inside record/sync/snapshot, and records written: the bench reads these.
        self.seconds = 0.0
        self.records = 0

    # === open and load

    @classmethod
    def open(cls, directory: Path, job: str) -> Journal:
        """Load the state (snapshot + log), cut a torn tail, and open the log for appending."""
        try:
            secure_dir(directory)
            if not (directory / SNAPSHOT).exists():
                # a new journal: an empty snapshot records whose journal this is (one small write)
                _atomic_write(directory / SNAPSHOT, _sealed(_ENCODER.encode(JournalState(job).to_json()).encode()))
            state = _load_snapshot(directory / SNAPSHOT, job)
            log = directory / LOG
            records, good_length = _read_log(log, state.seq)
            for rec in records:
                state.apply(rec)
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            if os.fstat(fd).st_size != good_length:
                os.ftruncate(fd, good_length)  # drop the torn tail of a write cut short
        except JournalError:
            raise
        except OSError as exc:
            raise JournalError(f"cannot open the journal in {directory}: {exc.strerror or exc}") from exc
        return cls(directory, state, fd, len(records), good_length)

    @staticmethod
    def read(directory: Path, job: str) -> JournalState:
        """The state, read-only (no lock, no repair): what ``imgmig status`` shows."""
        if not directory.exists():
            return JournalState(job)
        try:
            state = _load_snapshot(directory / SNAPSHOT, job)
            records, _ = _read_log(directory / LOG, state.seq)
        except OSError as exc:
            raise JournalError(f"cannot read the journal in {directory}: {exc.strerror or exc}") from exc
        for rec in records:
            state.apply(rec)
        return state

    # === write

    def record(self, kind: str, **fields: Any) -> None:
        """Apply and append one record (one write call; durable against a process crash).

        If the write fails, the log is cut back to its last complete record and this journal refuses
        every later write (``JournalError``): the run stops, and the next open loads cleanly.
        """
        if self._broken is not None:
            raise self._broken
        start = time.perf_counter()
        rec = {"seq": self.state.seq + 1, "at": round(time.time(), 3), "kind": kind, **fields}
        line = _sealed(_ENCODER.encode(rec).encode()) + b"\n"
        try:
            if hit("journal_torn"):
                os.write(self._fd, line[: len(line) // 2])  # a write cut short by kill -9
                die()
            if hit("journal_enospc"):
                os.write(self._fd, line[: len(line) // 2])  # a write cut short by a full disk
                raise OSError(28, "No space left on device")
            written = os.write(self._fd, line)
            if written != len(line):
                raise OSError(28, "short write (disk full?)")
        except OSError as exc:
            self._break(exc)
            assert self._broken is not None
            raise self._broken from exc
        self._length += len(line)
        self.state.apply(rec)
        self._log_records += 1
        self._unsynced += 1
        self.records += 1
        self.seconds += time.perf_counter() - start
        if self._snapshot_due():
            self.snapshot()

    def _break(self, exc: OSError) -> None:
        """Cut the log back to its last complete record and refuse every later write of this run."""
        with contextlib.suppress(OSError):  # if even that fails, the partial line is a torn tail: ignored
            os.ftruncate(self._fd, self._length)
        self._broken = JournalError(
            f"cannot write the journal in {self.directory}: {exc.strerror or exc}; the job stops here. The "
            "journal holds every record up to the failed one and the next run resumes from it"
        )

    def _snapshot_due(self) -> bool:
        """A snapshot costs O(state); taking one when the log outgrows twice the state keeps the cost per
        record O(1), however large the job."""
        return self._log_records > max(MIN_SNAPSHOT_RECORDS, 2 * self.state.entries)

    def sync(self) -> None:
        """fsync the log: everything recorded so far survives a power cut."""
        start = time.perf_counter()
        try:
            os.fsync(self._fd)
            self._unsynced = 0
        except OSError as exc:
            raise JournalError(f"cannot sync the journal in {self.directory}: {exc.strerror or exc}") from exc
        finally:
            self.seconds += time.perf_counter() - start

    async def flush(self) -> None:
        """``sync`` in a worker thread, so the group commit never stalls the event loop (nothing to do when
        no record arrived since the last one). The fsync's own duration counts as journal time."""
        if self._unsynced == 0 or self._fd < 0 or self._broken is not None:
            return
        pending, self._unsynced = self._unsynced, 0
        fd = self._fd

        def fsync() -> float:
            start = time.perf_counter()
            os.fsync(fd)
            return time.perf_counter() - start

        try:
            self.seconds += await anyio.to_thread.run_sync(fsync)
        except OSError as exc:
            self._unsynced += pending
            raise JournalError(f"cannot sync the journal in {self.directory}: {exc.strerror or exc}") from exc

    def snapshot(self) -> None:
        """Write the state atomically, then cut the log (its records are all in the snapshot)."""
        start = time.perf_counter()
        try:
            # no fsync of the log first: the snapshot itself is fsynced (file and directory) before the
            # log is cut, and it holds every record of the log
            data = _sealed(_ENCODER.encode(self.state.to_json()).encode())
            _atomic_write(self.directory / SNAPSHOT, data)
            os.ftruncate(self._fd, 0)
            self._log_records, self._length, self._unsynced = 0, 0, 0
        except OSError as exc:
            raise JournalError(f"cannot write the journal snapshot in {self.directory}: "
                               f"{exc.strerror or exc}") from exc  # fmt: skip
        finally:
            self.seconds += time.perf_counter() - start

    def close(self) -> None:
        """Make everything durable and close the log. A snapshot is taken only when one is due: forcing
        one at every close would cost O(state) per run, however little the run did."""
        if self._fd < 0:
            return
        try:
            if self._broken is not None:
                return  # the run stops on that error; the log already ends at its last complete record
            if self._snapshot_due():
                self.snapshot()
            else:
                self.sync()
        finally:
            os.close(self._fd)
            self._fd = -1


_SEAL = b',"crc":"'


def _sealed(body: bytes) -> bytes:
    """A JSON object with its own CRC-32 as a last member, so any damaged byte is detected on load
    (a flipped digit can still be valid JSON)."""
    return body[:-1] + _SEAL + b"%08x" % zlib.crc32(body) + b'"}'


def _unsealed(line: bytes) -> bytes:
    """The JSON object a sealed line holds, after checking its CRC-32 (ValueError if damaged)."""
    at = line.rfind(_SEAL)
    if at < 0 or not line.endswith(b'"}') or len(line) - at != len(_SEAL) + 10:
        raise ValueError("no checksum")
    body = line[:at] + b"}"
    try:
        expected = int(line[at + len(_SEAL) : -2], 16)
    except ValueError:
        raise ValueError("bad checksum") from None
    if zlib.crc32(body) != expected:
        raise ValueError("checksum mismatch")
    return body


def _load_snapshot(path: Path, job: str) -> JournalState:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return JournalState(job)
    try:
        doc = json.loads(_unsealed(raw.rstrip(b"\n")))
        state = JournalState.from_json(doc)
    except (ValueError, KeyError, TypeError) as exc:
        raise JournalCorruptError(
            f"the journal snapshot {path} is damaged ({exc}); nothing was changed. Move the journal "
            "directory aside to start over: the next run finds its copies through their provenance"
        ) from exc
    if state.job != job:
        raise JournalError(f"the journal in {path.parent} belongs to job {state.job!r}, not {job!r}; "
                           "give each job its own journal_dir")  # fmt: skip
    return state


def _read_log(path: Path, after_seq: int) -> tuple[list[dict[str, Any]], int]:
    """Records with seq > after_seq, and the byte length of the intact part of the file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0
    end = data.rfind(b"\n") + 1  # anything after the last newline is a torn write: ignored
    records: list[dict[str, Any]] = []
    lines = data[:end].split(b"\n")[:-1]
    for number, line in enumerate(lines, start=1):
        try:
            rec = json.loads(_unsealed(line))
            if not isinstance(rec, dict) or not isinstance(rec.get("seq"), int) or "kind" not in rec:
                raise ValueError("not a journal record")
        except ValueError as exc:
            raise JournalCorruptError(
                f"the journal {path} is damaged at line {number} of {len(lines)} ({exc}); records after "
                "it would be lost, so nothing was changed. Repair or move the file aside; the next run "
                "finds its copies through their provenance"
            ) from exc
        if rec["seq"] > after_seq:
            records.append(rec)
    return records, end


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class JobLock:
    """One run per job at a time: an flock on ``journal_dir/lock``, released by the OS if we die.

    A second run gets ``LockHeldError`` (exit 3) naming the holder's PID and start time. A lock whose
    holder has died is simply taken over: the kernel drops an flock with its process.
    """

    def __init__(self, directory: Path, job: str) -> None:
        self.path = secure_dir(directory) / LOCK
        self.job = job
        self._fd = -1

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise LockHeldError(self.job, holder.get("pid"), holder.get("started"), str(self.path)) from None
        except OSError:
            os.close(fd)
            raise
        info = {"pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "host": socket.gethostname()}  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1

    @contextlib.contextmanager
    def held(self) -> Iterator[JobLock]:
        self.acquire()
        try:
            yield self
        finally:
            self.release()


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        doc = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}
