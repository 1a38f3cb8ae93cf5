"""The journal holds the images it is not working on packed (issue 25): the same state, a tenth of the memory,
and the same bytes on disk. Loading and replaying are done in slices that yield to the caller."""

from __future__ import annotations

import json
import os
import uuid
import zlib
from pathlib import Path

import pytest

from pipeline.slices import SLICE, drain
from pipeline.state.journal import LOG, SNAPSHOT, Journal, load_snapshot
from pipeline.state.packed import pack, unpack
from pipeline.state.records import ENCODER, JournalState, image_json
from pipeline.state.snapshot import Snapshot, loading, sealed

DIGEST = "ab" * 64


def _fill(journal: Journal, n: int) -> None:
    for i in range(n):
        journal.record("image", image_id=f"img-{i}", name=f"name-{i}", size=1000 + i, checksum=f"{i:032x}")
        for region in ("KR2", "JP1"):
            journal.record("target", image_id=f"img-{i}", region=region, action="copy", created=f"t-{region}-{i}")
            journal.record("target", image_id=f"img-{i}", region=region, state="done", bytes=1000 + i,
                           evidence={"size": 1000 + i, "computed": {"md5": f"{i:032x}", "sha512": DIGEST},
                                     "reported": {"status": "active", "size": 1000 + i, "checksum": f"{i:032x}",
                                                  "os_hash_algo": "sha512", "os_hash_value": DIGEST}})  # fmt: skip


def test_pack_round_trips_any_bytes_and_shrinks_an_entry() -> None:
    """What is packed unpacks to the same bytes; a done image x 2 targets packs to a fraction of its JSON."""
    journal_state = JournalState("job")
    for seq, rec in enumerate(({"kind": "image", "image_id": "i", "name": "n", "size": 5, "checksum": "c" * 32},
                               {"kind": "target", "image_id": "i", "region": "KR2", "action": "copy",
                                "state": "done", "target_id": "t", "bytes": 5}), start=1):  # fmt: skip
        journal_state.apply({"seq": seq, "at": float(seq), **rec})
    encoded = ENCODER.encode(image_json(journal_state.images["i"])).encode()
    assert unpack(pack(encoded)) == encoded
    assert len(pack(encoded)) < len(encoded) / 2, (len(pack(encoded)), len(encoded))
    for odd in (b"", b"\x00\xff" * 300, "ünïcødé".encode()):
        assert unpack(pack(odd)) == odd


def test_a_packed_image_reads_as_its_entry_and_is_unpacked_only_to_change(tmp_path: Path) -> None:
    """Packing changes nothing a reader sees: entries compare equal before and after, a record on a packed image
    unpacks it (and only it), and the state equals the one replayed without packing."""
    journal = Journal.open(tmp_path, "job")
    _fill(journal, 20)
    before = {image_id: journal.state.images.get(image_id) for image_id in journal.state.images}
    for image_id in list(journal.state.images):
        journal.release(image_id)
    images = journal.state.images
    assert images.hot_count() == 0
    assert {image_id: images.get(image_id) for image_id in images} == before
    assert images["img-7"].targets["JP1"].evidence["reported"]["os_hash_value"] == DIGEST
    journal.record("target", image_id="img-7", region="KR2", state="failed", error="boom")
    assert images.hot_count() == 1
    assert images["img-7"].targets["KR2"].state == "failed"
    assert images["img-8"].targets["KR2"].state == "done"
    journal.close()
    unpacked = Journal.read(tmp_path, "job")
    assert unpacked.images.hot_count() == len(unpacked.images) == 20
    assert unpacked.images == images


