"""The HTML run report: figures checked against the journal of a real run on the emulator, self-containment,
escaping, run selection, a partly folded journal, and a 10,000-image run drawn into a bounded page."""

from __future__ import annotations

import html
import json
import re
import uuid
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest

from pipeline.emulator import Emulator, StatusFault
from pipeline.errors import UsageError
from pipeline.run.htmlrender import BUCKETS, MAX_ROWS, Bar, RunView, _throughput
from pipeline.run.htmlreport import MAX_BARS, build_report
from pipeline.state.journal import Journal
from pipeline.state.records import JournalState, RunEntry, TargetEntry

from .jobsetup import TARGETS, add, job, run

MiB = 1 << 20
TRICKY = 'tricky <b>&"name"</b>'
VOID = {"meta", "br", "hr", "img", "input", "link", "col", "wbr", "area", "base", "source", "track", "embed"}


class _Checker(HTMLParser):
    """Collects tag-nesting errors: every element closed, in order (void elements excepted)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def assert_well_formed(page: str) -> None:
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert checker.errors == []
    assert checker.stack == []


def assert_self_contained(page: str) -> None:
    assert "http://" not in page
    assert "https://" not in page
    assert "<script src" not in page.lower()
    assert "<link" not in page.lower()
    assert not re.search(r"\b(src|href)\s*=", page)


def card(page: str, label: str) -> int:
    """The number on a totals card."""
    found = re.search(rf"<b>(\d+)</b>{label}</div>", page)
    assert found is not None, label
    return int(found.group(1))


async def two_runs(emulator: Emulator, tmp_path: Path) -> tuple[Path, str, str, JournalState]:
    """Run 1: three images and a tricky name, one deactivated (skipped), one JP1 upload refused with retries 0.
    Run 2: the failed copy is made again after one refused upload (2 attempts). Returns run 1's id and error."""
    tenant = uuid.uuid4().hex
    for i in range(3):
        add(emulator, tenant, f"img-{i}", size=256 * 1024 + i)
    add(emulator, tenant, TRICKY, size=100_000)
    add(emulator, tenant, "parked-one").status = "deactivated"
    emulator.faults("JP1").statuses.append(StatusFault(503, op="upload", count=1))
    spec = job(emulator, tmp_path, tenant)
    first = await run(replace(spec, transfer=spec.transfer.model_copy(update={"retries": 0})))
    assert first.exit_code == 1
    after_first = Journal.read(spec.run.journal_dir, spec.name)
    errors = [t.error for e in after_first.images.values() for t in e.targets.values() if t.error]
    assert len(errors) == 1
    emulator.faults("JP1").statuses.append(StatusFault(503, op="upload", count=1))
    second = await run(spec)
    assert second.exit_code == 0, second.render()
    return spec.run.journal_dir, first.run_id, errors[0], Journal.read(spec.run.journal_dir, spec.name)


async def test_report_of_a_real_run_matches_the_journal(emulator: Emulator, tmp_path: Path) -> None:
    """The first run's page shows the journal's totals, bytes, escaped error and one bar per image x target."""
    journal_dir, first_id, error, state = await two_runs(emulator, tmp_path)
    page = build_report(journal_dir, "meta", first_id)
    counts = next(r for r in state.runs if r.run_id == first_id).summary
    assert counts["copied"] == 7  # 4 images x 2 targets, less the refused one
    assert counts["failed"] == 1
    assert counts["skipped"] == 2
    for key in ("copied", "metadata", "skipped", "failed", "cancelled"):
        assert card(page, key) == counts[key]
    assert card(page, "up to date") == counts["up_to_date"]
    assert page.count('<g class="bar">') == sum(len(e.targets) for e in state.images.values()) == 5 * len(TARGETS)
    # bytes: the first run copied everything but the refused JP1 copy, which run 2 made
    retried = [(i, t) for i, e in state.images.items() for r, t in e.targets.items() if r == "JP1" and t.attempts > 1]
    assert len(retried) == 1
    all_bytes = sum(t.bytes for e in state.images.values() for t in e.targets.values())  # each copy's size, once
    assert f"copied ({all_bytes - retried[0][1].bytes} bytes)" in page
    assert html.escape(TRICKY) in page
    assert TRICKY not in page
    assert "source image is deactivated: it has no data to copy" in page
    assert "HTTP 503" in error
    assert html.escape(error) in page  # the refused upload's error, in the failure tables
    assert_self_contained(page)
    assert_well_formed(page)


