"""Reading a journal without holding it: what ``imgmig status`` does with a large catalogue.

``Browse`` holds the journal's head (runs, counters) and only the images its logs' records change, each loaded from
its snapshot line when a record first names it (as entries, the ``_HOT`` named last; the others packed,
``records.Images``); every other image is read from the snapshot when it is shown (``forms``, ``entries``), one at
a time, from the same open file: what ``status --json`` streams is never a second copy of the whole state. The
counts come from those the snapshot recorded and from the images the logs change, not from reading every image.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import weakref
from collections import Counter
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any, BinaryIO

from pipeline.errors import JournalError
from pipeline.slices import drain
from pipeline.state.journal import LOG, PREV, SNAPSHOT, replaying
from pipeline.state.records import ImageEntry, JournalState, TargetEntry, image_json, loaded_image
from pipeline.state.snapshot import image_at, image_lines, is_lined, load_snapshot

__all__ = ["Browse"]

#: How much of a log is searched at a time.
_READ = 1 << 20
#: A target's state when its snapshot form leaves it out (the default is not written).
_PLANNED = next(f.default for f in fields(TargetEntry) if f.name == "state")
#: How many of the images that the logs change are held as entries (about 5 KB each), the others packed.
_HOT = 16384
#: How many times the snapshot may be replaced by a run's next one while it is read, before giving up.
_TRIES = 3


class Browse:
    """A journal, read-only (no lock, no repair): ``state`` holds its head and the images that its logs change;
    ``entries()`` yields every image's entry, in the journal's order."""

    def __init__(self, directory: Path, job: str) -> None:
        self.state = JournalState(job)
        self._file: Any = None
        self._loaded: set[str] = set()
        #: The images ``state`` holds as entries (the others it holds packed).
        self._hot: dict[str, None] = {}
        self._totals: dict[str, int] | None = {}
        if not directory.exists():
            return
        try:
            for _ in range(_TRIES):
                if self._read(directory, job):
                    return
        except OSError as exc:
            raise JournalError(f"cannot read the journal in {directory}: {exc.strerror or exc}") from exc
        raise JournalError(f"the journal in {directory} changed {_TRIES} times while it was read (a run is taking "
                           "snapshots); run status again")  # fmt: skip

    def _read(self, directory: Path, job: str) -> bool:
        """Read the journal once; False if its snapshot was replaced meanwhile (then nothing is kept).

        A run may be writing the journal meanwhile: the snapshot and both logs are opened first (the log before
        the previous one: a run renames the log to the previous one when it starts a snapshot) and read through
        those files, each up to the length first searched, so what is read is the journal as it was at one
        moment. The snapshot must still be the current one once all are open: else a finished snapshot may have
        removed the previous log before it was opened."""
        path = directory / SNAPSHOT
        with contextlib.ExitStack() as files:
            snapshot = _opened(path, files)
            log = _opened(directory / LOG, files)
            logs = [(directory / PREV, _opened(directory / PREV, files)), (directory / LOG, log)]
            if snapshot is not None and os.stat(path).st_ino != os.fstat(snapshot.fileno()).st_ino:
                return False
            touched, lengths = _logged_images([file for _, file in logs])
            lined = snapshot is not None and is_lined(snapshot)
            where: dict[str, int] = {}  # where the lines of the images the logs name start (not loaded yet)
            state = load_snapshot(path, job, packed=True, only=touched.__contains__ if lined else None,
                                  file=snapshot, where=where if lined else None)  # fmt: skip
            replay = _Replay(state, snapshot, where)
            for (log_path, file), length in zip(logs, lengths, strict=True):
                drain(replaying(log_path, state.seq, replay, file=file, limit=length))
            if lined:  # the snapshot stays open for ``entries``, the logs are closed
                held = files.pop_all()
                for _, file in logs:
                    if file is not None:
                        file.close()
                self._file = snapshot
                weakref.finalize(self, held.close)
        self.state, self._hot = state, replay.hot
        self._loaded = replay.loaded if lined else set()  # the images of ``state`` that are in ``image_lines``
        self._totals = _totals(state, replay.before if lined else None)
        return True

    def entries(self) -> Iterator[ImageEntry]:
        """Every image's entry: those the logs changed from ``state``, the others as the snapshot holds them."""
        images = self.state.images
        for image_id, raw in self._walk():
            yield images[image_id] if raw is None else loaded_image(image_id, raw, compact=False)

    def forms(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every image, in the journal's order, as (id, its snapshot form: ``records.image_json``), which is what
        ``entries`` makes each entry from: those the logs changed as ``state`` holds them, the others as the
        snapshot does. ``imgmig status`` shows and counts these, without making entries."""
        images, hot = self.state.images, self._hot
        for image_id, raw in self._walk():
            if raw is not None:
                yield image_id, raw
            elif image_id in hot:
                yield image_id, image_json(images[image_id])
            else:
                yield image_id, json.loads(images.encoded(image_id))

    def counts(self) -> dict[str, int]:
        """How many image x target entries are in each state, in the order a walk through the images (``forms``)
        first meets each state. The numbers are those the snapshot recorded, less the images the logs changed as
        the snapshot holds them, plus those images now (``state.counts``): the walk stops as soon as it has met
        every state (it is not taken for one state). Without recorded numbers (an earlier imgmig's snapshot), or
        if the walk meets a state they do not have, every image is counted."""
        totals = self._totals
        if totals is not None and len(totals) < 2:
            return dict(totals)
        met: dict[str, int] = {}
        for state in self._states():
            met[state] = met.get(state, 0) + 1
            if totals is not None and len(met) == len(totals):
                if met.keys() == totals.keys():
                    return {state: totals[state] for state in met}
                totals = None  # the recorded numbers do not hold: count every image
        return met

    def _states(self) -> Iterator[str]:
        """The state of each image x target, in the journal's order."""
        for _, raw in self.forms():
            for target in (raw.get("targets") or {}).values():
                yield target.get("state", _PLANNED)

    def _walk(self) -> Iterator[tuple[str, dict[str, Any] | None]]:
        """Every image, in the journal's order, as (id, its snapshot form), the form None for one that ``state``
        holds (its line is not parsed)."""
        images = self.state.images
        if self._file is not None:
            held = set(images)
            for image_id, raw in image_lines(self._file, held.__contains__):
                yield image_id, None if image_id in held else raw
        for image_id in images:
            if image_id not in self._loaded:  # made by a record after the snapshot (all, without a lined one)
                yield image_id, None


class _Replay:
    """Applies each record of the logs to ``state``, as ``journal.replayed`` does: an image of the snapshot is
    loaded (from its line: ``where``) when a record first names it; the ``_HOT`` images named last are held as
    entries, the others packed again (a log may change every image of a large catalogue)."""

    def __init__(self, state: JournalState, snapshot: BinaryIO | None, where: dict[str, int]) -> None:
        self.state, self.snapshot, self.where = state, snapshot, where
        #: The images loaded from the snapshot, and how many of their targets were in each state there.
        self.loaded: set[str] = set(state.images)
        self.before: Counter[str] = Counter(state.counts)
        #: The images held as entries, the one named last last.
        self.hot: dict[str, None] = {}

    def __call__(self, rec: dict[str, Any]) -> None:
        state = self.state
        if rec["seq"] <= state.seq:  # both logs may hold it: a run renamed the log while they were opened
            return
        image_id = rec.get("image_id")
        if not isinstance(image_id, str):
            state.apply(rec)
            return
        if image_id in self.where and image_id not in self.loaded:
            _, raw = image_at(self.snapshot, self.where[image_id])  # type: ignore[arg-type]  # (``where``: lined)
            state.load_image(image_id, raw)
            self.loaded.add(image_id)
            self.before.update(target.state for target in state.images[image_id].targets.values())
        state.apply(rec)
        hot = self.hot
        hot.pop(image_id, None)
        hot[image_id] = None
        if len(hot) > _HOT:
            oldest = next(iter(hot))
            del hot[oldest]
            state.images.pack(oldest)


def _totals(state: JournalState, before: Counter[str] | None) -> dict[str, int] | None:
    """How many image x target entries are in each state: those ``state`` holds (it holds every image: no
    snapshot laid out in lines) or, from such a snapshot, those it recorded, less ``before`` (the images loaded
    from it, as it holds them) plus those images and the new ones now; None if it recorded none that hold."""
    if before is None:
        return +state.counts
    recorded = state.recorded
    if not isinstance(recorded, dict) or any(type(n) is not int or n < 0 for n in recorded.values()):
        return None
    totals = Counter(recorded)
    totals.subtract(before)
    totals.update(state.counts)
    return None if any(n < 0 for n in totals.values()) else +totals


def _opened(path: Path, files: contextlib.ExitStack) -> BinaryIO | None:
    try:
        return files.enter_context(path.open("rb"))
    except FileNotFoundError:
        return None


#: An ``image_id`` field of a record, as the journal's encoder writes it (a quote inside a value is escaped).
_IMAGE_ID = re.compile(rb'"image_id":"([^"\\]*(?:\\.[^"\\]*)*)"')


def _logged_images(logs: list[BinaryIO | None]) -> tuple[set[str], list[int]]:
    """The ids of the images that the records of the journal's logs name, found without parsing the records
    (every ``image_id`` field of every whole line: a few more than the records change, never fewer), and how many
    bytes of each log that covers (its whole lines: a run may be appending). The records are checked when they
    are applied (``journal.replaying``), up to those lengths."""
    found: set[str] = set()
    lengths = []
    for file in logs:
        length = 0
        if file is not None:
            rest = b""
            while piece := file.read(_READ):
                whole, newline, rest = (rest + piece).rpartition(b"\n")  # whole lines: a field is never cut in two
                found.update(_text(m) for m in _IMAGE_ID.findall(whole))
                length += len(whole) + len(newline)
        lengths.append(length)
    return found, lengths


def _text(string: bytes) -> str:
    """A JSON string's text, from what is between its quotes."""
    return json.loads(b'"' + string + b'"') if b"\\" in string else string.decode("utf-8")
