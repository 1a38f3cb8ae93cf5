"""The HTML page of one run, drawn from what ``htmlreport`` collected from the journal: inline CSS and SVG (a
timeline of image x target bars, aggregated above ``MAX_BARS``; throughput per region), totals, failures and
the plan's notes. Everything a user or a cloud supplied is HTML-escaped; no URL appears in the file.
"""

from __future__ import annotations

import html
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from pipeline.outcomes import OTHER_COLOUR, REPORT_OUTCOMES, STEP_OUTCOMES, is_failure, is_final, step_outcome
from pipeline.state.records import JournalState, RunEntry, TargetEntry
from pipeline.units import format_duration, format_size

__all__ = ["MAX_BARS", "Bar", "RunView", "render"]


#: Above this many image x target bars the timeline is aggregated into time buckets.
MAX_BARS = 300
BUCKETS = 60
MAX_ROWS = 200
#: The phases after the transfer, in the timeline.
PHASE_COLOURS = {"verify": "#78909c", "metadata": "#7e57c2"}
REGION_COLOURS = ("#1565c0", "#2e7d32", "#ef6c00", "#6a1b9a", "#00838f", "#ad1457", "#5d4037", "#455a64")
NOT_RECORDED = (
    "Per-phase times in journals written before phases were recorded: there, only when a target image was "
    "created and when the step ended are known. Phase times are those of the last attempt of each phase.",
    "Per-attempt times: only the number of attempts of the final record is known, not when each retry ran.",
    "When work started for steps that create nothing (resume, metadata, up to date, skipped): their bar runs "
    "from the plan to the final record, so waiting for a slot and working are not told apart.",
    "Bytes over time: each final record holds the bytes of its largest attempt only (not bytes re-sent by "
    "retries, not bytes read from the source).",
    "The planner's notes (copies no longer selected, download permission switched on) are not journalled.",
)
CSS = """body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#212121;
background:#fafafa;max-width:1280px}h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;
border-bottom:1px solid #ddd;padding-bottom:4px}table{border-collapse:collapse;background:#fff;margin:6px 0}
td,th{border:1px solid #e0e0e0;padding:3px 8px;text-align:left;vertical-align:top;white-space:nowrap}
th{background:#f0f0f0}td.n{text-align:right;font-variant-numeric:tabular-nums}.cards{display:flex;flex-wrap:wrap;gap:8px}
.card{background:#fff;border:1px solid #e0e0e0;border-left:6px solid #999;padding:6px 12px;min-width:110px}
.card b{display:block;font-size:20px}.note{color:#555;font-size:13px}.warn{background:#fff8e1;
border:1px solid #ffe082;padding:6px 10px}svg{background:#fff;border:1px solid #e0e0e0;display:block}
.err{font-family:ui-monospace,monospace;font-size:12px;white-space:pre-wrap;word-break:break-word}
.legend span{display:inline-block;margin-right:14px}.legend i{display:inline-block;width:12px;height:12px;
margin-right:4px;vertical-align:-1px}"""


def _e(value: object) -> str:
    """HTML-escaped text; a "://" is written as "&#58;//" so no URL ever appears in the file's source."""
    return html.escape(str(value)).replace("://", "&#58;//")


@dataclass
class Bar:
    """One image x target in the run: its records folded (``records.fold_target``, as the journal state folds
    them), and the times of those records."""

    image_id: str
    target: TargetEntry
    start: float | None = None
    creating: float | None = None
    created: float | None = None
    end: float | None = None
    unavailable: bool = False
    folded: bool = False  # known only from the snapshot: its final time, not its start

    @property
    def region(self) -> str:
        return self.target.region

    @property
    def state(self) -> str | None:
        """The final state, or None while the image x target has no final record."""
        return self.target.state if is_final(self.target.state) else None

    @property
    def action(self) -> str | None:
        return self.target.action

    @property
    def reason(self) -> str:
        return self.target.reason or ""

    @property
    def bytes(self) -> int:
        return int(self.target.bytes or 0)

    @property
    def attempts(self) -> int:
        return int(self.target.attempts or 0)

    @property
    def error(self) -> str | None:
        return self.target.error

    @property
    def problems(self) -> list[str]:
        return list(self.target.problems or [])

    @property
    def phases(self) -> dict[str, float]:
        """When the upload, verification and metadata phases began (journals written since phases are recorded)."""
        phases = self.target.phases if isinstance(self.target.phases, dict) else {}
        return {k: float(v) for k, v in phases.items() if isinstance(v, int | float)}

    @property
    def outcome(self) -> str:
        """``outcomes.step_outcome``, or unavailable: also an outcome a newer imgmig journalled, as it is."""
        return "unavailable" if self.unavailable else step_outcome(self.state, self.action)

    @property
    def failed(self) -> bool:
        """Not in sync at the end of the run (failed, cancelled, unavailable; an unknown outcome with an error)."""
        known = REPORT_OUTCOMES.get(self.outcome)
        return self.error is not None if known is None else not known.in_sync and self.outcome != "unfinished"

    @property
    def work_start(self) -> float | None:
        return self.creating or self.created or self.start


