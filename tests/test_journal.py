"""The journal: pure state, crash safety (torn tail vs corruption), snapshots, file modes, the job lock."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest

from pipeline.errors import JournalCorruptError, JournalError, LockHeldError
from pipeline.state.journal import LOG, SNAPSHOT, Journal, load_snapshot, read_log
from pipeline.state.lock import JobLock
from pipeline.state.records import JournalState


def fill(journal: Journal, n: int) -> None:
    for i in range(n):
        journal.record("image", image_id=f"img-{i}", name=f"name-{i}", size=i)
        journal.record("target", image_id=f"img-{i}", region="KR2", action="copy", state="done", bytes=i)


def test_state_apply_merges_target_records() -> None:
    """Target records merge field by field; created/deleted ids accumulate; runs open and close."""
    state = JournalState("job")
    state.apply({"seq": 1, "at": 1.0, "kind": "run_started", "run": "r1", "pid": 7})
    state.apply({"seq": 2, "at": 2.0, "kind": "target", "image_id": "i", "region": "KR2", "action": "copy"})
    state.apply({"seq": 3, "at": 3.0, "kind": "target", "image_id": "i", "region": "KR2", "state": "uploading",
                 "target_id": "t1", "created": "t1"})  # fmt: skip
    state.apply({"seq": 4, "at": 4.0, "kind": "target", "image_id": "i", "region": "KR2", "state": "done"})
    state.apply({"seq": 5, "at": 5.0, "kind": "run_finished", "run": "r1", "outcome": "ok", "exit_code": 0})
    state.apply({"seq": 6, "at": 6.0, "kind": "from-the-future", "x": 1})
    target = state.target("i", "KR2")
    assert target is not None
    assert (target.action, target.state, target.target_id, target.created) == ("copy", "done", "t1", ["t1"])
    assert state.runs[0].outcome == "ok"
    assert state.seq == 6


def test_round_trip_through_disk(tmp_path: Path) -> None:
    """Records written by one Journal are all there when the next one opens it."""
    journal = Journal.open(tmp_path, "job")
    fill(journal, 50)
    journal.close()
    again = Journal.open(tmp_path, "job")
    assert len(again.state.images) == 50
    assert again.state.target("img-49", "KR2").bytes == 49  # type: ignore[union-attr]
    again.close()


def test_torn_tail_is_ignored_and_cut(tmp_path: Path) -> None:
    """A half-written last line (no newline) is dropped on open; everything before it survives."""
    journal = Journal.open(tmp_path, "job")
    fill(journal, 3)
    os.close(journal._fd)  # simulate a crash: no snapshot, no close
    with open(tmp_path / LOG, "ab") as fh:
        fh.write(b'{"seq": 99, "kind": "image", "image_id": "torn", "na')
    reopened = Journal.open(tmp_path, "job")
    assert "torn" not in reopened.state.images
    assert len(reopened.state.images) == 3
    assert (tmp_path / LOG).read_bytes().endswith(b"\n")
    reopened.record("image", image_id="after")
    reopened.close()
    assert "after" in Journal.read(tmp_path, "job").images


def test_corruption_in_the_middle_is_a_clear_error(tmp_path: Path) -> None:
    """A damaged line before the last one refuses to open (state would be lost) and names the line."""
    journal = Journal.open(tmp_path, "job")
    fill(journal, 3)
    os.close(journal._fd)
    lines = (tmp_path / LOG).read_bytes().split(b"\n")
    lines[2] = b"garbage{{{"
    (tmp_path / LOG).write_bytes(b"\n".join(lines))
    before = (tmp_path / LOG).read_bytes()
    with pytest.raises(JournalCorruptError, match="line 3 of 6"):
        Journal.open(tmp_path, "job")
    assert (tmp_path / LOG).read_bytes() == before  # nothing was changed


def test_a_checksum_letter_changed_in_case_is_damage(tmp_path: Path) -> None:
    """The seal is written in lower-case hex; a byte of it that became its upper-case twin (which int(x, 16) reads
    as the same number) is damage like any other (found by test_fuzz; the snapshot's seal is checked by the same
    ``_unsealed``)."""
    journal = Journal.open(tmp_path, "job")
    fill(journal, 20)
    os.close(journal._fd)  # crash: no snapshot
    lines = (tmp_path / LOG).read_bytes().split(b"\n")
    number, line = next((i, line) for i, line in enumerate(lines[:-2]) if any(c in b"abcdef" for c in line[-10:-2]))
    at = next(i for i in range(len(line) - 10, len(line) - 2) if line[i] in b"abcdef")
    lines[number] = line[:at] + line[at : at + 1].upper() + line[at + 1 :]
    (tmp_path / LOG).write_bytes(b"\n".join(lines))
    with pytest.raises(JournalCorruptError, match=f"damaged at line {number + 1} of"):
        Journal.read(tmp_path, "job")


def test_damaged_snapshot_is_a_clear_error(tmp_path: Path) -> None:
    """A damaged snapshot gives JournalCorruptError, not a traceback."""
    (tmp_path / SNAPSHOT).write_text("{not json")
    with pytest.raises(JournalCorruptError, match="snapshot"):
        Journal.open(tmp_path, "job")


def test_snapshot_cuts_the_log_and_keeps_state(tmp_path: Path) -> None:
    """After a snapshot the log is empty and the state comes back from the snapshot."""
    journal = Journal.open(tmp_path, "job")
    fill(journal, 10)
    journal.snapshot()
    assert (tmp_path / LOG).stat().st_size == 0
    journal.record("image", image_id="later")
    os.close(journal._fd)
    state = Journal.read(tmp_path, "job")
    assert len(state.images) == 11
    assert state.seq == 21


def test_a_runs_reason_and_plan_survive_the_snapshot(tmp_path: Path) -> None:
    """A fatal run's error and whether a run reached its plan are kept through a snapshot (status and report read
    them long after the log was cut)."""
    journal = Journal.open(tmp_path, "job")
    journal.record("run_started", run="r1", pid=1)
    journal.record("planned", run="r1", images=3)
    journal.record("run_finished", run="r1", outcome="ok", exit_code=0)
    journal.record("run_started", run="r2", pid=2)
    journal.record("run_finished", run="r2", outcome="fatal", exit_code=2, error="region 'JP2' not found")
    journal.snapshot()
    assert (tmp_path / LOG).stat().st_size == 0
    journal.close()
    runs = Journal.read(tmp_path, "job").runs
    assert [(r.run_id, r.planned, r.error) for r in runs] == [
        ("r1", True, None),
        ("r2", False, "region 'JP2' not found"),
    ]


def test_snapshot_cadence_keeps_cost_per_record_flat(tmp_path: Path) -> None:
    """Snapshots are taken when the log exceeds twice the state, so the log stays bounded."""
    journal = Journal.open(tmp_path, "job")
    for i in range(12_000):
        journal.record("target", image_id=f"i{i % 100}", region="KR2", bytes=i)
    lines = (tmp_path / LOG).read_bytes().count(b"\n")
    assert lines <= 5001
    assert journal.records == 12_000
    journal.close()
    assert Journal.read(tmp_path, "job").target("i99", "KR2").bytes == 11_999  # type: ignore[union-attr]


def test_a_runs_end_snapshots_a_log_that_holds_a_share_of_the_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close takes a snapshot when the log holds more records than 1/CLOSING_SHARE of the state's entries (a
    copying run's records are then not replayed by every later open and status), and none when the run wrote
    little (an idle rerun); the state read back is the same either way."""
    import pipeline.state.journal as journal_module

    monkeypatch.setattr(journal_module, "MIN_SNAPSHOT_RECORDS", 10)
    journal = Journal.open(tmp_path, "job")
    for i in range(400):  # 400 images + 400 targets = 800 entries: no snapshot is due while recording (2 x 800)
        journal.record("target", image_id=f"i{i}", region="KR2", bytes=i)
    journal.close()
    assert (tmp_path / LOG).read_bytes() == b""  # 400 records > 800 / 8: the close took a snapshot
    assert load_snapshot(tmp_path / SNAPSHOT, "job").seq == 400
    journal = Journal.open(tmp_path, "job")
    for i in range(50):  # 50 records < 800 / 8: left in the log
        journal.record("target", image_id=f"i{i}", region="KR2", bytes=1000 + i)
    journal.close()
    assert (tmp_path / LOG).read_bytes().count(b"\n") == 50
    assert load_snapshot(tmp_path / SNAPSHOT, "job").seq == 400
    state = Journal.read(tmp_path, "job")
    assert (state.seq, state.target("i49", "KR2").bytes, state.target("i399", "KR2").bytes) == (450, 1049, 399)  # type: ignore[union-attr]


