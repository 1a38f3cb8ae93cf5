"""The journal's snapshot file: its one encoder, its CRC-32 seal, its layout (one image per line) and how it is made
(``Snapshot``: in slices behind the records, streamed to a writer) and read (a line at a time). See ``journal``
for when snapshots are taken and how they survive a crash.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from pipeline.errors import JournalCorruptError, JournalError
from pipeline.slices import SLICE, Sliced, drained
from pipeline.state.failpoints import failpoint
from pipeline.state.records import ENCODER, FORMAT, JournalState

__all__ = [
    "ENCODER",
    "Snapshot",
    "image_at",
    "image_lines",
    "is_lined",
    "load_snapshot",
    "loading",
    "parsed",
    "sealed",
    "unsealed",
]

_SEAL = b',"crc":"'


def sealed(body: bytes) -> bytes:
    """A JSON object with its own CRC-32 as a last member, so any damaged byte is detected on load
    (a flipped digit can still be valid JSON)."""
    return body[:-1] + _SEAL + b"%08x" % zlib.crc32(body) + b'"}'


def unsealed(line: bytes) -> bytes:
    """The JSON object a sealed line holds, after checking its CRC-32 (ValueError if damaged)."""
    at = line.rfind(_SEAL)
    if at < 0 or not line.endswith(b'"}') or len(line) - at != len(_SEAL) + 10:
        raise ValueError("no checksum")
    body = line[:at] + b"}"
    # compared as written (lower-case hex): a damaged "a" that became "A" is damage too, though int() reads both
    if line[at + len(_SEAL) : -2] != b"%08x" % zlib.crc32(body):
        raise ValueError("checksum mismatch")
    return body


def loading(
    path: Path,
    job: str,
    *,
    packed: bool = False,
    only: Callable[[str], bool] | None = None,
    file: BinaryIO | None = None,
    where: dict[str, int] | None = None,
) -> Sliced[JournalState]:
    """The state a snapshot holds (an empty one if there is none), read a slice of images at a time (``slices``);
    ``packed``: its images held packed (``Images``), as a run holds those it is not working on; ``only``: the
    images to load (the others are skipped unparsed: ``image_lines`` reads them later); ``file``: the snapshot,
    open (read from its start and left open; None: there is none); ``where``: instead of loading the images that
    ``only`` names, note where each one's line starts in the file (``image_at`` reads it)."""
    holder: Any = contextlib.nullcontext()
    if file is None:
        try:
            file = holder = path.open("rb")
        except FileNotFoundError:
            return JournalState(job)
    file.seek(0)
    try:
        with holder:
            first = file.readline()
            if first.endswith(_IMAGES_LINE):
                state = yield from _load_lines(path, first, file, packed, only, where)
            else:  # one line: a snapshot of an earlier imgmig
                doc = json.loads(unsealed((first + file.read()).rstrip(b"\n")))
                _check_format(path, doc)
                state = JournalState.from_json(doc)
                if packed:  # (``only`` is for a snapshot laid out in lines: a one-line one is read whole)
                    state.images.pack_all()
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise JournalCorruptError(
            f"the journal snapshot {path} is damaged ({exc}); nothing was changed. Move the journal "
            "directory aside to start over: the next run finds its copies through their provenance"
        ) from exc
    if state.job != job:
        raise JournalError(f"the journal in {path.parent} belongs to job {state.job!r}, not {job!r}; "
                           "give each job its own journal_dir")  # fmt: skip
    return state


#: ``loading`` in one go.
load_snapshot = drained(loading)

#: How the first line of a snapshot laid out one image per line ends.
_IMAGES_LINE = b',"images":{\n'


def _check_format(path: Path, doc: Any) -> None:
    newer = doc.get("format", FORMAT) if isinstance(doc, dict) else FORMAT
    if isinstance(newer, int) and newer > FORMAT:
        raise JournalError(f"the journal in {path.parent} has format {newer}, written by a newer imgmig; this "
                           f"imgmig reads format {FORMAT}. Run the newer imgmig, or give this job another "
                           "journal_dir")  # fmt: skip


