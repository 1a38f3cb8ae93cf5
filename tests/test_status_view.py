"""``imgmig status`` at scale: each image's view is made straight from its snapshot form (no entry in between), the
counts come from the snapshot's head and the log (no second pass over the snapshot), and the images that the log
changes are loaded from their lines when a record first names them. The document must be the one the view made
from every image's entry gave, byte for byte: the old way is kept here as the reference."""

from __future__ import annotations

import io
import json
import math
import random
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import JobSpec, parse_job
from pipeline.errors import JournalCorruptError
from pipeline.report import streamed
from pipeline.run import status as status_module
from pipeline.run.status import render_status, status_view, write_status_json
from pipeline.slices import drain
from pipeline.state import browse as browse_module
from pipeline.state import snapshot as snapshot_module
from pipeline.state.browse import Browse
from pipeline.state.journal import LOG, SNAPSHOT, Journal, load_snapshot
from pipeline.state.records import ImageEntry, JournalState, TargetEntry, compact_evidence
from pipeline.state.snapshot import image_lines, loading

MD5, SHA = "0" * 31 + "a", "f" * 127 + "e"
EVIDENCE = {"size": 6, "computed": {"md5": MD5, "sha512": SHA},
            "reported": {"status": "active", "size": 6, "checksum": MD5, "os_hash_algo": "sha512",
                         "os_hash_value": SHA}}  # fmt: skip
ODD = {**EVIDENCE, "reported": {**EVIDENCE["reported"], "checksum": "1" * 32, "note": "=not-a-digest"}}


def _old_iso(t: float | None) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t else None


def _old_images(entries: Iterable[ImageEntry]) -> Iterator[dict[str, Any]]:
    """The images of the view as status made them from each image's entry before it made them from the snapshot
    form: the reference."""
    keys = tuple(f.name for f in fields(TargetEntry) if f.name != "region")
    for entry in entries:
        targets = {}
        for label, target in entry.targets.items():
            doc = {name: getattr(target, name) for name in keys}
            doc["updated_at"] = _old_iso(target.updated_at)
            targets[label] = doc
        yield {"image_id": entry.image_id, "name": entry.name, "size": entry.size, "checksum": entry.checksum,
               "status": entry.status, "skipped": entry.skipped, "targets": targets}  # fmt: skip


def _old_counts(entries: Iterable[ImageEntry]) -> dict[str, int]:
    """The counts as status took them before: every image x target counted, in the order met."""
    counts: dict[str, int] = {}
    for entry in entries:
        for target in entry.targets.values():
            counts[target.state] = counts.get(target.state, 0) + 1
    return counts


def _old_write(view: dict[str, Any]) -> str:
    """``write_status_json`` as it was: one ``json.dumps`` and one write per image."""
    out = io.StringIO()
    out.write("{\n")
    last = len(view) - 1
    for number, (key, value) in enumerate(view.items()):
        comma = "," if number < last else ""
        if key == "images":
            out.write('  "images": [')
            first = True
            for image in value:
                out.write(("\n    " if first else ",\n    ") + json.dumps(image, ensure_ascii=False))
                first = False
            out.write(("\n  " if not first else "") + "]" + comma + "\n")
        else:
            out.write(f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}{comma}\n")
    out.write("}\n")
    return out.getvalue()


def _spec(journal_dir: Path) -> JobSpec:
    auth = {"main": {"identity_url": "http://127.0.0.1:9/v2.0", "tenant_id": "t", "username": "u",
                     "password_env": "PW"}}  # fmt: skip
    return parse_job({"name": "job", "auth": auth, "source": {"auth": "main", "region": "KR1"},
                      "targets": [{"auth": "main", "region": "KR2"}, {"auth": "main", "region": "JP1"}],
                      "run": {"journal_dir": str(journal_dir)}}, "test", {"PW": "x"})  # fmt: skip