def test_files_are_private(tmp_path: Path) -> None:
    """The journal directory is 0700 and its files 0600."""
    directory = tmp_path / "state" / "job"
    journal = Journal.open(directory, "job")
    fill(journal, 1)
    journal.close()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for name in (LOG, SNAPSHOT):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600


def test_journal_of_another_job_is_refused(tmp_path: Path) -> None:
    """Pointing two jobs at one journal_dir is an error, not a silent mix."""
    journal = Journal.open(tmp_path, "one")
    journal.close()
    with pytest.raises(JournalError, match="belongs to job 'one'"):
        Journal.open(tmp_path, "two")


def test_unwritable_journal_is_a_fatal_journal_error(tmp_path: Path) -> None:
    """A write failure (here: the fd closed under it) raises JournalError with a clear message."""
    journal = Journal.open(tmp_path, "job")
    os.close(journal._fd)
    with pytest.raises(JournalError, match="cannot write the journal"):
        journal.record("image", image_id="x")
    assert JournalError.fatal


def test_lock_excludes_a_second_holder_and_names_the_first(tmp_path: Path) -> None:
    """A second lock on the same job fails with the holder's PID and start time (exit 3)."""
    with JobLock(tmp_path, "job").held():
        with pytest.raises(LockHeldError, match=f"PID {os.getpid()}") as info:
            JobLock(tmp_path, "job").acquire()
        assert info.value.exit_code == 3
        assert info.value.started
    with JobLock(tmp_path, "job").held():
        pass  # released, so it can be taken again