def _load_lines(
    path: Path, first: bytes, file: Any, packed: bool, only: Callable[[str], bool] | None, where: dict[str, int] | None
) -> Sliced[JournalState]:
    """A snapshot laid out one image per line, read a line at a time: its CRC-32 is checked first, a MiB at a
    time (ValueError if it does not match: nothing of a damaged snapshot is believed, not even its format), then
    it is parsed. ``where``: see ``loading``."""
    crc = zlib.crc32(first)
    last = b""  # the line being read; once the whole file is: the last one, which holds the seal
    start = len(first)  # where it starts in the file
    found: dict[str, int] = {}
    while piece := file.read(_READ):
        last += piece
        at = last.rfind(b"\n", 0, len(last) - 1) + 1  # the lines before it are whole: they are in the CRC
        crc = zlib.crc32(memoryview(last)[:at], crc)
        if where is not None and only is not None:
            _find(last, at, start, only, found)
        last, start = last[at:], start + at
        yield  # a MiB's CRC takes about a millisecond
    last = last.rstrip(b"\n")
    at = last.rfind(_SEAL)
    if at < 0 or not last.endswith(b'"}') or len(last) - at != len(_SEAL) + 10:
        raise ValueError("no checksum")
    if last[at + len(_SEAL) : -2] != b"%08x" % zlib.crc32(last[:at] + b"}", crc):
        raise ValueError("checksum mismatch")
    doc = json.loads(first[: -len(_IMAGES_LINE)] + b"}")  # the first line, without the images' opening
    _check_format(path, doc)
    state = JournalState.from_json(doc)
    if where is not None and only is not None:
        where.update(found)
        return state
    file.seek(len(first))
    for number, line in enumerate(_lines(file), start=1):
        if number % SLICE == 0:
            yield
        if line.startswith(b"}"):  # the last line: the end of the images, and the seal
            break
        if only is not None and not only(_image_id(line)):
            continue
        image_id, raw = _line_image(line)
        if not packed:
            state.load_image(image_id, raw)
            continue
        key = ENCODER.encode(image_id).encode() + b":"
        value = line.rstrip(b",\n")[len(key) :] if line.startswith(key) else ENCODER.encode(raw).encode()
        state.load_packed(image_id, value, raw.get("targets") or {})
    return state


#: A line's start and the id of the image on it (``_find``).
_LINE_ID = re.compile(rb'\n"([^"\\]*(?:\\.[^"\\]*)*)":')


def _find(lines: bytes, end: int, start: int, only: Callable[[str], bool], found: dict[str, int]) -> None:
    """Note in ``found`` where the line of each image that ``only`` names starts in the file, for the whole lines
    of ``lines`` (a line starts it, at ``start`` in the file) before ``end``."""
    for match in _LINE_ID.finditer(b"\n" + lines, 0, end + 1):  # (a newline before the first line too)
        raw = match.group(1)
        image_id = json.loads(b'"' + raw + b'"') if b"\\" in raw else raw.decode("utf-8", "surrogatepass")
        if only(image_id):
            found[image_id] = start + match.start()


def image_at(file: BinaryIO, start: int) -> tuple[str, dict[str, Any]]:
    """The image on the line of a snapshot that starts at ``start`` (``loading``'s ``where``), as (id, its
    snapshot form)."""
    file.seek(start)
    return _line_image(file.readline())


def _line_image(line: bytes) -> tuple[str, dict[str, Any]]:
    """The image on one line (``_scanned``, else ``_image_line``)."""
    text = line.decode("utf-8", "surrogatepass")
    return _scanned(text, 0, len(text)) or _image_line(line)


def is_lined(file: BinaryIO) -> bool:
    """Whether the snapshot (open) is laid out one image per line (``image_lines`` reads it); False for a
    one-line snapshot of an earlier imgmig."""
    file.seek(0)
    return file.readline().endswith(_IMAGES_LINE)


def image_lines(file: Any, held: Callable[[str], bool] | None = None) -> Iterator[tuple[str, Any]]:
    """Each image of a snapshot laid out one image per line (``is_lined``), as (id, its snapshot form), read from
    an open file a MiB at a time (what ``loading`` checked; a reader that holds the file reads what it checked);
    ``held``: the images whose form is not wanted (the reader holds them): their lines are not parsed (None)."""
    file.seek(0)
    file.seek(len(file.readline()))
    rest = b""
    while piece := file.read(_READ):
        whole, newline, rest = (rest + piece).rpartition(b"\n")
        text = (whole + newline).decode("utf-8", "surrogatepass")  # every line read whole, decoded at once
        at = 0
        while at < len(text):
            if text.startswith("}", at):
                return
            end = text.index("\n", at)
            yield _scanned(text, at, end, held) or _image_line(text[at:end].encode("utf-8", "surrogatepass"))
            at = end + 1
    if rest and not rest.startswith(b"}"):
        yield _image_line(rest)


#: The JSON scanner and string reader that ``json.loads`` calls, called on each line of a decoded piece: the same
#: values, in three quarters of the time (no decoding and no checks around each call).
_SCAN: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
_STRING: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]


def _scanned(text: str, at: int, end: int, held: Callable[[str], bool] | None = None) -> tuple[str, Any] | None:
    """The image on the line of ``text`` from ``at`` to ``end`` (perhaps a newline then), as the snapshot's
    encoder writes it (``"id":{...}`` and a comma but on the last line); None if it is not written so
    (``_image_line`` then reads it, or says what is wrong with it). ``held``: see ``image_lines``."""
    if not text.startswith('"', at):
        return None
    try:
        image_id, at = _STRING(text, at + 1)
        if not text.startswith(":{", at):
            return None
        if held is not None and held(image_id):
            return image_id, None
        raw, at = _SCAN(text, at + 1)
    except (ValueError, StopIteration):
        return None
    return (image_id, raw) if text[at:end] in _ENDS else None


#: What may follow an image on its line.
_ENDS = frozenset(("", ",", "\n", ",\n"))


