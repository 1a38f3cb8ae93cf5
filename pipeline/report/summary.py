"""The run summary: one record per image x target, byte counters, and the exit code they imply.

It observes (events in, nothing steers), so the counts always match what happened. ``--report FILE``
writes ``to_json(lazy=True)``, streamed; the CLI prints ``render()``.

Every step is kept for the report, packed (``_StepLog``: a few dozen bytes a step, one object for them all); what
the summary and its exit code need as it goes (counts by outcome, the steps worth a line of their own) is kept
aside. A run of 100,000 images x 2 targets used to hold 200,000 step objects, about 25 MiB.
"""

from __future__ import annotations

import marshal
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import OUTCOME_EXIT_CODES, ExitCode
from pipeline.models import RequestCounts
from pipeline.outcomes import STEP_OUTCOMES, is_failure, step_outcome
from pipeline.report.events import (
    BytesRead,
    BytesWritten,
    PlannedWork,
    Reporter,
    SourceResumed,
    TargetQuotaFull,
    TargetRetrying,
)
from pipeline.units import format_duration, format_rate, format_size

__all__ = ["RunSummary", "StepFinished"]


@dataclass(frozen=True, slots=True)
class StepFinished:
    """The final outcome of one image x target in this run (the canonical log line)."""

    image_id: str
    name: str | None
    target: str
    action: str
    state: str
    bytes: int = 0
    error: str | None = None
    reason: str = ""
    problems: tuple[str, ...] = ()
    pending_members: tuple[str, ...] = ()
    changed: bool = False
    target_id: str | None = None

    @property
    def outcome(self) -> str:
        """One of ``outcomes.OUTCOMES``: copied, metadata, up_to_date, skipped, failed or cancelled."""
        return step_outcome(self.state, self.action)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"image_id": self.image_id, "name": self.name, "target": self.target,
                               "action": self.action, "outcome": self.outcome, "bytes": self.bytes}  # fmt: skip
        for key in ("error", "reason", "target_id"):
            if getattr(self, key):
                doc[key] = getattr(self, key)
        if self.problems:
            doc["problems"] = list(self.problems)
        if self.pending_members:
            doc["pending_members"] = list(self.pending_members)
        return doc


#: The fields of a step, in the order ``_StepLog`` packs them.
_STEP_FIELDS = StepFinished.__slots__
#: How much of the packed log is inflated at a time while it is read back.
_INFLATE = 1 << 16


class _StepLog:
    """Steps, appended as they finish and read back in that order: each one marshalled (its fields as a tuple),
    length-prefixed and deflated into one growing buffer."""

    def __init__(self) -> None:
        self._deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
        self._data = bytearray()
        self.count = 0

    def append(self, step: StepFinished) -> None:
        blob = marshal.dumps(tuple(getattr(step, name) for name in _STEP_FIELDS))
        self._data += self._deflate.compress(len(blob).to_bytes(4, "little") + blob)
        self.count += 1

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[StepFinished]:
        data = bytes(self._data) + self._deflate.copy().flush()  # the log as it is now; appending goes on
        inflate = zlib.decompressobj(-15)
        pending = b""
        for at in range(0, len(data), _INFLATE):
            pending += inflate.decompress(data[at : at + _INFLATE])
            done = 0  # the steps read so far are cut off once per piece, not once per step
            while len(pending) - done >= 4 + (size := int.from_bytes(pending[done : done + 4], "little")):
                yield StepFinished(*marshal.loads(pending[done + 4 : done + 4 + size]))
                done += 4 + size
            pending = pending[done:]


class _Counter:
    """Counts bytes and retries from engine events, then forwards them."""

    def __init__(self, summary: RunSummary, downstream: Reporter | None) -> None:
        self.summary, self.downstream = summary, downstream

    def emit(self, event: Any) -> None:
        if isinstance(event, BytesWritten):
            self.summary.bytes_written += event.n
        elif isinstance(event, BytesRead):
            self.summary.bytes_read += event.n
        elif isinstance(event, TargetRetrying):
            self.summary.retries += 1
        elif isinstance(event, SourceResumed):
            self.summary.resumes += 1
        elif isinstance(event, TargetQuotaFull):
            self.summary.quota_full.setdefault(event.region, f"{event.resource}: {event.message}")
            self.summary.target_wide[event.region] = event.reason
        if self.downstream is not None:
            self.downstream.emit(event)