def test_lock_of_a_dead_holder_is_taken_over(tmp_path: Path) -> None:
    """A process that held the lock and died (kill -9) leaves nothing that blocks the next run."""
    code = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        from pipeline.state.lock import JobLock
        JobLock(Path({str(tmp_path)!r}), "job").acquire()
        print("locked", flush=True)
        os.kill(os.getpid(), 9)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False)
    assert proc.stdout.strip() == "locked"
    assert proc.returncode == -9
    holder = json.loads((tmp_path / "lock").read_text())
    assert holder["pid"] != os.getpid()  # the dead holder's record is still there...
    with JobLock(tmp_path, "job").held():  # ...and the lock is taken over anyway
        pass


def _sealed_line(doc: dict) -> bytes:  # type: ignore[type-arg]
    """One journal line as any imgmig of this format writes it: compact JSON whose last member is the CRC-32 of
    the JSON before it (the on-disk format the journal module documents)."""
    body = json.dumps(doc, separators=(",", ":")).encode()
    return body[:-1] + b',"crc":"%08x"}' % zlib.crc32(body) + b"\n"


def _newer_journal(directory: Path, *, fmt: int = 1) -> None:
    """A journal as a newer imgmig of the same format would leave it: fields this version does not know at every
    level of the snapshot and in records, an outcome it does not know ("vanished"), and a record kind it does not
    know ("quota")."""
    directory.mkdir(mode=0o700, exist_ok=True)
    target = {"region": "KR2", "action": "copy", "state": "vanished", "target_id": "t-1", "bytes": 5, "attempts": 1,
              "error": "the source was deleted mid-run", "updated_at": 10.0, "created": ["t-1"], "deleted": ["t-1"],
              "quarantined_at": 11.0}  # fmt: skip
    image = {"image_id": "img", "name": "gold", "size": 5, "checksum": "c", "status": "active", "skipped": None,
             "targets": {"KR2": target}, "kernel_ref": "k-1"}  # fmt: skip
    snapshot = {"format": fmt, "job": "job", "seq": 2, "images": {"img": image},
                "runs": [{"run_id": "r1", "pid": 7, "started_at": 1.0, "finished_at": 12.0, "outcome": "failed",
                          "exit_code": 1, "summary": {"vanished": 1}, "host": "node-3"}],
                "open_sources": {}, "schemas": {}, "selected": 1, "retired": ["old-1"]}  # fmt: skip
    (directory / SNAPSHOT).write_bytes(_sealed_line(snapshot))
    records = [
        {"seq": 3, "at": 20.0, "kind": "run_started", "run": "r2", "pid": 8, "host": "node-4"},
        {"seq": 4, "at": 21.0, "kind": "image", "image_id": "img", "name": "gold", "size": 5, "checksum": "c",
         "status": "active", "plan": {"JP1": {"action": "copy", "reason": "", "state": "planned", "why": "new"}},
         "format_detected": "raw"},
        {"seq": 5, "at": 22.0, "kind": "quota", "region": "JP1", "limit": 10},
        {"seq": 6, "at": 23.0, "kind": "target", "image_id": "img", "region": "JP1", "state": "refused_format",
         "error": "qcow2 with a backing file", "inspector": {"format": "qcow2"}},
        {"seq": 7, "at": 24.0, "kind": "run_finished", "run": "r2", "outcome": "failed", "exit_code": 1,
         "summary": {"refused_format": 1}, "peak_rss": 123},
    ]  # fmt: skip
    (directory / LOG).write_bytes(b"".join(_sealed_line(r) for r in records))