def parsed(body: bytes) -> Any:
    """``json.loads(body)``, the scanner it calls called directly on what the journal's encoder writes (a record:
    a third less time); anything else is left to ``json.loads`` (which says what is wrong with it)."""
    try:
        text = body.decode("utf-8", "surrogatepass")
        value, end = _SCAN(text, 0)
        if end == len(text):
            return value
    except (ValueError, StopIteration):
        pass
    return json.loads(body)


def _image_line(line: bytes) -> tuple[str, dict[str, Any]]:
    """The image on a snapshot's line, as (id, its snapshot form); ValueError if the line holds no image."""
    image = json.loads(b"{" + line.rstrip(b",\n") + b"}")
    if not isinstance(image, dict) or len(image) != 1:
        raise ValueError("not an image line")
    [(image_id, raw)] = image.items()
    return image_id, raw


def _image_id(line: bytes) -> str:
    """The id an image line starts with, without parsing the rest of it."""
    end = line.find(b'"', 1)
    if end > 0 and line.find(b"\\", 1, end) < 0:  # no escape in it: its bytes are its text
        return line[1:end].decode("utf-8")
    return str(json.decoder.scanstring(line.decode("utf-8"), 1)[0])  # type: ignore[attr-defined]


#: How much of a snapshot is read at once (its lines are then split in memory).
_READ = 1 << 20


def _lines(file: Any) -> Iterator[bytes]:
    """The lines from the file's position on, without their newlines, read a MiB at a time: a worker thread that
    loads a large journal with one buffered readline per line held the event loop's thread off for up to 100 ms
    at a time; reading in large pieces does not."""
    rest = b""
    while piece := file.read(_READ):
        lines = (rest + piece).split(b"\n")
        rest = lines.pop()
        yield from lines
    if rest:
        yield rest


#: What an abandoned snapshot's writer receives instead of its next piece.
_ABANDONED = b"abandoned"


class Snapshot:
    """The state at one seq, encoded behind the records in slices and handed, piece by piece, to the thread that
    writes it (``pieces``). Images are encoded in the state's order; ``before(image_id)`` encodes an image first
    when a record is about to change it, so every image is written as it was at the snapshot's seq. Images that
    appear after it are not in it (their records are in the new log)."""

    def __init__(self, state: JournalState, *, behind: bool = False) -> None:
        self.state = state
        #: Made behind the records (the ``snapshot_encoded`` fail point is for those).
        self.behind = behind
        self.seq = state.seq
        #: Image ids not encoded yet, in order.
        self.left: set[str] = set(state.images)
        #: The images in the state's order, and how far ``encode`` has gone through them (taking the first key of a
        #: dict that keys are deleted from scans every deleted slot before it: at 100,000 images the encoding
        #: behind the records held the event loop for up to 180 ms per slice near its end).
        self._order = list(state.images)
        self._next = 0
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        head = ENCODER.encode(state.head_json()).encode()
        self._queue.put(head[:-1] + _IMAGES_LINE[:-1])
        self._first = True
        self.done = False

    def before(self, image_id: Any) -> None:
        if isinstance(image_id, str) and image_id in self.left:
            self.left.discard(image_id)
            self._put(image_id)

    def encode(self, count: int | None) -> None:
        """Encode up to ``count`` more images (None: all that are left); the end once none is left."""
        if self.done:
            return
        left, order = self.left, self._order
        todo = len(left) if count is None else min(count, len(left))
        while todo:
            image_id = order[self._next]
            self._next += 1
            if image_id in left:  # (else ``before`` has encoded it)
                left.discard(image_id)
                self._put(image_id)
                todo -= 1
        if not left:
            self.done = True
            if self.behind:
                failpoint("snapshot_encoded")
            self._queue.put(b"\n}}")
            self._queue.put(None)

    def _put(self, image_id: str) -> None:
        piece = b"\n" + ENCODER.encode(image_id).encode() + b":" + self.state.images.encoded(image_id)
        self._queue.put(piece if self._first else b"," + piece)
        self._first = False

    def abandon(self) -> None:
        """Stop a snapshot that will not be finished: its writer removes the part it wrote."""
        if not self.done:
            self.done = True
            self._queue.put(_ABANDONED)

    def whole(self) -> Iterator[bytes]:
        """Every piece at once (a snapshot written in one go: a new journal, an explicit snapshot)."""
        self.encode(None)
        return self.pieces()

    def pieces(self) -> Iterator[bytes]:
        """The sealed snapshot, piece by piece, as they are encoded (the writer thread's side)."""
        crc = 0
        last = b""
        while (piece := self._queue.get()) is not None:
            if piece is _ABANDONED:
                raise OSError("the snapshot was abandoned: the journal stopped before it was encoded")
            if last:
                crc = zlib.crc32(last, crc)
                yield last
            last = piece
        # the body ends with "}": the seal takes its place, as ``sealed`` does for a body in one piece
        crc = zlib.crc32(last, crc)
        yield last[:-1] + _SEAL + b"%08x" % crc + b'"}'
