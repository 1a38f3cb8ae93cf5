"""Reading a journal without holding it: what ``imgmig status`` does with a large catalogue.

``Browse`` holds the journal's head (runs, counters) and only the images its logs' records change (packed,
``records.Images``); every other image is read from the snapshot when it is shown (``entries``), one at a time,
from the same open file: what ``status --json`` streams is never a second copy of the whole state.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import weakref
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any, BinaryIO

from pipeline.errors import JournalError
from pipeline.slices import drain
from pipeline.state.journal import LOG, PREV, SNAPSHOT, replayed
from pipeline.state.records import ImageEntry, JournalState, TargetEntry, loaded_image
from pipeline.state.snapshot import image_lines, is_lined, load_snapshot

__all__ = ["Browse"]

#: How much of a log is searched at a time.
_READ = 1 << 20
#: A target's state when its snapshot form leaves it out (the default is not written).
_PLANNED = next(f.default for f in fields(TargetEntry) if f.name == "state")
#: How many times the snapshot may be replaced by a run's next one while it is read, before giving up.
_TRIES = 3


class Browse:
    """A journal, read-only (no lock, no repair): ``state`` holds its head and the images that its logs change;
    ``entries()`` yields every image's entry, in the journal's order."""

    def __init__(self, directory: Path, job: str) -> None:
        self.state = JournalState(job)
        self._file: Any = None
        self._loaded: set[str] = set()
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
            only = touched.__contains__ if lined else None
            state = load_snapshot(path, job, packed=True, only=only, file=snapshot)
            loaded = set(state.images)
            drain(replayed(directory, state, [(p, f, n) for (p, f), n in zip(logs, lengths, strict=True)]))
            if lined:  # the snapshot stays open for ``entries``, the logs are closed
                held = files.pop_all()
                for _, file in logs:
                    if file is not None:
                        file.close()
                self._file = snapshot
                weakref.finalize(self, held.close)
        self.state, self._loaded = state, loaded
        return True

    def entries(self) -> Iterator[ImageEntry]:
        """Every image's entry: those the logs changed from ``state``, the others as the snapshot holds them."""
        for entry in self._walk():
            yield entry if isinstance(entry, ImageEntry) else loaded_image(*entry, compact=False)

    def counts(self) -> dict[str, int]:
        """How many image x target entries are in each state (the images read from the snapshot are counted from
        their snapshot form, not made into entries)."""
        counts: dict[str, int] = {}
        for entry in self._walk():
            if isinstance(entry, ImageEntry):
                states = [target.state for target in entry.targets.values()]
            else:
                states = [target.get("state", _PLANNED) for target in (entry[1].get("targets") or {}).values()]
            for state in states:
                counts[state] = counts.get(state, 0) + 1
        return counts

    def _walk(self) -> Iterator[ImageEntry | tuple[str, dict[str, Any]]]:
        """Every image, in the journal's order: the entry of one that ``state`` holds, else (id, its snapshot form)."""
        images = self.state.images
        if self._file is None:
            yield from images.values()
            return
        for image_id, raw in image_lines(self._file):
            entry = images.get(image_id)
            yield entry if entry is not None else (image_id, raw)
        for image_id in images:
            if image_id not in self._loaded:  # made by a record after the snapshot
                yield images[image_id]


def _opened(path: Path, files: contextlib.ExitStack) -> BinaryIO | None:
    try:
        return files.enter_context(path.open("rb"))
    except FileNotFoundError:
        return None


#: An ``image_id`` field of a record, as the journal's encoder writes it (a quote inside a value is escaped).
_IMAGE_ID = re.compile(rb'"image_id":("(?:[^"\\]|\\.)*")')


def _logged_images(logs: list[BinaryIO | None]) -> tuple[set[str], list[int]]:
    """The ids of the images that the records of the journal's logs name, found without parsing the records
    (every ``image_id`` field of every whole line: a few more than the records change, never fewer), and how many
    bytes of each log that covers (its whole lines: a run may be appending). The records are checked when they
    are applied (``journal.replayed``), up to those lengths."""
    found: set[str] = set()
    lengths = []
    for file in logs:
        length = 0
        if file is not None:
            rest = b""
            while piece := file.read(_READ):
                whole, newline, rest = (rest + piece).rpartition(b"\n")  # whole lines: a field is never cut in two
                found.update(json.loads(m) for m in _IMAGE_ID.findall(whole))
                length += len(whole) + len(newline)
        lengths.append(length)
    return found, lengths
