"""``imgmig status``: the job's journal as a stable JSON view and as a table. No network, no secrets."""

from __future__ import annotations

import contextlib
import functools
import gc
import time
from collections.abc import Iterator
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, TextIO

from pipeline.config import JobSpec, Shard
from pipeline.errors import run_state
from pipeline.report.streamed import Lazy, gathered, json_pieces
from pipeline.state.browse import Browse
from pipeline.state.journal import LOG, SNAPSHOT
from pipeline.state.lock import lock_holder
from pipeline.state.records import TargetEntry, expanded_evidence
from pipeline.units import clip, format_size, format_table

__all__ = ["STATUS_FORMAT", "render_status", "shard_dirs", "status_view", "write_status_json"]

#: Bumped only for incompatible changes to the JSON view; new keys may appear at any time.
STATUS_FORMAT = 1


def write_status_json(view: dict[str, Any], out: TextIO) -> None:
    """``view`` as JSON on ``out``, its ``images`` written one per line as they are made (the same document as
    ``json.dumps(view)``, laid out to stream: ``report.streamed``), about 64 KiB at a time."""
    for block in gathered(json_pieces(view)):
        out.write(block)


def _iso(t: float | None) -> str | None:
    if not t:
        return None
    if type(t) is float and t > 0:  # gmtime rounds down to the second: each second's text is made once
        return _iso_second(int(t))
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@functools.lru_cache(maxsize=1024)
def _iso_second(t: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def status_view(spec: JobSpec) -> dict[str, Any]:
    """The stable machine-readable view of a job's journal (``imgmig status --json``). A job whose
    ``journal_dir`` holds shard journals (``shard-I-of-K/``) and that is not itself run as one shard is shown
    merged: every key as for one journal, summed or concatenated over the shards of the newest layout (the K
    run most recently), plus ``shards`` (one entry per index 0..K-1) and ``other_layouts``."""
    base = spec.run.journal_dir
    found = shard_dirs(base) if spec.shard is None else {}
    if not found:
        return _journal_view(spec, base)
    views = {shard: _journal_view(spec, path) for shard, path in found.items()}
    newest = max(views, key=lambda s: _last_start(views[s]))
    count = newest.count
    current = sorted((s for s in views if s.count == count), key=lambda s: s.index)
    shards = []
    for index in range(count):
        shard = Shard(index, count)
        view = views.get(shard)
        entry = {"shard": str(shard), "index": index, "count": count, "journal_dir": str(base / shard.directory),
                 "state": _shard_state(view), "running": view["running"] if view else None,
                 "last_run": view["last_run"] if view else None, "counts": view["counts"] if view else {}}  # fmt: skip
        shards.append(entry)
    counts: dict[str, int] = {}
    for shard in current:
        for key, n in views[shard]["counts"].items():
            counts[key] = counts.get(key, 0) + n
    runs = sorted(({**r, "shard": str(s)} for s in current for r in views[s]["runs"]),
                  key=lambda r: r["started_at"] or "")  # fmt: skip
    running = next(({**v["running"], "shard": str(s)} for s, v in views.items() if v["running"] is not None), None)
    older = sorted({s.count for s in views if s.count != count})
    if (base / LOG).exists() or (base / SNAPSHOT).exists():
        older.insert(0, 1)  # an unsharded journal in journal_dir itself
    return {
        "format": STATUS_FORMAT,
        "job": spec.name,
        "journal_dir": str(base),
        "seq": sum(views[s]["seq"] for s in current),
        "running": running,
        "last_run": runs[-1] if runs else None,
        "runs": runs,
        "counts": counts,
        "images": Lazy(lambda: ({**image, "shard": str(s)} for s in current for image in views[s]["images"])),
        "sources_open": [{**src, "shard": str(s)} for s in current for src in views[s]["sources_open"]],
        "shards": shards,
        # journals of other shard counts (1: unsharded runs); the newest layout is the one shown
        "other_layouts": older,
    }


def shard_dirs(base: Path) -> dict[Shard, Path]:
    """The shard journals under ``base`` (``shard-I-of-K/``), by shard."""
    try:
        children = list(base.iterdir())
    except OSError:
        return {}
    found = {Shard.from_directory(child.name): child for child in children if child.is_dir()}
    return {shard: path for shard, path in found.items() if shard is not None}


def _last_start(view: dict[str, Any]) -> str:
    return max((r["started_at"] or "" for r in view["runs"]), default="")


def _shard_state(view: dict[str, Any] | None) -> str:
    """running, never ran, or how its last run ended (``errors.run_state``): done, failed, parked (max_runtime),
    interrupted, or unfinished (no end recorded)."""
    if view is None or view["last_run"] is None:
        return "never ran"
    if view["running"] is not None:
        return "running"
    return run_state(view["last_run"]["exit_code"])


def _target_defaults() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(TargetEntry):
        if f.name != "region":
            out[f.name] = f.default_factory() if callable(f.default_factory) else f.default
    return out


#: An image x target in the view: every journal field of a target but its region (the key it is under), in the
#: entry's order, each with the value the entry takes when the snapshot form leaves the field out (its default;
#: a list default is one empty list that every view shares: a view is shown, never changed).
_TARGET_DEFAULTS = _target_defaults()


def _image_view(image_id: str, raw: dict[str, Any]) -> dict[str, Any]:
    """An image in the view, made straight from its snapshot form (``records.image_json``): what its entry
    (``records.loaded_image``) shows, without making the entry."""
    get = raw.get
    return {"image_id": image_id, "name": get("name"), "size": get("size"), "checksum": get("checksum"),
            "status": get("status"), "skipped": get("skipped"),
            "targets": {label: _target_view(doc) for label, doc in raw.get("targets", {}).items()}}  # fmt: skip


def _target_view(doc: dict[str, Any]) -> dict[str, Any]:
    """An image x target in the view, from its snapshot form: the fields it leaves out take their defaults, the
    evidence is made whole (``records.expanded_evidence``), ``updated_at`` is shown as a time."""
    view = _TARGET_DEFAULTS.copy()
    view.update(doc)
    if len(view) != len(_TARGET_DEFAULTS):  # fields not shown: the region of an older layout, a newer imgmig's
        view = {name: view[name] for name in _TARGET_DEFAULTS}
    evidence = view["evidence"]
    if evidence:
        view["evidence"] = expanded_evidence(evidence)
    at = view["updated_at"]
    view["updated_at"] = _iso_second(int(at)) if type(at) is float and at > 0 else _iso(at)  # (``_iso``)
    return view


def _journal_view(spec: JobSpec, journal_dir: Path) -> dict[str, Any]:
    """The view of one journal (the job's, or one shard's)."""
    with _uncollected():
        journal = Browse(journal_dir, spec.name)
        counts = journal.counts()
    state = journal.state

    def images() -> Iterator[dict[str, Any]]:
        with _uncollected():  # while they are made and shown
            for image_id, raw in journal.forms():
                yield _image_view(image_id, raw)

    runs = [{**asdict(r), "started_at": _iso(r.started_at), "finished_at": _iso(r.finished_at)} for r in state.runs]
    return {
        "format": STATUS_FORMAT,
        "job": spec.name,
        "journal_dir": str(journal_dir),
        "seq": state.seq,
        "running": lock_holder(journal_dir),
        "last_run": runs[-1] if runs else None,
        "runs": runs,
        "counts": counts,
        "images": Lazy(images),
        # sources whose nhncloud_allow_download a run switched on and did not restore (the next run does)
        "sources_open": [{"image_id": k, "original": v} for k, v in state.open_sources.items()],
    }


@contextlib.contextmanager
def _uncollected() -> Iterator[None]:
    """Python's cycle collector held off: reading a journal and showing it makes millions of objects and not one
    cycle (what is let go is freed at once), and the collector went through those held, again and again, for an
    eighth of the time of ``status`` at 100,000 images."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def render_status(view: dict[str, Any]) -> str:
    """The status as a human table."""
    lines = [f"job {view['job']} (journal {view['journal_dir']})"]
    for shard in view.get("shards", ()):
        last = shard["last_run"]
        when = f", last run {last['run_id']} started {last['started_at']}" if last else ""
        done = ", ".join(f"{k} {v}" for k, v in sorted(shard["counts"].items()))
        lines.append(f"  shard {shard['shard']}: {shard['state']}{when}" + (f" ({done})" if done else ""))
    if view.get("other_layouts"):
        lines.append("  older journals of other shard counts: " + ", ".join(
            "unsharded" if k == 1 else f"K={k}" for k in view["other_layouts"]))  # fmt: skip
    running = view["running"]
    if running is not None:
        where = f" (shard {running['shard']})" if running.get("shard") else ""
        lines.append(f"  RUNNING now{where}: PID {running.get('pid')} since {running.get('started')}")
    last = view["last_run"]
    if last is None:
        lines.append("  no run yet")
        return "\n".join(lines)
    lines.append(f"  last run {last['run_id']} started {last['started_at']}: {last['outcome'] or 'unfinished'}"
                 + (f" (exit {last['exit_code']})" if last["exit_code"] is not None else "")
                 + (f": {last['error']}" if last.get("error") else ""))  # fmt: skip
    lines.append("  " + ", ".join(f"{k} {v}" for k, v in sorted(view["counts"].items())))
    conditions = last.get("conditions") or {}
    lines += [f"  QUOTA FULL {label} (last run): {why}" for label, why in (conditions.get("quota_full") or {}).items()]
    lines += [
        f"  UNAVAILABLE {label} (last run): {why}" for label, why in (conditions.get("unavailable") or {}).items()
    ]
    lines += [f"  SOURCE LEFT OPEN {src['image_id']}: nhncloud_allow_download switched on by a run that did not "
              f"finish; the next run restores {src['original']!r}" for src in view["sources_open"]]  # fmt: skip
    rows = [("IMAGE", "NAME", "TARGET", "STATE", "ACTION", "BYTES", "TARGET IMAGE", "NOTE")]  # fmt: skip
    for image in view["images"]:
        for label, t in image["targets"].items():
            note = t.get("error") or image.get("skipped") or ("; ".join(t.get("problems") or []))
            rows.append((image["image_id"], clip(image["name"] or "", 28), label, t["state"], t.get("action") or "",
                         format_size(t.get("bytes") or 0), t.get("target_id") or "", clip(note or "", 80)))  # fmt: skip
    lines.append(format_table(rows))
    return "\n".join(lines)