async def test_last_run_by_default(emulator: Emulator, tmp_path: Path) -> None:
    """Without a run id the last run is shown: its totals are its run_finished record's, its bars the steps it
    recorded (the one image it copied again, in both targets; the 4 images already in sync and recorded by run 1
    write nothing in run 2, and the page says so); its retry is marked ↻2."""
    journal_dir, first_id, _, state = await two_runs(emulator, tmp_path)
    page = build_report(journal_dir, "meta")
    last = state.runs[-1]
    assert last.run_id != first_id
    assert f"<td>{last.run_id}</td>" in page.split("<h2>")[0]  # in the header
    for key in ("copied", "metadata", "skipped", "failed", "cancelled"):
        assert card(page, key) == last.summary[key]
    assert card(page, "up to date") == last.summary["up_to_date"] == 7
    assert "↻2" in page
    assert page.count('<g class="bar">') == 1 * len(TARGETS)
    undrawn = sum(last.summary[k] for k in ("copied", "metadata", "skipped", "up_to_date")) - 1 * len(TARGETS)
    assert undrawn == 8
    assert f"{undrawn} image x target of this run were already in sync" in page
    assert_self_contained(page)
    assert_well_formed(page)


def test_unknown_run_and_missing_journal(tmp_path: Path) -> None:
    """An unknown run id or a journal directory that does not exist is a usage error naming the problem."""
    with pytest.raises(UsageError, match="has not run yet"):
        build_report(tmp_path / "none", "j")
    journal = Journal.open(tmp_path / "j", "j")
    journal.record("run_started", run="r1", pid=1)
    journal.close()
    with pytest.raises(UsageError, match=r"no run 'nope'.*r1"):
        build_report(tmp_path / "j", "j", "nope")


def synthetic(directory: Path, images: int, *, snapshot_after: int | None = None) -> None:
    """A run of ``images`` images x KR2 + JP1 written record by record; every 33rd JP1 copy fails."""
    journal = Journal.open(directory, "big")
    journal.record("run_started", run="big-run", pid=1)
    for i in range(images):
        plan = {r: {"action": "copy", "reason": "", "state": "planned"} for r in ("KR2", "JP1")}
        journal.record("image", image_id=f"src-{i}", name=f"image <{i}>", size=1000 + i, plan=plan)
    counts = {"copied": 0, "failed": 0}
    for i in range(images):
        if snapshot_after is not None and i == snapshot_after:
            journal.snapshot()
        for region in ("KR2", "JP1"):
            journal.record("target", image_id=f"src-{i}", region=region, created=f"{region}-{i}")
            if region == "JP1" and i % 33 == 0:
                journal.record("target", image_id=f"src-{i}", region=region, state="failed", bytes=10, attempts=3,
                               error=f"upload: 503 <busy> #{i % 3}")  # fmt: skip
                counts["failed"] += 1
            else:
                journal.record("target", image_id=f"src-{i}", region=region, state="done", bytes=1000 + i, attempts=1,
                               target_id=f"{region}-{i}")  # fmt: skip
                counts["copied"] += 1
    journal.record("run_finished", run="big-run", outcome="failed", exit_code=1, summary=counts)
    journal.close()


def test_ten_thousand_images_aggregate_into_a_bounded_page(tmp_path: Path) -> None:
    """10,000 images x 2 targets: an aggregated timeline, and a page whose content is counted, not timed: it does
    not grow with the images (at most one rect per time bucket and outcome, every table at most MAX_ROWS rows,
    only the MAX_ROWS listed images named) and stays under 5 MB (the bound the issue sets)."""
    synthetic(tmp_path / "big", 10_000)
    page = build_report(tmp_path / "big", "big")
    assert len(page.encode()) < 5 * 1024 * 1024
    assert f"are more than {MAX_BARS}" in page
    assert '<g class="bar">' not in page
    # 20,000 image x target drawn as buckets: per bucket one rect per outcome present (copied, failed), one line
    # for the creates in flight and one throughput line per target
    assert 0 < page.count("<rect") <= BUCKETS * 2
    assert page.count("<polyline") == 1 + len(TARGETS)
    rows = [table.count("<tr>") - 1 for table in re.findall(r"<table>.*?</table>", page, flags=re.S)]
    assert max(rows) == MAX_ROWS  # the list of the 304 failed image x target, cut at MAX_ROWS
    assert len(set(re.findall(r"src-\d+", page))) == MAX_ROWS  # no other image is named anywhere on the page
    assert card(page, "failed") == 304  # i % 33 == 0 for i < 10,000
    assert card(page, "copied") == 20_000 - 304
    assert "First 200 of 304." in page
    assert "upload: 503 &lt;busy&gt; #0" in page
    assert "image &lt;33&gt;" in page
    assert_self_contained(page)
    assert_well_formed(page)