def test_a_newer_journal_of_the_same_format_loads(tmp_path: Path) -> None:
    """A snapshot and records written by a newer imgmig of the same format load, read-only and for a run: unknown
    fields are ignored, unknown outcomes are kept as they are (and shown as such by status and the HTML report),
    unknown record kinds are ignored. Writing on top of it and reading it back keeps them."""
    from pipeline.config import parse_job
    from pipeline.run.htmlreport import build_report
    from pipeline.run.status import render_status, status_view

    _newer_journal(tmp_path / "j")
    state = Journal.read(tmp_path / "j", "job")
    assert state.target("img", "KR2").state == "vanished"  # type: ignore[union-attr]
    assert state.target("img", "JP1").state == "refused_format"  # type: ignore[union-attr]
    assert [(r.run_id, r.outcome) for r in state.runs] == [("r1", "failed"), ("r2", "failed")]
    journal = Journal.open(tmp_path / "j", "job")
    journal.record("target", image_id="img", region="KR2", note="more")
    journal.snapshot()
    journal.close()
    again = Journal.read(tmp_path / "j", "job")
    assert again.target("img", "KR2").state == "vanished"  # type: ignore[union-attr]
    assert again.seq == 8

    auth = {"main": {"identity_url": "http://127.0.0.1:9/v2.0", "tenant_id": "t", "username": "u",
                     "password_env": "PW"}}  # fmt: skip
    spec = parse_job({"name": "job", "auth": auth, "source": {"auth": "main", "region": "KR1"},
                      "targets": [{"auth": "main", "region": "KR2"}, {"auth": "main", "region": "JP1"}],
                      "run": {"journal_dir": str(tmp_path / "j")}}, "test", {"PW": "x"})  # fmt: skip
    view = status_view(spec)
    assert view["counts"] == {"vanished": 1, "refused_format": 1}
    assert "vanished" in render_status(view)
    page = build_report(tmp_path / "j", "job", "r2")
    assert "refused format" in page  # its own card, not "unfinished"


def test_a_journal_of_a_newer_format_is_refused_not_called_damaged(tmp_path: Path) -> None:
    """A snapshot whose format is newer than this imgmig reads is refused with a JournalError that says so (not a
    JournalCorruptError, which would tell the operator to move the journal aside); nothing is changed."""
    _newer_journal(tmp_path / "j", fmt=2)
    before = {p.name: p.read_bytes() for p in (tmp_path / "j").iterdir()}
    with pytest.raises(JournalError, match="format 2, written by a newer imgmig") as refused:
        Journal.open(tmp_path / "j", "job")
    assert not isinstance(refused.value, JournalCorruptError)
    assert {p.name: p.read_bytes() for p in (tmp_path / "j").iterdir()} == before