def _images(journal: Journal, prefix: str, n: int) -> None:
    """``n`` images of every kind a journal holds: copied with evidence (stored compacted, or a reported digest that
    differs), failed with problems, skipped, planned only (the state left out), one being shared (pending members,
    a create in flight), one whose copy was deleted, one without targets, names that JSON escapes."""
    names = ["plain", "이미지 ü", 'quote " and \\ back', "tab\tand \x01 control", "", "=md5"]
    for i in range(n):
        image_id = f"{prefix}-{i}"
        kind = i % 8
        journal.record("image", image_id=image_id, name=names[i % len(names)], size=1000 + i,
                       checksum=f"{i:032x}", status="active",
                       plan={"KR2": {"action": "copy", "reason": "new", "state": "planned"},
                             "JP1": {"action": "copy", "reason": "", "state": "planned"}})  # fmt: skip
        if kind == 0:  # copied, the evidence stored once
            for region in ("KR2", "JP1"):
                journal.record("target", image_id=image_id, region=region, created=f"t-{region}-{i}",
                               phases={"upload": 1.5 + i})  # fmt: skip
                journal.record("target", image_id=image_id, region=region, state="done", bytes=6, attempts=1,
                               evidence=compact_evidence(EVIDENCE), source_checksum=MD5, metadata="os_type",
                               phases={"upload": 1.5 + i, "verify": 2.25, "metadata": 3.0})  # fmt: skip
        elif kind == 1:  # failed, with problems and an evidence whose reported digest differs
            journal.record("target", image_id=image_id, region="KR2", state="failed", attempts=3,
                           error="HTTP 503: 서비스 unavailable", problems=["min_disk", "a \"quoted\" one"],
                           evidence=compact_evidence(ODD))  # fmt: skip
        elif kind == 2:  # skipped
            journal.record("image", image_id=image_id, skipped="not active (queued)",
                           plan={"KR2": {"action": "skip", "state": "skipped", "reason": "not active"}})  # fmt: skip
        elif kind == 3:  # shared: members pending, a create sent and not confirmed
            journal.record("target", image_id=image_id, region="JP1", state="sharing", pending_members=["p1", "p2"],
                           creating=f"c-{i}")  # fmt: skip
        elif kind == 4:  # copied then its copy deleted (pruned)
            journal.record("target", image_id=image_id, region="KR2", created=f"t-{i}")
            journal.record("target", image_id=image_id, region="KR2", state="done", bytes=0)
            journal.record("target", image_id=image_id, region="KR2", state="deleted", deleted=f"t-{i}")
        elif kind == 5:  # no targets at all: an image record without a plan
            journal.record("image", image_id=f"{prefix}-bare-{i}", name="bare")
        elif kind == 6:  # an outcome a newer imgmig knows
            journal.record("target", image_id=image_id, region="JP1", state="refused_format", error="qcow2",
                           reason=None)  # fmt: skip
        # kind 7: planned only


def _changes(journal: Journal, prefix: str, n: int) -> None:
    """What a run records after the snapshot: some images change state, evidence arrives, new images appear."""
    for i in range(0, n, 3):
        image_id = f"{prefix}-{i}"
        journal.record("target", image_id=image_id, region="KR2", created=f"again-{i}")
        journal.record("target", image_id=image_id, region="KR2", state="done", bytes=7,
                       evidence=compact_evidence(EVIDENCE))  # fmt: skip
    for i in range(1, n, 5):
        journal.record("target", image_id=f"{prefix}-{i}", region="JP1", state="failed", error="after")
    journal.record("source", image_id=f"{prefix}-2", download="opening", original=None)  # names an image only
    _images(journal, f"{prefix}-new", 9)


def _journal(directory: Path, *, snapshot: bool = True) -> None:
    journal = Journal.open(directory, "job")
    journal.record("run_started", run="r1", pid=1)
    _images(journal, "img", 40)
    if snapshot:
        journal.snapshot()
    _changes(journal, "img", 40)
    journal.record("run_finished", run="r1", outcome="ok", exit_code=0, summary={"copied": 1})
    journal.close()


def _resealed(directory: Path, head: dict[str, Any] | None) -> None:
    """The snapshot with another head (None: as one line, as an earlier imgmig wrote it)."""
    path = directory / SNAPSHOT
    if head is None:
        state = load_snapshot(path, "job")
        body = json.dumps(state.to_json(), separators=(",", ":"), ensure_ascii=False).encode()
        path.write_bytes(snapshot_module.sealed(body))
        return
    rest = path.read_bytes().split(b"\n", 1)[1]
    whole = json.dumps(head, separators=(",", ":"), ensure_ascii=False).encode()[:-1] + b',"images":{\n' + rest
    body = whole[: whole.rfind(b',"crc":"')] + b"}"
    path.write_bytes(snapshot_module.sealed(body))


def _head(directory: Path) -> dict[str, Any]:
    first = (directory / SNAPSHOT).read_bytes().split(b"\n", 1)[0]
    return json.loads(first[: -len(b',"images":{')] + b"}")  # type: ignore[no-any-return]