def test_a_snapshot_is_byte_for_byte_the_same_whether_images_are_packed_or_not(tmp_path: Path) -> None:
    """A snapshot of packed images writes their stored JSON as it was read: the same bytes as one of entries."""
    journal = Journal.open(tmp_path, "job")
    _fill(journal, 30)
    journal.snapshot()
    journal.close()
    entries = load_snapshot(tmp_path / SNAPSHOT, "job")
    packed = load_snapshot(tmp_path / SNAPSHOT, "job", packed=True)
    assert entries.images.hot_count() == 30
    assert packed.images.hot_count() == 0
    assert entries.images == packed.images
    on_disk = (tmp_path / SNAPSHOT).read_bytes()
    assert b"".join(Snapshot(packed).whole()) == b"".join(Snapshot(entries).whole()) == on_disk


def test_open_holds_every_image_packed_after_replaying_the_log(tmp_path: Path) -> None:
    """A run opens its journal with no image as an entry: the snapshot's are loaded packed, and those the log's
    records change are packed again after replay (in groups); the state is the one the records say."""
    journal = Journal.open(tmp_path, "job")
    _fill(journal, 40)
    journal.snapshot()
    for i in range(0, 40, 3):  # records after the snapshot: replayed on open
        journal.record("target", image_id=f"img-{i}", region="KR2", state="failed", error="again")
    journal.record("image", image_id="img-new", name="new", size=1)
    journal.close()
    assert (tmp_path / LOG).stat().st_size > 0
    again = Journal.open(tmp_path, "job")
    try:
        assert again.state.images.hot_count() == 0
        assert len(again.state.images) == 41
        assert again.state.images["img-3"].targets["KR2"].state == "failed"
        assert again.state.images["img-4"].targets["KR2"].state == "done"
        assert again.state.images == Journal.read(tmp_path, "job").images
    finally:
        again.close()


def test_opening_a_large_journal_yields_between_slices(tmp_path: Path) -> None:
    """``Journal.opening`` and ``loading`` hand control back every slice of images, so a run loads a large
    journal between its other tasks; drained, they give the same state as ``open``."""
    journal = Journal.open(tmp_path, "job")
    _fill(journal, 3 * SLICE)
    journal.snapshot()
    journal.close()
    work = loading(tmp_path / SNAPSHOT, "job", packed=True)
    slices = 0
    try:
        while True:
            next(work)
            slices += 1
    except StopIteration as done:
        state = done.value
    assert slices >= 3, slices
    assert len(state.images) == 3 * SLICE
    opened = drain(Journal.opening(tmp_path, "job"))
    try:
        assert opened.state.images == state.images
    finally:
        opened.close()


def test_a_journal_of_one_line_snapshots_loads_packed(tmp_path: Path) -> None:
    """A snapshot of an earlier imgmig (the whole state on one line) loads packed too, with the same state."""
    journal = Journal.open(tmp_path, "job")
    _fill(journal, 5)
    journal.close()
    state = Journal.read(tmp_path, "job")
    (tmp_path / SNAPSHOT).write_bytes(sealed(ENCODER.encode(state.to_json()).encode()) + b"\n")
    (tmp_path / LOG).write_bytes(b"")
    packed = load_snapshot(tmp_path / SNAPSHOT, "job", packed=True)
    assert packed.images.hot_count() == 0
    assert packed.images == state.images
    assert json.loads(unpack(packed.images._by_id["img-1"]))["name"] == "name-1"  # type: ignore[arg-type]


