"""One self-contained HTML page for one run of a job, built read-only from its journal (``imgmig report --html``).

The page holds inline CSS and inline SVG only: no script, no font, no image, no URL to fetch. Everything the
user or a cloud supplied (names, errors, reasons) is HTML-escaped. Times come from the ``at`` of the records
still in ``journal.jsonl``; records already folded into ``snapshot.json`` keep only their last ``updated_at``,
and the page says when a run is shown partly from the snapshot.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pipeline.errors import UsageError
from pipeline.outcomes import is_final
from pipeline.run.htmlrender import MAX_BARS, Bar, RunView, render
from pipeline.run.status import shard_dirs
from pipeline.state.journal import LOG, SNAPSHOT, Journal
from pipeline.state.records import JournalState, RunEntry, TargetEntry, fold_target

__all__ = ["MAX_BARS", "build_report"]


def build_report(journal_dir: Path, job: str, run_id: str | None = None) -> str:
    """The HTML page for ``run_id`` (default: the last run) of ``job``, from the journal in ``journal_dir``."""
    if not (journal_dir / SNAPSHOT).exists() and not (journal_dir / LOG).exists():
        shards = [str(s) for s in sorted(shard_dirs(journal_dir), key=lambda s: (s.count, s.index))]
        if shards:
            raise UsageError(f"job {job!r} runs in shards, each with its own journal under {journal_dir} "
                             f"(shards {', '.join(shards)}): name one with --shard I/K")  # fmt: skip
        raise UsageError(f"no journal in {journal_dir}: job {job!r} has not run yet")
    state, records = Journal.read_with_log(journal_dir, job)  # no lock, no repair, nothing written
    if not state.runs:
        raise UsageError(f"the journal of job {job!r} records no run yet")
    # by default the last run that got as far as its plan: a run that stopped at a wrong region has nothing to draw
    planned = [r for r in state.runs if r.planned] or state.runs
    chosen = [r for r in state.runs if r.run_id == run_id] if run_id else planned[-1:]
    if not chosen:
        known = ", ".join(r.run_id for r in state.runs[-10:])
        raise UsageError(f"job {job!r} has no run {run_id!r}; its last runs: {known}")
    run = _collect(state, records, chosen[-1])
    return render(job, state, run)


def _window(records: list[dict[str, Any]], run: RunEntry) -> tuple[list[dict[str, Any]], bool]:
    """The log records of ``run``, and whether part of the run was already folded into the snapshot."""
    begin = next((i for i, r in enumerate(records) if r["kind"] == "run_started" and r.get("run") == run.run_id), None)
    if begin is None:
        ends_here = any(r["kind"] == "run_finished" and r.get("run") == run.run_id for r in records)
        if run.finished_at is not None and not ends_here:
            return [], True  # the whole run is in the snapshot
        begin = -1
    end = len(records)
    for i in range(begin + 1, len(records)):
        kind = records[i]["kind"]
        if kind == "run_started" or (kind == "run_finished" and records[i].get("run") == run.run_id):
            end = i + (kind == "run_finished")
            break
    return records[max(begin, 0) : end], begin < 0


def _fold(run: RunView, image_id: str, region: str, rec: dict[str, Any], at: float) -> Bar:
    """Fold one record into the bar of its image x target (``fold_target``, as the journal state does), noting
    when its create began and ended and when its final record came."""
    bar = run.bars.get((image_id, region))
    if bar is None:
        bar = run.bars[image_id, region] = Bar(image_id, TargetEntry(region), start=at)
    fold_target(bar.target, rec, at)
    bar.creating = bar.creating or (at if rec.get("creating") else None)  # the first create counts
    bar.created = bar.created or (at if rec.get("created") else None)
    if is_final(rec.get("state")):
        bar.end = at
    return bar


def _collect(state: JournalState, records: list[dict[str, Any]], entry: RunEntry) -> RunView:
    window, partial = _window(records, entry)
    run = RunView(entry, partial=partial)
    for rec in window:
        kind, at = rec["kind"], float(rec.get("at", 0.0))
        if kind == "image":
            image_id = rec["image_id"]
            if "name" in rec:  # an image record may hold one field only (its inspection verdict)
                run.names[image_id] = rec.get("name") or ""
            if rec.get("skipped"):
                run.skipped.append((image_id, str(rec["skipped"])))
            for region, planned in (rec.get("plan") or {}).items():
                bar = _fold(run, image_id, region, planned, at)
                # the one final state a plan record holds: a target unavailable for the whole run
                bar.unavailable = planned.get("state") == "failed"
        elif kind == "target":
            _fold(run, rec["image_id"], rec["region"], rec, at)
            run.deleted += bool(rec.get("deleted"))
        elif kind == "source":
            run.sources[str(rec.get("download"))] += 1
    last = float(window[-1]["at"]) if window else entry.started_at
    run.t0, run.t1 = entry.started_at, entry.finished_at or last
    run.log_from = (float(window[0]["at"]) if window else run.t1) if partial else run.t0
    for image_id, image in state.images.items():
        run.names.setdefault(image_id, image.name or "")
        for region, target in image.targets.items():
            seen = run.bars.get((image_id, region))
            if seen is not None:  # the plan record may be in the snapshot
                seen.target.action = seen.target.action or target.action
            elif partial and is_final(target.state) and run.t0 <= target.updated_at <= run.t1 + 1e-3:
                run.bars[image_id, region] = Bar(image_id, dataclasses.replace(target), end=target.updated_at,
                                                 folded=True)  # fmt: skip
                run.folded += 1
    return run