@dataclass(repr=False)
class RunSummary:
    job: str
    run_id: str
    started_at: float = field(default_factory=time.time)
    started: float = field(default_factory=time.monotonic)
    duration: float = 0.0
    plan: PlannedWork | None = None
    #: Every step, packed (``steps`` reads them back).
    log: _StepLog = field(default_factory=_StepLog)
    #: Steps by outcome (``counts``), and how many of them had something to do (not ``skip``).
    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STEP_OUTCOMES, 0))
    finished_open: int = 0
    #: The steps worth a line of their own in the summary: failures, problems, members left pending.
    notable: list[StepFinished] = field(default_factory=list)
    #: Failed steps that share the error of a condition of their whole target (``target_wide``), by target.
    shared_failures: dict[str, int] = field(default_factory=dict)
    bytes_written: int = 0
    bytes_read: int = 0
    retries: int = 0
    resumes: int = 0
    orphans_deleted: int = 0
    #: ``[prune]``: the copies deleted, why none were (a refusal), and deletes that failed.
    pruned: list[dict[str, Any]] = field(default_factory=list)
    prune_refused: str | None = None
    prune_failed: list[str] = field(default_factory=list)
    parked_images: int = 0
    #: How many source images the whole selection matched (every shard's), once discovery told; None before.
    selected: int | None = None
    unavailable: dict[str, str] = field(default_factory=dict)
    #: Targets whose quota was full during the run: label -> "resource: the server's message" (reported once).
    quota_full: dict[str, str] = field(default_factory=dict)
    #: The error of a condition of a whole target (its full quota), which its failed steps share: one line.
    target_wide: dict[str, str] = field(default_factory=dict)
    #: Sources whose download permission an earlier run left switched on and this run could not restore.
    sources_left_open: dict[str, str] = field(default_factory=dict)
    interrupted: str | None = None
    parked: bool = False
    fatal: str | None = None
    #: The exit code of the fatal error (4 for authentication, 1 otherwise).
    fatal_code: int = ExitCode.FAILED
    journal_records: int = 0
    journal_seconds: float = 0.0
    downstream: Reporter | None = None
    #: Every Image API request of the run, by kind and region (filled by the run's clients).
    requests: RequestCounts = field(default_factory=RequestCounts)
    #: Tokens each auth profile obtained during the run (refreshes show as more than one).
    tokens_issued: dict[str, int] = field(default_factory=dict)

    def __repr__(self) -> str:
        # short: asyncio formats the finished main task (whose result this is) when the run's event loop closes,
        # and a repr of every step and planned image cost seconds at 100,000 images
        return f"RunSummary(job={self.job!r}, run_id={self.run_id!r}, steps={len(self.log)})"

    def reporter(self, downstream: Reporter | None) -> Reporter:
        self.downstream = downstream
        return _Counter(self, downstream)

    def step_finished(self, step: StepFinished) -> None:
        self.log.append(step)
        outcome = step.outcome
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if step.action != "skip":
            self.finished_open += 1
        failure = is_failure(outcome)
        if failure and step.error is not None and step.error == self.target_wide.get(step.target):
            self.shared_failures[step.target] = self.shared_failures.get(step.target, 0) + 1
        elif failure or step.problems or step.pending_members:
            self.notable.append(step)
        if self.downstream is not None:
            self.downstream.emit(step)

    @property
    def steps(self) -> list[StepFinished]:
        """Every step of the run, in the order they finished (read back from ``log``: a new list each time)."""
        return list(self.log)

    def finish(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.duration = max(0.0, clock() - self.started)

    def counts(self) -> dict[str, int]:
        counts = dict(self.outcomes)
        counts["parked_images"] = self.parked_images
        counts["unavailable_targets"] = len(self.unavailable)
        counts["quota_full_targets"] = len(self.quota_full)
        return counts

    @property
    def failed(self) -> bool:
        """Whether a step's outcome fails the run (``outcomes.is_failure``)."""
        return any(n and is_failure(outcome) for outcome, n in self.outcomes.items())

    @property
    def outcome(self) -> str:
        """ok, failed (something failed, the rest done), parked (max_runtime), interrupted or fatal."""
        if self.interrupted:
            return "interrupted"
        if self.fatal:
            return "fatal"
        if (self.failed or self.unavailable or self.quota_full or self.sources_left_open or self.prune_refused
                or self.prune_failed):  # fmt: skip
            return "failed"
        return "parked" if self.parked else "ok"

    @property
    def exit_code(self) -> int:
        """The process exit code this run's outcome implies (``errors.ExitCode``)."""
        outcome = self.outcome
        if outcome == "interrupted" and self.interrupted is not None:
            return ExitCode[self.interrupted]  # SIGINT 130, SIGTERM 143
        if outcome == "fatal":
            return self.fatal_code
        return OUTCOME_EXIT_CODES[outcome]

    def _failure_lines(self) -> list[str]:
        """One line per failed step, except that the steps failed by a condition of their whole target (its full
        quota: ``target_wide``) share one line per target: one message, not one per image."""
        lines: list[str] = []
        shared = dict(self.shared_failures)
        for s in self.notable:
            if not is_failure(s.outcome):
                continue
            if s.error is not None and s.error == self.target_wide.get(s.target):  # the condition was told later
                shared[s.target] = shared.get(s.target, 0) + 1
            else:
                lines.append(f"  FAILED {s.name or s.image_id} -> {s.target}: {s.error}")
        for target, count in shared.items():
            lines.append(f"  FAILED {count} image(s) -> {target}: {self.target_wide[target]}")
        return lines

    def to_json(self, *, lazy: bool = False) -> dict[str, Any]:
        """The report; ``lazy``: its ``steps`` and its plan's ``images`` are generators that make each document
        as it is written (``units.json_pieces``), not lists."""
        rate = self.bytes_written / self.duration if self.duration > 0 else 0.0
        return {
            "job": self.job, "run_id": self.run_id, "outcome": self.outcome,
            "exit_code": self.exit_code, "started_at": self.started_at, "duration_seconds": round(self.duration, 3),
            "counts": self.counts(), "bytes_read": self.bytes_read, "bytes_written": self.bytes_written,
            "rate_bytes_per_second": round(rate, 1), "retries": self.retries, "source_resumes": self.resumes,
            "selected_images": self.selected,
            "orphans_deleted": self.orphans_deleted, "unavailable_targets": dict(self.unavailable),
            "quota_full_targets": dict(self.quota_full),
            "sources_left_open": dict(self.sources_left_open),
            "pruned": list(self.pruned), "prune_refused": self.prune_refused, "prune_failed": list(self.prune_failed),
            "journal": {"records": self.journal_records, "seconds": round(self.journal_seconds, 4)},
            "requests": self.requests.by_region(), "tokens_issued": dict(self.tokens_issued),
            "fatal": self.fatal, "plan": self.plan.to_json(lazy=lazy) if self.plan is not None else None,
            "steps": (s.to_json() for s in self.log) if lazy else [s.to_json() for s in self.log],
        }  # fmt: skip

    def render(self) -> str:
        """The human summary printed at the end of a run."""
        counts = self.counts()
        rate = self.bytes_written / self.duration if self.duration > 0 else 0.0
        parts = [f"{k.replace('_', ' ')} {v}" for k, v in counts.items() if v]
        lines = [
            f"job {self.job}: {self.outcome} (exit {self.exit_code}) in {format_duration(self.duration)}",
            f"  {', '.join(parts) or 'nothing to do'}",
            f"  {format_size(self.bytes_read)} read, {format_size(self.bytes_written)} written, "
            f"{format_rate(rate)}; {self.retries} retries, {self.resumes} source resumes",
        ]
        if self.requests.total:
            kinds: dict[str, int] = {}
            for (kind, _), n in self.requests.counts.items():
                kinds[kind] = kinds.get(kind, 0) + n
            lines.append(
                f"  {self.requests.total} requests: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
            )
        if self.orphans_deleted:
            lines.append(f"  {self.orphans_deleted} leftover copies deleted")
        lines += [f"  UNAVAILABLE {label}: {reason}" for label, reason in self.unavailable.items()]
        lines += [f"  QUOTA FULL {label}: {reason}" for label, reason in self.quota_full.items()]
        lines += [f"  SOURCE LEFT OPEN {image_id}: {reason}" for image_id, reason in self.sources_left_open.items()]
        lines += [f"  {'RETIRED' if p.get('retired') else 'PRUNED'} {p['target']}: copy {p['target_id']} ({p['name']}) "
                  f"of source {p['source_id']}" + (f", deleted after {p['delete_after']}" if p.get("retired") else "")
                  + (" (its grace period is over)" if p.get("expired") else "")
                  for p in self.pruned]  # fmt: skip
        if self.prune_refused:
            lines.append(f"  PRUNE REFUSED: {self.prune_refused}")
        lines += [f"  PRUNE FAILED {failure}" for failure in self.prune_failed]
        lines += self._failure_lines()
        for step in self.notable:
            lines += [f"  WARNING {step.name or step.image_id} -> {step.target}: {p}" for p in step.problems]
            if step.pending_members:
                lines.append(f"  PENDING {step.name or step.image_id} -> {step.target}: members "
                             f"{', '.join(step.pending_members)} stay pending (no profile to accept)")  # fmt: skip
        if self.parked and self.plan is None:
            lines.append("  max_runtime reached before planning: parked before planning, nothing was copied; the "
                         "next run resumes")  # fmt: skip
        elif self.parked:
            lines.append(f"  max_runtime reached: {self.parked_images} image(s) parked; the next run resumes")
        if self.interrupted:
            lines.append(f"  interrupted by {self.interrupted}: state saved; the next run resumes")
        return "\n".join(lines)