MD5, SHA = "0" * 31 + "a", "f" * 127 + "e"
EVIDENCE = {"size": 6, "computed": {"md5": MD5, "sha512": SHA},
            "reported": {"status": "active", "size": 6, "checksum": MD5, "os_hash_algo": "sha512",
                         "os_hash_value": SHA}}  # fmt: skip


def _stored(directory: Path) -> str:
    return (directory / SNAPSHOT).read_text() + ((directory / LOG).read_text() if (directory / LOG).exists() else "")


def test_evidence_is_stored_once_and_read_whole(tmp_path: Path) -> None:
    """A digest the target reported that equals the one computed in flight is written once (the report names it:
    "=sha512"), in the log record and in the snapshot; the state, status and verify see the evidence whole, and a
    reported digest that differs is kept as it is."""
    from pipeline.state.records import compact_evidence

    journal = Journal.open(tmp_path, "job")
    journal.record("target", image_id="i", region="KR2", state="done", evidence=compact_evidence(EVIDENCE))
    odd = {**EVIDENCE, "reported": {**EVIDENCE["reported"], "checksum": "1" * 32}}
    journal.record("target", image_id="i", region="JP1", state="failed", evidence=compact_evidence(odd))
    assert _stored(tmp_path).count(SHA) == 2  # once per target: computed only
    assert journal.state.target("i", "KR2").evidence == EVIDENCE  # type: ignore[union-attr]
    journal.snapshot()
    journal.close()
    assert _stored(tmp_path).count(SHA) == 2
    assert '"=sha512"' in _stored(tmp_path)
    assert "1" * 32 in _stored(tmp_path)
    state = Journal.read(tmp_path, "job")
    assert state.target("i", "KR2").evidence == EVIDENCE  # type: ignore[union-attr]
    assert state.target("i", "JP1").evidence == odd  # type: ignore[union-attr]


def test_a_journal_of_the_previous_layout_loads_and_is_converted_on_its_next_snapshot(tmp_path: Path) -> None:
    """A snapshot as the previous version wrote it (every field, defaults too, the region inside each target, the
    evidence twice) loads as it was; the next snapshot writes it compactly, and it reads back the same."""
    entry = {"region": "KR2", "action": "copy", "state": "done", "target_id": "t1", "bytes": 6, "attempts": 1,
             "error": None, "evidence": EVIDENCE, "source_checksum": MD5, "metadata": "os_type", "problems": [],
             "pending_members": [], "reason": "", "updated_at": 5.0, "created": ["t1"], "deleted": [],
             "creating": None, "phases": {"upload": 4.0}}  # fmt: skip
    doc = {"format": 1, "job": "job", "seq": 3, "selected": 1, "open_sources": {}, "schemas": {},
           "runs": [{"run_id": "r1", "pid": 1, "started_at": 1.0, "finished_at": 2.0, "outcome": "ok",
                     "exit_code": 0, "summary": {}, "conditions": {}, "error": None, "planned": True}],
           "images": {"i": {"image_id": "i", "name": "n", "size": 6, "checksum": MD5, "status": "active",
                            "skipped": None, "targets": {"KR2": entry}}}}  # fmt: skip
    body = json.dumps(doc, separators=(",", ":")).encode()
    (tmp_path / SNAPSHOT).write_bytes(body[:-1] + b',"crc":"%08x"}' % zlib.crc32(body))
    before = Journal.read(tmp_path, "job")
    old_size = (tmp_path / SNAPSHOT).stat().st_size
    journal = Journal.open(tmp_path, "job")
    journal.snapshot()
    journal.close()
    after = Journal.read(tmp_path, "job")
    assert after == before
    assert after.target("i", "KR2").evidence == EVIDENCE  # type: ignore[union-attr]
    assert (tmp_path / SNAPSHOT).stat().st_size < old_size - 150
    assert _stored(tmp_path).count(SHA) == 1