def test_partly_folded_run_is_said_and_still_counted(tmp_path: Path) -> None:
    """A run whose first records were folded into the snapshot is shown with every image x target, and says so."""
    synthetic(tmp_path / "small", 40, snapshot_after=20)
    page = build_report(tmp_path / "small", "big")
    assert "folded into the journal snapshot: 40 image x target" in page
    assert page.count('<g class="bar">') == 80
    assert card(page, "copied") == 78
    assert card(page, "failed") == 2
    assert_well_formed(page)


async def test_phase_times_are_journalled_and_drawn(emulator: Emulator, tmp_path: Path) -> None:
    """Each final record of a copy carries when its upload, verification and metadata began, in order and
    within the step; the timeline draws those phases (verification and metadata segments, one per copy)."""
    tenant = uuid.uuid4().hex
    for i in range(2):
        add(emulator, tenant, f"phased-{i}", size=300_000 + i)
    spec = job(emulator, tmp_path, tenant)
    summary = await run(spec)
    assert summary.exit_code == 0
    finals = [json.loads(line) for line in (spec.run.journal_dir / "journal.jsonl").read_text().splitlines()]
    finals = [r for r in finals if r["kind"] == "target" and r.get("state") == "done"]
    assert len(finals) == 2 * len(TARGETS)
    starts = {r["image_id"]: r["at"] for r in finals}
    for rec in finals:
        phases = rec["phases"]
        assert phases["upload"] <= phases["verify"] <= phases["metadata"] <= rec["at"]
        assert phases["upload"] <= starts[rec["image_id"]]
    page = build_report(spec.run.journal_dir, "meta")
    assert page.count('fill="#78909c"') == len(finals)  # one verification segment per copy
    assert page.count('fill="#7e57c2"') == len(finals)  # one metadata segment per copy


def test_throughput_is_spread_over_the_upload_phase() -> None:
    """A copy of 60 MiB created at 0 s, uploading from 10 to 20 s, verified and finished at 60 s: 6 MiB/s at
    the peak (spread from create to final record it would read 1 MiB/s); a journal without phases, or a copy
    that did not end done (its last pass may have failed before verifying), still spreads from the create to
    the final record."""
    entry = RunEntry("r", 1, 1000.0)
    run = RunView(entry, t0=1000.0, t1=1060.0)
    done = TargetEntry("KR2", action="copy", state="done", bytes=60 * MiB,
                       phases={"upload": 1010.0, "verify": 1020.0, "metadata": 1021.0})  # fmt: skip
    phased = Bar("img", done, start=1000.0, creating=1000.0, created=1000.0, end=1060.0)
    page = "".join(_throughput(run, [phased]))
    assert ">6.0 MiB/s</text>" in page, re.findall(r">[^<]*/s</text>", page)
    for target in (replace(done, phases=None), replace(done, state="failed")):  # no phases; not done
        page = "".join(_throughput(run, [replace(phased, target=target)]))
        assert ">1.0 MiB/s</text>" in page, re.findall(r">[^<]*/s</text>", page)


def test_a_sharded_journal_dir_names_its_shards_in_order(tmp_path: Path) -> None:
    """No journal of its own but shard journals: the error names them by count, then index (2 before 10)."""
    for name in ("shard-10-of-16", "shard-2-of-16", "shard-0-of-1", "notes"):
        (tmp_path / name).mkdir()
    with pytest.raises(UsageError, match=r"shards 0/1, 2/16, 10/16\): name one with --shard I/K"):
        build_report(tmp_path, "j")