def test_a_listed_image_is_held_packed_and_reads_the_same() -> None:
    """An image of a listing (``from_api(..., packed=True)``) holds its document packed, a fraction of the dict,
    and reads exactly as the unpacked one: every field, custom properties, equality; reading many packed images
    keeps only the last few decoded."""
    from pipeline.models import _WARM_DOCS, Image, _warm

    doc = {"id": "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0", "name": "ubuntu-24.04", "status": "active",
           "visibility": "private", "protected": True, "owner": "f" * 32, "size": 4096, "checksum": "1" * 32,
           "os_hash_algo": "sha512", "os_hash_value": "2" * 128, "disk_format": "qcow2", "container_format": "bare",
           "tags": ["golden", "ünïcødé"], "os_type": "linux", "hw_qemu_guest_agent": "yes", "min_ram": 512,
           "self": "/v2/images/0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0", "virtual_size": None}  # fmt: skip
    plain, packed = Image.from_api(doc), Image.from_api(doc, packed=True)
    assert packed.packed
    assert not plain.packed
    assert packed == plain
    assert dict(packed.raw) == dict(plain.raw)
    assert packed.raw is packed.raw  # decoded once while warm
    assert (packed.id, packed.name, packed.tags, packed.protected) == (plain.id, "ubuntu-24.04", plain.tags, True)
    assert packed.properties() == plain.properties() == {"os_type": "linux", "hw_qemu_guest_agent": "yes"}
    assert packed.content == plain.content
    assert len(packed._doc) < len(json.dumps(doc)) / 2  # type: ignore[arg-type]
    assert packed != Image.from_api({**doc, "name": "other"}, packed=True)
    many = [Image.from_api({**doc, "id": f"id-{i}"}, packed=True) for i in range(3 * _WARM_DOCS)]
    assert [image.raw["id"] for image in many] == [f"id-{i}" for i in range(3 * _WARM_DOCS)]
    assert len(_warm) <= _WARM_DOCS


def test_a_packed_document_gets_its_slot_fields_back_in_place() -> None:
    """The id, status, visibility and owner are packed as placeholders (the image holds them) and come back; a value
    that is not a string is packed as it is. The order of a document's keys is not kept (fields are packed by
    position, ``models._LAYOUT``): nothing reads it."""
    from pipeline.models import _DOC_WORDS, Image

    doc = {"name": "n", "owner": "o" * 32, "id": "i-1", "size": 1, "status": "active", "visibility": "shared"}
    packed = Image(doc, packed=True)
    assert dict(packed.raw) == doc
    assert b"o" * 32 not in zlib.decompressobj(-12, _DOC_WORDS).decompress(packed._doc)  # type: ignore[arg-type]
    odd = {"id": "i-2", "status": None, "owner": None, "visibility": 7}  # an Image made directly, not validated
    assert dict(Image(odd, packed=True).raw) == odd
    assert dict(Image({"id": "i-3", "status": ""}, packed=True).raw) == {"id": "i-3", "status": ""}


def test_a_copys_document_packs_its_digests_and_ids_as_bytes() -> None:
    """A copy's document as a listing gives it (random digests and ids, which do not compress) packs to under 200
    bytes: its keys are not packed, its hex digests and UUIDs are packed as bytes; values that are not lower-case
    hex or canonical UUIDs stay strings; every field reads back the same."""
    from pipeline.models import Image

    sizes = []
    for number in range(50):
        md5 = os.urandom(16).hex()
        doc = {"os_type": "linux", "imgmig_job": "nightly", "imgmig_source_id": str(uuid.uuid4()),
               "imgmig_source_region": "KR1", "imgmig_source_checksum": md5, "name": f"image-{number}",
               "disk_format": "qcow2", "container_format": "bare", "visibility": "private", "size": 4096,
               "virtual_size": 4096, "status": "active", "checksum": md5, "protected": False, "min_ram": 0,
               "min_disk": 0, "owner": "be0c4b1e9d1f4a7e8c2b5d6f7a8b9c0d", "os_hidden": False,
               "os_hash_algo": "sha512", "os_hash_value": os.urandom(64).hex(), "id": str(uuid.uuid4()),
               "created_at": "2026-12-07T16:56:24Z", "updated_at": "2026-12-07T16:56:24Z", "tags": []}  # fmt: skip
        image = Image.from_api(dict(doc), packed=True)
        sizes.append(len(image._doc))  # type: ignore[arg-type]
        assert dict(image.raw) == doc
    assert max(sizes) < 200, sizes
    odd = {"id": "I-1", "status": "active", "checksum": "ABCD", "os_hash_value": "abc", "imgmig_source_id": "x" * 36,
           "os_type": None, "imgmig_job": None}  # fmt: skip
    assert dict(Image(dict(odd), packed=True).raw) == odd