def test_a_snapshot_while_recording_is_written_in_a_thread_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a small snapshot threshold, records keep coming while snapshots are written behind them (the log is
    renamed to journal.prev.jsonl and a new one opened): every record is in the state read back, the previous log
    is gone once its snapshot is written, and the current log stays bounded."""
    import pipeline.state.journal as journal_module
    from pipeline.state.journal import PREV

    monkeypatch.setattr(journal_module, "MIN_SNAPSHOT_RECORDS", 50)
    journal = Journal.open(tmp_path, "job")
    for i in range(2_000):
        journal.record("target", image_id=f"i{i % 20}", region="KR2", bytes=i)
    assert journal.records == 2_000
    journal._wait_writer()  # the snapshot being written, if any, is on disk: records() started them all
    assert load_snapshot(tmp_path / SNAPSHOT, "job").seq > 2 * 40  # 20 images + 20 targets: due past 80 records
    journal.close()
    assert not (tmp_path / PREV).exists()
    # a snapshot is due past max(MIN_SNAPSHOT_RECORDS, 2 x entries) records; close takes one if it is due
    assert (tmp_path / LOG).read_bytes().count(b"\n") <= 2 * 40
    state = Journal.read(tmp_path, "job")
    assert state.seq == 2_000
    assert state.target("i19", "KR2").bytes == 1_999  # type: ignore[union-attr]


@pytest.mark.parametrize("point", ["snapshot_encoded", "snapshot_written"])
def test_kill_9_around_a_background_snapshot_loses_nothing(tmp_path: Path, point: str) -> None:
    """kill -9 once the state was encoded (the log already renamed, the snapshot not yet written) or after the
    snapshot was written (before the previous log is removed): the next open has every record (the old snapshot
    and both logs), folds them into one snapshot, and removes the previous log."""
    from pipeline.state.journal import PREV

    script = textwrap.dedent(f"""
        import pipeline.state.journal as j
        j.MIN_SNAPSHOT_RECORDS = 50
        journal = j.Journal.open(j.Path({str(tmp_path)!r}), "job")
        for i in range(400):
            journal.record("target", image_id=f"i{{i % 20}}", region="KR2", bytes=i)
            journal._wait_writer()  # each due snapshot is written before the next record: the count is exact
        journal.close()
    """)
    env = {**os.environ, "IMGMIG_FAILPOINTS": f"{point}@2"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == -9, result.stderr
    state = Journal.read(tmp_path, "job")
    seq = state.seq
    assert seq >= 100  # two snapshots were due: the crash came at the second
    # record k (seq k) set image i{(k-1) % 20} to bytes k-1: each image holds the last value written for it
    for i in range(20):
        last = max(b for b in range(seq) if b % 20 == i)
        assert state.target(f"i{i}", "KR2").bytes == last  # type: ignore[union-attr]
    journal = Journal.open(tmp_path, "job")
    assert journal.state.seq == seq
    journal.close()
    assert not (tmp_path / PREV).exists()
    assert Journal.read(tmp_path, "job").seq == seq


def test_a_background_snapshot_holds_the_state_at_its_seq(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A snapshot is encoded one image per record while the records go on changing the images: the snapshot on disk
    is exactly the state of the records up to its seq (an image a record changed before its turn was encoded
    first), and images that appeared after that seq are not in it."""
    import pipeline.state.journal as journal_module

    monkeypatch.setattr(journal_module, "MIN_SNAPSHOT_RECORDS", 1)
    monkeypatch.setattr(journal_module, "SNAPSHOT_SLICE", 1)
    journal = Journal.open(tmp_path, "job")
    for i in range(121):  # 30 images x (1 + 1 target) = 60 entries: the 121st record makes a snapshot due
        journal.record("target", image_id=f"i{i % 30}", region="KR2", bytes=i, state="uploading")
    snap = journal._snap
    assert snap is not None
    assert (snap.seq, len(snap.left)) == (121, 30)
    for i in range(121, 151):  # each record changes an image not encoded yet (encoded first), or a new image
        journal.record("target", image_id=f"i{(i * 7) % 40}", region="KR2", bytes=i, state="done")
    assert not snap.left
    journal._wait_writer()
    on_disk = load_snapshot(tmp_path / SNAPSHOT, "job")
    later = read_log(tmp_path / LOG, 0)[0]
    journal.close()
    expected = JournalState("job")
    for i in range(121):
        expected.apply({"seq": i + 1, "kind": "target", "image_id": f"i{i % 30}", "region": "KR2", "bytes": i,
                        "state": "uploading"})  # fmt: skip

    def view(state: JournalState) -> dict[str, tuple[int, str]]:  # all the records set (not their times)
        return {i: (e.targets["KR2"].bytes, e.targets["KR2"].state) for i, e in state.images.items()}

    assert on_disk.seq == 121
    assert view(on_disk) == view(expected)
    assert len(view(on_disk)) == 30
    assert [r["seq"] for r in later] == list(range(122, 152))  # the later records, in the new log only
    assert Journal.read(tmp_path, "job").target("i35", "KR2").bytes == 125  # type: ignore[union-attr]