@dataclass
class RunView:
    entry: RunEntry
    bars: dict[tuple[str, str], Bar] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # image-level: (image id, reason)
    sources: Counter[str] = field(default_factory=Counter)
    deleted: int = 0
    partial: bool = False
    folded: int = 0
    t0: float = 0.0
    t1: float = 0.0
    log_from: float = 0.0  # the first time the log still covers (t0 unless partly folded)


def _outcomes(bars: Sequence[Bar]) -> list[str]:
    """Every outcome the report shows: ``outcomes.REPORT_OUTCOMES``, then any other that a bar has."""
    return [*REPORT_OUTCOMES, *sorted({b.outcome for b in bars} - set(REPORT_OUTCOMES))]


def _colour(outcome: str) -> str:
    known = REPORT_OUTCOMES.get(outcome)
    return known.colour if known is not None else OTHER_COLOUR


def render(job: str, state: JournalState, run: RunView) -> str:
    r = run.entry
    bars = sorted(run.bars.values(), key=lambda b: (b.work_start or b.end or 0.0, run.names.get(b.image_id, ""),
                                                    b.image_id, b.region))  # fmt: skip
    counts = Counter(b.outcome for b in bars)
    outcomes = _outcomes(bars)
    # a step the journal already held in sync (an idle rerun's up-to-date skip) writes no record, so has no bar:
    # the run_finished record still counts it
    counted = {k: int(v) for k, v in r.summary.items() if k in STEP_OUTCOMES and isinstance(v, int)}
    undrawn = sum(max(0, n - counts[k]) for k, n in counted.items())
    for k, n in counted.items():
        counts[k] = max(counts[k], n)
    duration = format_duration(r.finished_at - r.started_at) if r.finished_at is not None else "not finished"
    header = [("job", job), ("run", r.run_id), ("started", _when(r.started_at)),
              ("finished", _when(r.finished_at) if r.finished_at else "no run_finished record (running or crashed)"),
              ("outcome", r.outcome or "unknown"), ("exit code", "" if r.exit_code is None else r.exit_code),
              *((("error", r.error),) if r.error else ()),
              ("duration", duration), ("pid", r.pid), ("images", len({b.image_id for b in bars})),
              ("image x target", len(bars))]  # fmt: skip
    out = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>imgmig report: {_e(job)} "
           f"run {_e(r.run_id)}</title><style>{CSS}</style></head><body>",
           f"<h1>imgmig report: job {_e(job)}</h1><table>",
           *(f"<tr><th>{k}</th><td>{_e(v)}</td></tr>" for k, v in header), "</table>"]  # fmt: skip
    for kind, title in (("quota_full", "QUOTA FULL"), ("unavailable", "UNAVAILABLE")):
        for label, why in (r.conditions.get(kind) or {}).items():
            out.append(f'<p class="warn"><b>{title} {_e(label)}</b>: {_e(why)}</p>')
    if run.partial:
        out.append(f'<p class="warn">Part of this run was already folded into the journal snapshot: {run.folded} '
                   "image x target are shown from it with their final time only (no start, no create time); "
                   "records of the run that were overwritten by a later run cannot be shown.</p>")  # fmt: skip
    if undrawn:
        out.append(f'<p class="note">{undrawn} image x target of this run were already in sync and so recorded by an '
                   "earlier run: they are counted here, and have no bar below.</p>")  # fmt: skip
    out.append('<h2>Totals</h2><div class="cards">')
    out += [f'<div class="card" style="border-left-color:{_colour(k)}"><b>{counts[k]}</b>{_e(k.replace("_", " "))}'
            "</div>" for k in outcomes if counts[k] or k in STEP_OUTCOMES]  # fmt: skip
    copied = sum(b.bytes for b in bars if b.outcome == "copied")
    partial_bytes = sum(b.bytes for b in bars if b.failed)
    out.append(f'<div class="card"><b>{_e(format_size(copied))}</b>copied ({copied} bytes)</div><div class="card">'
               f"<b>{_e(format_size(partial_bytes))}</b>in failed/cancelled steps</div></div>")  # fmt: skip
    if r.summary:
        pairs = ", ".join(f"{k} {v}" for k, v in r.summary.items())
        out.append(f'<p class="note">The run_finished record counts: {_e(pairs)}.</p>')
    extras = [f"{run.deleted} target images deleted (orphan sweep, replaced or abandoned copies)"] * bool(run.deleted)
    extras += [f"source download permission {k}: {v}" for k, v in sorted(run.sources.items())]
    out += [f'<p class="note">{_e(x)}</p>' for x in extras]
    out += _timeline(run, bars)
    out += _throughput(run, bars)
    out += _failures(run, bars)
    out += _plan(run, bars)
    out.append("<h2>What the journal does not record (yet)</h2><ul>")
    out += [f"<li>{_e(x)}</li>" for x in NOT_RECORDED]
    others = "".join(f"<tr><td>{_e(x.run_id)}</td><td>{_e(_when(x.started_at))}</td><td>{_e(x.outcome or '')}</td>"
                     f"<td class=n>{_e('' if x.exit_code is None else x.exit_code)}</td></tr>"
                     for x in state.runs[-20:])  # fmt: skip
    last = f" (the last 20 of {len(state.runs)})" if len(state.runs) > 20 else ""
    out.append(f'</ul><h2>Runs of this job</h2><p class="note">Select one with <code>--run ID</code>{last}.</p>'
               f"<table><tr><th>run</th><th>started</th><th>outcome</th><th>exit</th></tr>{others}</table>"
               "</body></html>\n")  # fmt: skip
    return "".join(out)


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t)) if t else ""