@pytest.mark.parametrize("piece", [64, 1 << 20])
def test_browsing_a_journal_holds_only_the_images_its_log_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, piece: int
) -> None:
    """``Browse`` (``imgmig status``) holds the images the log's records change, and reads every other one from
    the snapshot as it is shown: the same entries, in the same order, as the whole state read at once (the log
    searched in pieces of 64 bytes too, so that records are cut between pieces)."""
    from pipeline.state import browse as module
    from pipeline.state.browse import Browse

    monkeypatch.setattr(module, "_READ", piece)

    journal = Journal.open(tmp_path, "job")
    _fill(journal, 50)
    journal.record("target", image_id="img-4", region="EU1", action="copy")  # planned: a state left unwritten
    journal.snapshot()
    journal.record("target", image_id="img-3", region="KR2", state="failed", error="after the snapshot")
    journal.record("image", image_id="img-new", name="new", size=1)
    journal.close()
    browse = Browse(tmp_path, "job")
    assert set(browse.state.images) == {"img-3", "img-new"}
    assert browse.state.images.hot_count() == 2  # as entries, up to ``browse._HOT`` of them (the others packed)
    whole = Journal.read(tmp_path, "job")
    for _ in range(2):  # each pass reads the snapshot again
        entries = list(browse.entries())
        assert [e.image_id for e in entries] == list(whole.images)
        assert entries == list(whole.images.values())
    assert entries[3].targets["KR2"].state == "failed"
    assert entries[-1].image_id == "img-new"
    whole_counts: dict[str, int] = {}
    for entry in whole.images.values():
        for target in entry.targets.values():
            whole_counts[target.state] = whole_counts.get(target.state, 0) + 1
    assert browse.counts() == whole_counts == {"done": 99, "failed": 1, "planned": 1}


def test_browsing_a_journal_without_a_snapshot_or_a_directory(tmp_path: Path) -> None:
    """A journal whose snapshot is missing (only a log) or of one line, and no journal at all, browse too."""
    from pipeline.state.browse import Browse

    assert list(Browse(tmp_path / "none", "job").entries()) == []
    journal = Journal.open(tmp_path, "job")
    _fill(journal, 3)
    journal.close()
    (tmp_path / SNAPSHOT).unlink()
    assert [e.image_id for e in Browse(tmp_path, "job").entries()] == ["img-0", "img-1", "img-2"]


def test_browsing_reads_the_logs_as_they_were_when_it_searched_them(tmp_path: Path) -> None:
    """A run may append while ``status`` reads: the records are applied through the files that were searched,
    up to the lengths searched, so a record appended in between (for an image that was not loaded from the
    snapshot) is not applied to an image that the reader never loaded (it would show a partial entry)."""
    from pipeline.state.browse import _logged_images
    from pipeline.state.journal import PREV, replayed

    journal = Journal.open(tmp_path, "job")
    _fill(journal, 5)
    journal.snapshot()
    journal.record("target", image_id="img-1", region="KR2", state="failed", error="seen")
    with (tmp_path / LOG).open("rb") as log:
        touched, lengths = _logged_images([None, log])
        journal.record("target", image_id="img-2", region="KR2", state="failed", error="appended after the search")
        journal.sync()
        state = load_snapshot(tmp_path / SNAPSHOT, "job", packed=True, only=touched.__contains__)
        drain(replayed(tmp_path, state, [(tmp_path / PREV, None, lengths[0]), (tmp_path / LOG, log, lengths[1])]))
    journal.close()
    assert touched == {"img-1"}
    assert set(state.images) == {"img-1"}
    assert state.images["img-1"].targets["KR2"].error == "seen"
