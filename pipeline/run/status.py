"""``imgmig status``: the job's journal as a stable JSON view and as a table. No network, no secrets."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from pipeline.config import JobSpec
from pipeline.state.journal import Journal
from pipeline.state.lock import lock_holder
from pipeline.units import format_size, format_table

__all__ = ["STATUS_FORMAT", "render_status", "status_view"]

#: Bumped only for incompatible changes to the JSON view; new keys may appear at any time.
STATUS_FORMAT = 1


def _running(spec: JobSpec) -> dict[str, Any] | None:
    """The lock holder if a run is in progress right now, else None."""
    return lock_holder(spec.run.journal_dir)


def _iso(t: float | None) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t else None


def status_view(spec: JobSpec) -> dict[str, Any]:
    """The stable machine-readable view of a job's journal (``imgmig status --json``)."""
    state = Journal.read(spec.run.journal_dir, spec.name)
    counts: dict[str, int] = {}
    images = []
    for entry in state.images.values():
        targets = {}
        for label, target in entry.targets.items():
            doc = asdict(target)
            doc.pop("region")
            doc["updated_at"] = _iso(target.updated_at)
            targets[label] = doc
            counts[target.state] = counts.get(target.state, 0) + 1
        images.append({"image_id": entry.image_id, "name": entry.name, "size": entry.size,
                       "checksum": entry.checksum, "status": entry.status, "skipped": entry.skipped,
                       "targets": targets})  # fmt: skip
    runs = [{**asdict(r), "started_at": _iso(r.started_at), "finished_at": _iso(r.finished_at)} for r in state.runs]
    return {
        "format": STATUS_FORMAT,
        "job": spec.name,
        "journal_dir": str(spec.run.journal_dir),
        "seq": state.seq,
        "running": _running(spec),
        "last_run": runs[-1] if runs else None,
        "runs": runs,
        "counts": counts,
        "images": images,
        # sources whose nhncloud_allow_download a run switched on and did not restore (the next run does)
        "sources_open": [{"image_id": k, "original": v} for k, v in state.open_sources.items()],
    }


def render_status(view: dict[str, Any]) -> str:
    """The status as a human table."""
    lines = [f"job {view['job']} (journal {view['journal_dir']})"]
    running = view["running"]
    if running is not None:
        lines.append(f"  RUNNING now: PID {running.get('pid')} since {running.get('started')}")
    last = view["last_run"]
    if last is None:
        lines.append("  no run yet")
        return "\n".join(lines)
    lines.append(f"  last run {last['run_id']} started {last['started_at']}: {last['outcome'] or 'unfinished'}"
                 + (f" (exit {last['exit_code']})" if last["exit_code"] is not None else ""))  # fmt: skip
    lines.append("  " + ", ".join(f"{k} {v}" for k, v in sorted(view["counts"].items())))
    lines += [f"  SOURCE LEFT OPEN {src['image_id']}: nhncloud_allow_download switched on by a run that did not "
              f"finish; the next run restores {src['original']!r}" for src in view["sources_open"]]  # fmt: skip
    rows = [("IMAGE", "NAME", "TARGET", "STATE", "ACTION", "BYTES", "TARGET IMAGE", "NOTE")]
    for image in view["images"]:
        for label, t in image["targets"].items():
            note = t.get("error") or image.get("skipped") or ("; ".join(t.get("problems") or []))
            rows.append((image["image_id"], (image["name"] or "")[:28], label, t["state"], t.get("action") or "",
                         format_size(t.get("bytes") or 0), t.get("target_id") or "", (note or "")[:80]))  # fmt: skip
    lines.append(format_table(rows))
    return "\n".join(lines)