LAYOUTS = ["lined", "unrecorded", "recorded-wrong", "one-line", "log-only", "evicting", "small-pieces"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_view_is_the_one_the_entries_gave(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str) -> None:
    """Every layout a journal may have (a snapshot in lines with the counts in its head, one without them as an
    earlier imgmig wrote it, one whose recorded counts do not hold, a one-line snapshot, no snapshot, more changed
    images than are held as entries, files read in pieces that cut lines anywhere): the same document, byte for
    byte, as the view made from each entry, the counts in the same order; the same table."""
    directory = tmp_path / "j"
    _journal(directory, snapshot=layout != "log-only")
    if layout == "unrecorded":
        _resealed(directory, {k: v for k, v in _head(directory).items() if k != "counts"})
    elif layout == "recorded-wrong":  # a state the journal does not have: the walk finds out and counts them all
        _resealed(directory, {**_head(directory), "counts": {"done": 1, "vanished": 900}})
    elif layout == "one-line":
        _resealed(directory, None)
    elif layout == "evicting":
        monkeypatch.setattr(browse_module, "_HOT", 2)
    elif layout == "small-pieces":  # the snapshot and the logs read a few bytes at a time: lines cut anywhere
        monkeypatch.setattr(snapshot_module, "_READ", 61)
        monkeypatch.setattr(browse_module, "_READ", 53)
    whole = Journal.read(directory, "job")
    entries = list(whole.images.values())
    assert len(entries) > 50
    view = status_view(_spec(directory))
    images = list(view["images"])
    expected = list(_old_images(entries))
    assert [image["image_id"] for image in images] == [image["image_id"] for image in expected]
    assert images == expected
    assert list(view["counts"].items()) == list(_old_counts(entries).items())
    assert len(view["counts"]) >= 5
    out = io.StringIO()
    write_status_json(view, out)
    assert out.getvalue() == _old_write({**view, "images": expected, "counts": _old_counts(entries)})
    assert json.loads(out.getvalue())["images"] == json.loads(json.dumps(expected))
    assert render_status(view) == render_status({**view, "images": expected})
    browse = Browse(directory, "job")
    assert list(browse.entries()) == entries  # the entries too, and again: the walk reads the snapshot anew
    assert list(browse.entries()) == entries


def test_counts_of_one_state_need_no_walk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A journal whose entries are all in one state (a catalogue copied): the counts come from the snapshot's head
    and the log without reading the snapshot's images; a journal of several states is walked only until each
    state has been met (then the numbers are the recorded ones)."""
    journal = Journal.open(tmp_path, "job")
    for i in range(30):
        journal.record("target", image_id=f"img-{i}", region="KR2", state="done")
    journal.snapshot()
    journal.record("target", image_id="img-3", region="KR2", state="done", bytes=1)
    journal.record("target", image_id="img-new", region="KR2", state="done")
    journal.close()
    assert _head(tmp_path)["counts"] == {"done": 30}
    read: list[str] = []
    real = snapshot_module.image_lines

    def counting(file: Any, held: Any = None) -> Iterator[tuple[str, dict[str, Any] | None]]:
        for image in real(file, held):
            read.append(image[0])
            yield image

    monkeypatch.setattr(browse_module, "image_lines", counting)
    assert Browse(tmp_path, "job").counts() == {"done": 31}
    assert read == []
    journal = Journal.open(tmp_path, "job")
    journal.record("target", image_id="img-5", region="KR2", state="failed")
    journal.record("target", image_id="img-5", region="JP1", state="planned")
    journal.snapshot()
    journal.close()
    counts = Browse(tmp_path, "job").counts()
    assert list(counts.items()) == [("done", 30), ("failed", 1), ("planned", 1)]
    assert read == [f"img-{i}" for i in range(6)]  # up to the first image in a state not met yet


def _recount(state: JournalState) -> Counter[str]:
    return Counter(target.state for image in state.images.values() for target in image.targets.values())


def test_the_state_keeps_its_counts(tmp_path: Path) -> None:
    """``JournalState.counts`` is what counting every image x target gives, after any record (new images, new
    targets, states changed, created ids, final states, plans), after a snapshot is loaded packed, whole, in
    lines or in one, and replayed; a snapshot records them in its head."""
    rng = random.Random(7)
    journal = Journal.open(tmp_path, "job")
    states = ["planned", "uploading", "done", "failed", "skipped", None, "vanished"]
    for seq in range(600):
        image_id = f"img-{rng.randrange(40)}"
        region = rng.choice(["KR2", "JP1", "US1"])
        roll = rng.random()
        if roll < 0.2:
            plan = {r: {"action": "copy", "state": rng.choice(["planned", "skipped"])} for r in ("KR2", "JP1")}
            journal.record("image", image_id=image_id, name="n", plan=plan)
        elif roll < 0.3:
            journal.record("target", image_id=image_id, region=region, created=f"t-{seq}")
        else:
            fields_ = {"state": rng.choice(states)} if rng.random() < 0.8 else {"bytes": seq}
            journal.record("target", image_id=image_id, region=region, **{k: v for k, v in fields_.items() if v})
        assert +journal.state.counts == _recount(journal.state)
        if seq % 150 == 149:
            journal.snapshot()
            assert _head(tmp_path)["counts"] == dict(+journal.state.counts)
    journal.close()
    whole = Journal.read(tmp_path, "job")
    assert +whole.counts == _recount(whole)
    packed = Journal.read(tmp_path, "job", packed=True)
    assert +packed.counts == _recount(packed) == _recount(whole)
    loaded = load_snapshot(tmp_path / SNAPSHOT, "job")
    assert loaded.recorded == dict(+loaded.counts) == dict(_recount(loaded))
    _resealed(tmp_path, None)
    one_line = Journal.read(tmp_path, "job")
    assert +one_line.counts == _recount(whole)


def test_the_encoder_is_json_dumps() -> None:
    """The encoder made once writes what ``json.dumps(value, ensure_ascii=False)`` writes, and so does the one a
    Python without the C accelerator gets."""
    values: list[Any] = [
        {"a": [1, 2.5, -0.0, 1e300, True, False, None], "é": 'ü \u2028 \x00\x1f "q" \\ /', "": {}},
        [math.inf, -math.inf],
        "plain",
        12345678901234567890,
        None,
        {"nested": [{"x": [[]]}]},
    ]
    for value in values:
        assert streamed.encode(value) == json.dumps(value, ensure_ascii=False)
    nan = streamed.encode(math.nan)
    assert nan == json.dumps(math.nan) == "NaN"
    with pytest.raises(TypeError):
        streamed.encode({"a": object()})


def test_the_encoder_without_the_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(json.encoder, "c_make_encoder", None)
    encode = streamed._encoder()
    assert encode({"é": [1, "x"]}) == json.dumps({"é": [1, "x"]}, ensure_ascii=False)


def test_times_are_shown_as_before() -> None:
    """A time of the view is the same string as ``time.gmtime`` of it gave (whole seconds, rounded down)."""
    for t in (None, 0, 0.0, 1.0, 1796651193.999, 1796651193.0, 1796651194, 59.5, 1e9 + 0.25, -1.5):
        assert status_module._iso(t) == _old_iso(t), t


def test_image_lines_reads_any_line_as_json_does(tmp_path: Path) -> None:
    """The snapshot's lines are read with the JSON scanner called on each line; a line the encoder would not have
    written so (spaces, two images, nothing) is read as ``json.loads`` reads it, or refused the same way; the lines
    of ``held`` images are not parsed."""
    path = tmp_path / "snapshot.json"
    lines = [b'"a":{"name":"x","targets":{}},', b'"b" : { "name" : "y" },', b'"c":{"name":"\\u00fc\\n"},',
             b'"d":{"targets":{"KR2":{"state":"done"}}}']  # fmt: skip
    path.write_bytes(b'{"format":1,"images":{\n' + b"\n".join(lines) + b'\n},"crc":"00000000"}')
    forms = [("a", {"name": "x", "targets": {}}), ("b", {"name": "y"}), ("c", {"name": "ü\n"}),
             ("d", {"targets": {"KR2": {"state": "done"}}})]  # fmt: skip
    with path.open("rb") as file:
        assert list(image_lines(file)) == forms
        held = {"a", "c"}
        assert list(image_lines(file, held.__contains__)) == [(k, None if k in held else v) for k, v in forms]
    path.write_bytes(b'{"format":1,"images":{\n"a":{},"b":{}\n},"crc":"00000000"}')
    with path.open("rb") as file, pytest.raises(ValueError, match="not an image line"):
        list(image_lines(file))


@pytest.mark.parametrize("piece", [7, 64, 1 << 20])
def test_a_snapshot_is_checked_and_read_in_pieces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, piece: int) -> None:
    """The snapshot's CRC is computed a piece at a time, whatever the pieces: the same state; one byte changed
    anywhere is found."""
    _journal(tmp_path / "j")
    whole = Journal.read(tmp_path / "j", "job")
    monkeypatch.setattr(snapshot_module, "_READ", piece)
    assert Journal.read(tmp_path / "j", "job") == whole
    data = (tmp_path / "j" / SNAPSHOT).read_bytes()
    for at in (len(data) // 3, len(data) - 20):
        damaged = bytearray(data)
        damaged[at] ^= 0x01
        (tmp_path / "j" / SNAPSHOT).write_bytes(bytes(damaged))
        with pytest.raises(JournalCorruptError, match="checksum mismatch"):
            drain(loading(tmp_path / "j" / SNAPSHOT, "job"))


def test_a_changed_image_is_read_from_its_line_when_named(tmp_path: Path) -> None:
    """Only the images a record names are loaded from the snapshot (from their lines, when first named); a record
    at or before the snapshot's seq loads nothing."""
    _journal(tmp_path)
    browse = Browse(tmp_path, "job")
    named = {f"img-{i}" for i in range(0, 40, 3)} | {f"img-{i}" for i in range(1, 40, 5)} | {"img-2"}
    new = {image_id for image_id in browse.state.images if "new" in image_id}
    assert set(browse.state.images) == named | new
    assert (tmp_path / LOG).stat().st_size > 0  # the changes are in the log, after the snapshot