def _dur(t: float) -> str:
    return f"{t:.3g}s" if t < 10 else format_duration(t)


def _ticks(span: float) -> list[float]:
    steps = [m * 10.0**e for e in range(-3, 1) for m in (1, 2, 5)] + [10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600,
                                                                      7200, 14400, 21600, 43200, 86400]  # fmt: skip
    step = next((s for s in steps if span / s <= 8), 86400 * (1 + span // (86400 * 8)))
    return [i * step for i in range(int(span / step) + 1)]


def _axis(left: int, width: int, top: int, bottom: int, span: float, *, above: bool = False) -> list[str]:
    """Vertical grid lines with "+time" labels below the plot (and above it too, for tall timelines)."""
    out = []
    for t in _ticks(span):
        x, label = left + width * t / span, f"+{_e(_dur(t))}"
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom}" stroke="#eee"/>')
        out += [f'<text x="{x:.1f}" y="{y}" font-size="10" text-anchor="middle">{label}</text>'
                for y in ((bottom + 13, top - 4) if above else (bottom + 13,))]  # fmt: skip
    return out


def _svg(label: str, width: int, height: int) -> list[str]:
    return [f'<svg viewBox="0 0 {width} {height}" width="100%" role="img" aria-label="{label}">']


def _legend(items: list[tuple[str, str]]) -> str:
    spans = "".join(f'<span><i style="background:{c}"></i>{_e(n)}</span>' for n, c in items)
    return f'<p class="legend">{spans}</p>'


def _timeline(run: RunView, bars: list[Bar]) -> list[str]:
    span = max(run.t1 - run.t0, 1e-3)
    out = ["<h2>Timeline</h2>"]
    if len(bars) > MAX_BARS:
        return out + _aggregated(run, bars, span)
    left, width, row, top = 300, 860, 16, 16
    height = top + 22 + row * len(bars)
    out.append('<p class="note">One bar per image x target, from its first record in this run to its final record. '
               "Grey: planned, waiting for a slot; dark grey: the create call (creating to created); in the colour "
               "of the outcome: the transfer (from the upload's first byte); blue-grey: verification; purple: the "
               "metadata step. Journals written before phases were recorded show created to final record in the "
               "outcome's colour. A bar without a create or an upload is drawn pale: queueing and work are not "
               "told apart. ↻n: n attempts; ✕: failed. Hover a bar for its details.</p>")  # fmt: skip
    out.append(_legend([(k.replace("_", " "), _colour(k)) for k in _outcomes(bars)] + [("waiting", "#e0e0e0"),
                       ("create", "#616161"), *PHASE_COLOURS.items()]))  # fmt: skip
    svg = _svg("timeline", left + width + 60, height) + _axis(left, width, top, height - 18, span, above=True)

    def x(t: float | None) -> float:
        return left + width * (max(run.t0, min(t if t is not None else run.t1, run.t1)) - run.t0) / span

    for i, b in enumerate(bars):
        y, colour = top + 4 + i * row, _colour(b.outcome)
        name = run.names.get(b.image_id) or b.image_id
        tip = (f"{name} ({b.image_id}) → {b.region}: {b.action or '?'}, {b.outcome}; bytes {b.bytes}, attempts "
               f"{b.attempts}" + (f"; error: {b.error}" if b.error else "")
               + ("; known from the snapshot only" if b.folded else ""))  # fmt: skip
        g = [f'<g class="bar"><title>{_e(tip)}</title>'
             f'<text x="{left - 6}" y="{y + 10}" font-size="11" text-anchor="end">{_e(_short(name))} → '
             f"{_e(b.region)}</text>"]  # fmt: skip
        end = b.end if b.end is not None else run.t1
        phases: list[tuple[float | None, float | None, str, str]] = []
        if b.phases and (b.creating or b.created or b.phases.get("upload")):
            upload, verify, meta = b.phases.get("upload"), b.phases.get("verify"), b.phases.get("metadata")
            begun = b.creating or b.created or upload
            phases += [(b.start, begun, "#e0e0e0", "1"), (b.creating, b.created, "#616161", "1"),
                       (upload, verify or meta or end, colour, "1"),
                       (verify, meta or end, PHASE_COLOURS["verify"], "1"),
                       (meta, end, PHASE_COLOURS["metadata"], "1")]  # fmt: skip
        elif b.creating or b.created:
            phases += [(b.start, b.creating or b.created, "#e0e0e0", "1"), (b.creating, b.created, "#616161", "1"),
                       (b.created, end, colour, "1")]  # fmt: skip
        else:
            phases.append((b.end if b.folded else b.start, end, colour, "0.45"))
        for start, stop, fill, opacity in phases:
            if start is not None and stop is not None:
                g.append(f'<rect x="{x(start):.1f}" y="{y}" width="{max(x(stop) - x(start), 2):.1f}" height="11" '
                         f'fill="{fill}" fill-opacity="{opacity}"/>')  # fmt: skip
        mark = ("✕ " if is_failure(b.outcome) else "") + (f"↻{b.attempts}" if b.attempts > 1 else "")
        if mark:
            g.append(f'<text x="{x(end) + 4:.1f}" y="{y + 10}" font-size="11" fill="#b71c1c">{mark}</text>')
        svg.append("".join(g) + "</g>")
    return [*out, *svg, "</svg>"]


def _short(name: str, n: int = 40) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def _bucket(t: float, t0: float, size: float) -> int:
    return min(BUCKETS - 1, max(0, int((t - t0) / size)))


def _aggregated(run: RunView, bars: list[Bar], span: float) -> list[str]:
    size = span / BUCKETS
    outcomes = _outcomes(bars)
    done = {k: [0] * BUCKETS for k in outcomes}
    active = [0] * (BUCKETS + 1)
    for b in bars:
        if b.end is not None:
            done[b.outcome][_bucket(b.end, run.t0, size)] += 1
        start = b.creating or b.created
        if start is not None:
            active[_bucket(start, run.t0, size)] += 1
            active[_bucket(b.end if b.end is not None else run.t1, run.t0, size) + 1] -= 1
    for i in range(1, BUCKETS + 1):
        active[i] += active[i - 1]
    left, width, top, height = 60, 1100, 10, 260
    peak = max([sum(done[k][i] for k in outcomes) for i in range(BUCKETS)] + [1])
    peak_active = max([*active[:BUCKETS], 1])
    out = [f'<p class="note">Aggregated: {len(bars)} image x target bars are more than {MAX_BARS}, so the timeline '
           f"shows {BUCKETS} time buckets of {_e(_dur(size))} each: stacked bars count the final records "
           f"per bucket by outcome (left scale, peak {peak}); the black line counts image x target with a create in "
           f"flight (created, not yet final) during the bucket (right scale, peak {peak_active}). Failed image x "
           "target are listed one by one below."
           + (f" Creates are known from +{_e(_dur(run.log_from - run.t0))} on only (earlier records are in the "
              "snapshot): the line starts there." if run.partial else "") + "</p>",
           _legend([(k.replace("_", " "), _colour(k)) for k in outcomes] + [("in flight", "#000")]),
           *_svg("aggregated timeline", left + width + 60, top + height + 24),
           *_axis(left, width, top, top + height, span),
           f'<text x="{left - 6}" y="{top + 10}" font-size="10" text-anchor="end">{peak}</text>',
           f'<text x="{left + width + 6}" y="{top + 10}" font-size="10">{peak_active}</text>']  # fmt: skip
    bw = width / BUCKETS
    for i in range(BUCKETS):
        y = float(top + height)
        for k in outcomes:
            if done[k][i]:
                h = height * done[k][i] / peak
                y -= h
                out.append(f'<rect x="{left + i * bw:.1f}" y="{y:.1f}" width="{bw - 1:.1f}" height="{h:.1f}" '
                           f'fill="{_colour(k)}"><title>{_e(k)}: {done[k][i]}</title></rect>')  # fmt: skip
    first = _bucket(run.log_from, run.t0, size) + 1 if run.partial else 0
    points = " ".join(f"{left + (i + 0.5) * bw:.1f},{top + height - height * active[i] / peak_active:.1f}"
                      for i in range(first, BUCKETS))  # fmt: skip
    out.append(f'<polyline points="{points}" fill="none" stroke="#000" stroke-width="1.5"/></svg>')
    return out


def _throughput(run: RunView, bars: list[Bar]) -> list[str]:
    span = max(run.t1 - run.t0, 1e-3)
    size = span / BUCKETS
    regions = sorted({b.region for b in bars})
    series = {region: [0.0] * BUCKETS for region in regions}
    for b in bars:
        if not b.bytes or b.end is None:
            continue
        start, end = _transfer_window(b, b.end)
        buckets = series[b.region]
        if start is None or end - start <= 0:
            buckets[_bucket(end, run.t0, size)] += b.bytes
            continue
        rate = b.bytes / (end - start)
        for i in range(_bucket(start, run.t0, size), _bucket(end, run.t0, size) + 1):
            lo, hi = run.t0 + i * size, run.t0 + (i + 1) * size
            buckets[i] += rate * max(0.0, min(hi, end) - max(lo, start))
    out = ["<h2>Throughput over time</h2>",
           '<p class="note">Approximation: the journal holds one byte count per image x target (its final record), '
           "not bytes over time. Those bytes are spread evenly over a done copy's upload (from its start to "
           "the start of its verification; for other copies, and in journals written before phases were "
           "recorded, from the target image's create, or its first record, to its final record), then summed "
           f"per region in {BUCKETS} buckets of {_e(_dur(size))}. Retried bytes are not counted."
           + (f" {run.folded} image x target known from the snapshot only count in the bucket of their final "
              "time." if run.folded else "") + "</p>"]  # fmt: skip
    peak = max([v / size for s in series.values() for v in s] + [1.0])
    left, width, top, height = 80, 1080, 10, 220
    colours = {region: REGION_COLOURS[i % len(REGION_COLOURS)] for i, region in enumerate(regions)}
    out.append(_legend([(f"{region}: {format_size(sum(series[region]))}", colours[region]) for region in regions]))
    out += [*_svg("throughput", left + width + 20, top + height + 24), *_axis(left, width, top, top + height, span),
            f'<text x="{left - 6}" y="{top + 10}" font-size="10" text-anchor="end">{_e(format_size(peak))}/s</text>',
            f'<text x="{left - 6}" y="{top + height}" font-size="10" text-anchor="end">0</text>']  # fmt: skip
    for region in regions:
        pts = " ".join(f"{left + width * (i + 0.5) / BUCKETS:.1f},{top + height - height * v / size / peak:.1f}"
                       for i, v in enumerate(series[region]))  # fmt: skip
        out.append(f'<polyline points="{pts}" fill="none" stroke="{colours[region]}" stroke-width="2"/>')
    return [*out, "</svg>"]


def _transfer_window(b: Bar, end: float) -> tuple[float | None, float]:
    """When a copy's bytes flowed: for a done copy, its upload phase when the journal has it (from the first
    pass's upload to the last verification), else from its create (or first record) to its final record
    (``end``). The start is None when unknown (a copy known from the snapshot only)."""
    upload, verify = b.phases.get("upload"), b.phases.get("verify")
    # a copy that ended otherwise may have failed before the verification of its last pass
    if b.state == "done" and upload is not None and verify is not None and upload <= verify <= end:
        return upload, verify
    return b.created or b.creating or (None if b.folded else b.start), end


def _rows(head: tuple[str, ...], rows: Sequence[tuple[object, ...]], total: int) -> list[str]:
    more = f'<p class="note">First {len(rows)} of {total}.</p>' if total > len(rows) else ""
    cells = "".join("<tr>" + "".join(f"<td{_cls(c)}>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return [f"<table><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>{cells}</table>{more}"]


def _cls(cell: object) -> str:
    """Numbers right-aligned; long text (errors, reasons, long names) wraps, in a monospace font."""
    return ' class="n"' if isinstance(cell, int) else ' class="err"' if len(str(cell)) > 48 else ""


def _failures(run: RunView, bars: list[Bar]) -> list[str]:
    failed = [b for b in bars if b.failed]
    out = [f"<h2>Failures ({len(failed)})</h2>"]
    if not failed:
        return [*out, "<p>None.</p>"]
    reasons = Counter((b.error or "no error recorded", b.region) for b in failed)
    top = [(e, reg, n) for (e, reg), n in reasons.most_common(MAX_ROWS)]
    out += _rows(("error", "target", "count"), top, len(reasons))
    rows = [(run.names.get(b.image_id) or "", b.image_id, b.region, b.action or "", b.state or "", b.attempts,
             b.error or "") for b in failed[:MAX_ROWS]]  # fmt: skip
    return out + _rows(("image", "image id", "target", "action", "state", "attempts", "error"), rows, len(failed))


def _plan(run: RunView, bars: list[Bar]) -> list[str]:
    out = ["<h2>Plan</h2>"]
    plan = Counter((b.region, b.action or "unknown", b.reason or "-") for b in bars).most_common()
    out += _rows(("target", "action", "reason", "image x target"), [(*k, n) for k, n in plan[:MAX_ROWS]], len(plan))
    problems = [(run.names.get(b.image_id) or "", b.image_id, b.region, "; ".join(b.problems))
                for b in bars if b.problems]  # fmt: skip
    if problems:
        out.append(f"<h2>Done with metadata problems ({len(problems)})</h2>")
        out += _rows(("image", "image id", "target", "problems"), problems[:MAX_ROWS], len(problems))
    whole = {i for i, _ in run.skipped}
    skipped = run.skipped + [(b.image_id, f"{b.region}: {b.reason}") for b in bars
                             if b.state == "skipped" and b.image_id not in whole]  # fmt: skip
    out.append(f"<h2>Skipped ({len(skipped)})</h2>")
    if not skipped:
        return [*out, "<p>None.</p>"]
    why_counts = Counter(why for _, why in skipped)
    out += _rows(("reason", "count"), why_counts.most_common(MAX_ROWS), len(why_counts))
    rows = [(run.names.get(i) or "", i, why) for i, why in skipped[:MAX_ROWS]]
    return out + _rows(("image", "image id", "reason"), rows, len(skipped))
