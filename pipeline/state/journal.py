"""The job journal file: append-only JSON lines plus periodic atomic snapshots (``state.records`` folds them).

Layout of ``journal_dir`` (0700; every file 0600):

- ``journal.jsonl``: one record per line, ``{"seq": n, "at": t, "kind": ..., ..., "crc": "<crc32>"}``,
  appended with one ``write`` each; the CRC-32 of the line's own JSON makes any damaged byte detectable.
  A ``kill -9`` can tear at most the line being written; that torn tail (no newline) is ignored and cut
  on the next open. A damaged line *before* the last one is corruption: opening fails
  with ``JournalCorruptError`` instead of silently dropping state.
- ``snapshot.json``: the whole state at ``seq`` S, written to a temporary file, fsynced, renamed over
  the old one, then the directory fsynced. One JSON object sealed with its CRC-32 like a record, laid out one
  image per line (everything else on the first line), so that it is read a line at a time: loading a large
  journal never parses one huge document, and lets other threads run between lines. A snapshot in one line
  (written by earlier versions) is read whole, and rewritten in lines at the next snapshot. Records with
  ``seq <= S`` are then redundant and the log is cut. Snapshots are taken when the log grows past twice the
  state's size, so the cost per record stays flat however big the job (rewriting one JSON file per record
  would be O(n) each, O(n^2) per job).
- ``journal.prev.jsonl``: while a snapshot that ``record`` started is being written. The log is renamed to this
  name and a new log opened for the records after S; the state at S is then encoded a slice of images per
  record (``Snapshot``: an image a record is about to change is encoded first, as it was at S), and a worker
  thread writes the pieces as they come, fsyncs the snapshot and removes this file. Neither the encoding of a
  large state nor the disk ever holds the loop for long. A crash at any point leaves a loadable set: the old
  snapshot, this log and the new one (records with ``seq <= S`` are skipped on load); the next open folds them
  into a new snapshot. The group commit fsyncs this log too, so a record before S is as durable as any other.
- ``lock``: see ``state.lock``.

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
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import anyio

from pipeline.errors import JournalCorruptError, JournalError
from pipeline.files import atomic_write, remove_leftovers
from pipeline.slices import SLICE, Sliced, drain
from pipeline.state.failpoints import die, failpoint, hit
from pipeline.state.lock import secure_dir
from pipeline.state.records import JournalState
from pipeline.state.snapshot import ENCODER, Snapshot, load_snapshot, loading, parsed, sealed, unsealed

__all__ = ["LOG", "PREV", "SNAPSHOT", "Journal", "load_snapshot", "read_log", "replayed", "replaying"]

LOG = "journal.jsonl"
PREV = "journal.prev.jsonl"
SNAPSHOT = "snapshot.json"
MIN_SNAPSHOT_RECORDS = 5000
#: Images of a background snapshot encoded per record (besides the one the record changes): a slice costs about
#: a millisecond, and a snapshot due after 2 x entries records is done long before the next is due.
SNAPSHOT_SLICE = 64
#: A run's end takes a snapshot when its log holds more records than this share of the state's entries (and more
#: than MIN_SNAPSHOT_RECORDS): the next open and ``imgmig status`` then read the snapshot instead of replaying a
#: copying run's records (3.4 s of a 5.7 s ``status`` at 100,000 images x 2), and the cost per record stays bounded
#: (at most this many entries encoded per record). A run that wrote little (an idle rerun) takes none.
CLOSING_SHARE = 8


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
        #: The snapshot being made behind the records (``_snapshot_behind``): its encoding, its writer thread, and
        #: what the writer failed with.
        self._snap: Snapshot | None = None
        self._writer: threading.Thread | None = None
        self._writer_error: OSError | None = None
        #: Log descriptors replaced by a rotation: a group commit may still be syncing one; closed at close.
        self._retired: list[int] = []

    # === open and load

    @classmethod
    def open(cls, directory: Path, job: str) -> Journal:
        """Load the state (snapshot + log), cut a torn tail, and open the log for appending."""
        return drain(cls.opening(directory, job))

    @classmethod
    def opening(cls, directory: Path, job: str) -> Sliced[Journal]:
        """``open``, a slice of images at a time (``slices``): a run loads a large journal on the event loop's
        thread, between its other tasks (a worker thread that packs images would hold the loop off; see
        ``slices``)."""
        try:
            secure_dir(directory)
            remove_leftovers(directory / SNAPSHOT)  # a snapshot a kill -9 cut short (the lock is ours)
            if not (directory / SNAPSHOT).exists():
                # a new journal: an empty snapshot records whose journal this is (one small write)
                atomic_write(directory / SNAPSHOT, Snapshot(JournalState(job)).whole())
            state = yield from loading(directory / SNAPSHOT, job, packed=True)
            log = directory / LOG
            logged, good_length = yield from replayed(directory, state)
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            if os.fstat(fd).st_size != good_length:
                os.ftruncate(fd, good_length)  # drop the torn tail of a write cut short
            if (directory / PREV).exists():  # fold both logs into a snapshot now, so one log remains
                atomic_write(directory / SNAPSHOT, Snapshot(state).whole())
                os.ftruncate(fd, 0)
                os.unlink(directory / PREV)
                logged, good_length = 0, 0
        except JournalError:
            raise
        except OSError as exc:
            raise JournalError(f"cannot open the journal in {directory}: {exc.strerror or exc}") from exc
        return cls(directory, state, fd, logged, good_length)

    @staticmethod
    def read(directory: Path, job: str, *, packed: bool = False) -> JournalState:
        """The state, read-only (no lock, no repair): what ``imgmig status`` shows (``packed``: its images held
        packed, ``records.Images``, for a reader of a large catalogue that reads them one at a time)."""
        if not directory.exists():
            return JournalState(job)
        return Journal.read_with_log(directory, job, packed=packed)[0]

    @staticmethod
    def read_with_log(directory: Path, job: str, *, packed: bool = False) -> tuple[JournalState, list[dict[str, Any]]]:
        """The state, read-only, and the log records applied on top of the snapshot to make it (with their
        times, which the snapshot does not keep)."""
        records: list[dict[str, Any]] = []
        try:
            state = load_snapshot(directory / SNAPSHOT, job, packed=packed)
            for path in (directory / PREV, directory / LOG):
                records += read_log(path, state.seq)[0]
        except OSError as exc:
            raise JournalError(f"cannot read the journal in {directory}: {exc.strerror or exc}") from exc
        for rec in records:
            state.apply(rec)
        if packed:
            state.images.pack_all()
        return state, records

    def release(self, image_id: str) -> None:
        """The run is done with this image for now: its entry is held packed until a record changes it again
        (``records.Images``), so the journal holds the images in flight, not the whole catalogue."""
        self.state.images.pack(image_id)

    # === write

    def record(self, kind: str, **fields: Any) -> None:
        """Apply and append one record (one write call; durable against a process crash).

        If the write fails, the log is cut back to its last complete record and this journal refuses
        every later write (``JournalError``): the run stops, and the next open loads cleanly.
        """
        if self._broken is not None:
            raise self._broken
        self._check_writer()
        start = time.perf_counter()
        rec = {"seq": self.state.seq + 1, "at": round(time.time(), 3), "kind": kind, **fields}
        line = sealed(ENCODER.encode(rec).encode()) + b"\n"
        try:
            if hit("journal_torn"):
                os.write(self._fd, line[: len(line) // 2])  # a write cut short by kill -9
                die()
            if hit("journal_enospc"):
                os.write(self._fd, line[: len(line) // 2])  # a write cut short by a full disk
                raise OSError(28, "No space left on device")
            failpoint(f"record:{kind}")  # one kind of record fails (kill, enospc)
            written = os.write(self._fd, line)
            if written != len(line):
                raise OSError(28, "short write (disk full?)")
        except OSError as exc:
            raise self._break(exc) from exc
        self._length += len(line)
        snap = self._snap
        if snap is not None:
            snap.before(fields.get("image_id"))  # the snapshot keeps the image as it was at its seq
        self.state.apply(rec)
        self._log_records += 1
        self._unsynced += 1
        self.records += 1
        if snap is not None:
            snap.encode(SNAPSHOT_SLICE)
        self.seconds += time.perf_counter() - start
        if self._snapshot_due() and self._writer is None:
            self._snapshot_behind()

    def _check_writer(self) -> None:
        """Collect a finished background snapshot; its failure breaks the journal (the run stops, and the next open
        loads the old snapshot and both logs: nothing is lost)."""
        writer = self._writer
        if writer is None or writer.is_alive():
            return
        writer.join()
        self._writer = self._snap = None
        if self._writer_error is not None:
            exc, self._writer_error = self._writer_error, None
            self._broken = JournalError(f"cannot write the journal snapshot in {self.directory}: "
                                        f"{exc.strerror or exc}; the job stops here. The journal holds every "
                                        "record and the next run resumes from it")  # fmt: skip
            raise self._broken

    def _wait_writer(self) -> None:
        """Finish the background snapshot, if one is being made: encode what is left, and wait for the writer
        (``close``, ``sync``, an explicit ``snapshot``)."""
        if self._snap is not None:
            self._snap.encode(None)
        if self._writer is not None:
            self._writer.join()
            self._check_writer()

    def _snapshot_behind(self) -> None:
        """A snapshot made behind the records: the log becomes ``PREV`` and a new log takes the records from here
        on; the state at this record is encoded in slices by the next records (``Snapshot``), and a worker
        thread writes the pieces, fsyncs the snapshot, then removes ``PREV`` (see the module doc for every crash
        in between)."""
        start = time.perf_counter()
        try:
            os.replace(self.directory / LOG, self.directory / PREV)
            fd = os.open(self.directory / LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as exc:
            raise self._break(exc) from exc
        finally:
            self.seconds += time.perf_counter() - start
        self._retired.append(self._fd)
        self._fd, self._log_records, self._length, self._unsynced = fd, 0, 0, 0
        snap = self._snap = Snapshot(self.state, behind=True)
        directory = self.directory

        def write() -> None:
            try:
                atomic_write(directory / SNAPSHOT, snap.pieces())  # fsyncs the directory: the new log's name too
                failpoint("snapshot_written")
                os.unlink(directory / PREV)
            except OSError as exc:
                self._writer_error = exc

        self._writer = threading.Thread(target=write, name="imgmig-journal-snapshot", daemon=True)
        self._writer.start()

    def _break(self, exc: OSError) -> JournalError:
        """Cut the log back to its last complete record and refuse every later write of this run; the error."""
        with contextlib.suppress(OSError):  # if even that fails, the partial line is a torn tail: ignored
            os.ftruncate(self._fd, self._length)
        self._broken = JournalError(
            f"cannot write the journal in {self.directory}: {exc.strerror or exc}; the job stops here. The "
            "journal holds every record up to the failed one and the next run resumes from it"
        )
        return self._broken

    @property
    def broken(self) -> bool:
        """Whether a write failed: this journal then refuses every later write of the run."""
        return self._broken is not None

    def _snapshot_due(self, *, closing: bool = False) -> bool:
        """A snapshot costs O(state); taking one when the log outgrows twice the state keeps the cost per
        record O(1), however large the job. ``closing``: at a run's end, past a share of the state
        (``CLOSING_SHARE``)."""
        share = self.state.entries // CLOSING_SHARE if closing else 2 * self.state.entries
        return self._log_records > max(MIN_SNAPSHOT_RECORDS, share)

    def settling(self, *, closing: bool = False) -> Sliced[None]:
        """Make the snapshot that is due (``closing``: due at a run's end), or finish the one being made behind
        the records, a slice of images at a time on the caller's thread (``slices``): ``sync`` and ``close`` then
        find it encoded, and their worker thread only waits for the disk."""
        due = self._snapshot_due(closing=closing)
        if self._snap is None and self._writer is None and self._broken is None and due:
            self._snapshot_behind()
        snap = self._snap
        while snap is not None and not snap.done:
            snap.encode(SLICE)
            yield

    def sync(self) -> None:
        """fsync the log: everything recorded so far survives a power cut (the records before a background
        snapshot's rotation are in that snapshot: it is waited for first)."""
        self._wait_writer()
        start = time.perf_counter()
        try:
            failpoint("journal_sync")
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
        # the log, and a previous log whose snapshot is still being made (its records are in no snapshot yet)
        fds = [self._fd, *self._retired[-1:]] if self._snap is not None else [self._fd]

        def fsync() -> float:
            start = time.perf_counter()
            for fd in fds:
                os.fsync(fd)
            return time.perf_counter() - start

        try:
            self.seconds += await anyio.to_thread.run_sync(fsync)
        except OSError as exc:
            self._unsynced += pending
            raise JournalError(f"cannot sync the journal in {self.directory}: {exc.strerror or exc}") from exc

    def snapshot(self) -> None:
        """Write the state atomically, then cut the log (its records are all in the snapshot). Waits for a
        background snapshot first."""
        self._wait_writer()
        start = time.perf_counter()
        try:
            # no fsync of the log first: the snapshot itself is fsynced (file and directory) before the
            # log is cut, and it holds every record of the log
            atomic_write(self.directory / SNAPSHOT, Snapshot(self.state).whole())
            os.ftruncate(self._fd, 0)
            self._log_records, self._length, self._unsynced = 0, 0, 0
        except OSError as exc:
            raise JournalError(f"cannot write the journal snapshot in {self.directory}: "
                               f"{exc.strerror or exc}") from exc  # fmt: skip
        finally:
            self.seconds += time.perf_counter() - start

    def close(self) -> None:
        """Make everything durable and close the log. A snapshot is taken only when one is due at a run's end
        (``CLOSING_SHARE``): forcing one at every close would cost O(state) per run, however little the run
        did."""
        if self._fd < 0:
            return
        try:
            if self._broken is not None:
                return  # the run stops on that error; the log already ends at its last complete record
            self._wait_writer()
            if self._snapshot_due(closing=True):
                self.snapshot()
            else:
                self.sync()
        finally:
            if self._snap is not None:  # a snapshot left unfinished (a broken journal) is given up: the old one,
                self._snap.abandon()  # the previous log and this one stay, and the next open folds them
            if self._writer is not None:  # a failed close still lets the thread finish before the files go
                self._writer.join()
            for fd in [*self._retired, self._fd]:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._retired.clear()
            self._fd = -1


def replayed(
    directory: Path, state: JournalState, logs: Sequence[tuple[Path, BinaryIO | None, int | None]] | None = None
) -> Sliced[tuple[int, int]]:
    """Apply the records of the journal's logs after its snapshot (``state``, packed) to ``state``, as they are
    read: the previous log (a snapshot that a crash or a full disk cut short), then the log. The images they
    change are packed again in groups (a run unpacks the images it works on, when it works on them). How many
    records of the last log were read past the snapshot, and the byte length of its intact part (``replaying``).

    ``logs``: the logs to read instead, in order, as (path, an open file or None, how many bytes or None for all).
    A record at or below the seq already applied is skipped: a reader that holds both logs open while a run
    renames the log to the previous one may see one file twice."""
    unpacked: dict[str, None] = {}

    def apply(rec: dict[str, Any]) -> None:
        if rec["seq"] <= state.seq:
            return
        state.apply(rec)
        if isinstance(rec.get("image_id"), str):
            unpacked[rec["image_id"]] = None
        if len(unpacked) >= SLICE:
            repack()

    def repack() -> None:
        for image_id in unpacked:
            state.images.pack(image_id)
        unpacked.clear()

    logged = (0, 0)
    for path, file, limit in (
        logs if logs is not None else [(directory / PREV, None, None), (directory / LOG, None, None)]
    ):
        logged = yield from replaying(path, state.seq, apply, file=file, limit=limit)
    repack()
    return logged


#: How much of a log is read at a time: replaying a log holds this and one record, not the whole file.
_READ = 1 << 20


def replaying(
    path: Path,
    after_seq: int,
    apply: Callable[[dict[str, Any]], None],
    *,
    file: BinaryIO | None = None,
    limit: int | None = None,
) -> Sliced[tuple[int, int]]:
    """Call ``apply`` on each record with seq > after_seq, in order, as the log is read (a MiB at a time, a slice
    of lines between yields: ``slices``); how many it applied, and the byte length of the intact part of the file
    (anything after the last newline is a torn write: ignored). A damaged record before that is an error, raised
    before the records after it are read: the caller's state is then thrown away. ``file``: the log, open (read
    from its start, left open); ``limit``: read no more than that many bytes."""
    if file is None:
        try:
            file = path.open("rb")
        except FileNotFoundError:
            return 0, 0
        holder: Any = file
    else:
        file.seek(0)
        holder = contextlib.nullcontext()
    left = limit if limit is not None else -1
    applied = end = number = 0
    with holder:
        pending = b""
        while left and (chunk := file.read(_READ if left < 0 else min(_READ, left))):
            left -= len(chunk) if left > 0 else 0
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            for line in lines:
                number += 1
                if number % (SLICE * 2) == 0:
                    yield
                rec = _record(path, line, number)
                end += len(line) + 1
                if rec["seq"] > after_seq:
                    apply(rec)
                    applied += 1
    return applied, end


def _record(path: Path, line: bytes, number: int) -> dict[str, Any]:
    """The record on ``line`` (the ``number``th of ``path``), or JournalCorruptError."""
    try:
        rec = parsed(unsealed(line))
        if not isinstance(rec, dict) or not isinstance(rec.get("seq"), int) or "kind" not in rec:
            raise ValueError("not a journal record")
    except ValueError as exc:
        with path.open("rb") as again:  # how many lines the log has, for the message
            lines = sum(chunk.count(b"\n") for chunk in iter(lambda: again.read(_READ), b""))
        raise JournalCorruptError(
            f"the journal {path} is damaged at line {number} of {lines} ({exc}); records after "
            "it would be lost, so nothing was changed. Repair or move the file aside; the next run "
            "finds its copies through their provenance"
        ) from exc
    return rec


def read_log(path: Path, after_seq: int) -> tuple[list[dict[str, Any]], int]:
    """Records with seq > after_seq, and the byte length of the intact part of the file (``replaying``)."""
    records: list[dict[str, Any]] = []
    _, end = drain(replaying(path, after_seq, records.append))
    return records, end