def test_a_journal_that_breaks_during_a_background_snapshot_closes_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record fails (disk full) while a snapshot is still being encoded: close gives the snapshot up instead of
    waiting for it, no partial snapshot is left, and the next open has every record written before the failure."""
    import pipeline.state.journal as journal_module
    from pipeline.state.journal import PREV

    monkeypatch.setattr(journal_module, "MIN_SNAPSHOT_RECORDS", 1)
    monkeypatch.setattr(journal_module, "SNAPSHOT_SLICE", 0)
    journal = Journal.open(tmp_path, "job")
    for i in range(121):
        journal.record("target", image_id=f"i{i % 30}", region="KR2", bytes=i)
    assert journal._snap is not None
    assert journal._snap.left  # nothing encoded but what the records changed
    import pipeline.state.failpoints as failpoints

    monkeypatch.setattr(failpoints, "_POINTS", {"journal_enospc": (1, "kill")})  # the next record: disk full
    monkeypatch.setattr(failpoints, "_HITS", {})
    with pytest.raises(JournalError):
        journal.record("target", image_id="i0", region="KR2", bytes=999)
    journal.close()  # returns: the writer was told to give up
    assert (tmp_path / PREV).exists()
    assert not list(tmp_path.glob(f".{SNAPSHOT}.*.tmp"))
    monkeypatch.setattr(failpoints, "_POINTS", {})
    state = Journal.read(tmp_path, "job")
    assert state.seq == 121
    assert state.target("i0", "KR2").bytes == 120  # type: ignore[union-attr]
    Journal.open(tmp_path, "job").close()
    assert not (tmp_path / PREV).exists()


def test_a_snapshot_is_read_a_line_at_a_time_and_any_damaged_byte_is_caught(tmp_path: Path) -> None:
    """A snapshot holds one image per line (the rest on the first line). Every single damaged byte of it, in any
    line, is refused with JournalCorruptError (the CRC is checked before anything is believed, the format
    included); the intact file loads to the same state."""
    journal = Journal.open(tmp_path, "job")
    fill(journal, 3)
    journal.snapshot()
    journal.close()
    good = (tmp_path / SNAPSHOT).read_bytes()
    assert good.count(b"\n") == 3 + 1  # the first line's end, then one before each image after the first, and the end
    assert good.split(b"\n")[1].startswith(b'"')  # an image's line: its id, then its entry
    expected = Journal.read(tmp_path, "job")
    for at in range(len(good)):
        if good[at : at + 1] == b"\n":
            continue  # a line break made a space is no damage to the JSON, and the CRC covers it anyway
        damaged = bytearray(good)
        damaged[at] ^= 0x04
        (tmp_path / SNAPSHOT).write_bytes(bytes(damaged))
        with pytest.raises(JournalCorruptError):
            load_snapshot(tmp_path / SNAPSHOT, "job")
    (tmp_path / SNAPSHOT).write_bytes(good)
    assert Journal.read(tmp_path, "job") == expected
