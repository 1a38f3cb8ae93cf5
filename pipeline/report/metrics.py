"""Prometheus metrics of a run, written for node_exporter's textfile collector.

``MetricsFile`` observes the engine's events like a reporter (it only counts bytes per region) and
``write`` renders the run summary plus those counts with ``prometheus_client`` (a registry of its own,
``generate_latest``, text format 0.0.4) into one ``.prom`` file, mode 0644, replaced by ``files.atomic_write``
(its temporary ``.<name>.<random>.tmp`` is ignored by the collector, which reads ``*.prom`` only). A reader
sees the old file or the new one, never a part. ``prometheus_client.write_to_textfile`` is not used: it renames
too but neither fsyncs (after a power cut the renamed file may be empty) nor sets the mode (it follows the umask).

Every sample carries ``imgmig_job`` (the job name; not ``job``, which Prometheus sets itself) and
``shard`` when the file belongs to one shard. Values are per run: the counters start from zero at each
run (Prometheus' ``rate``/``increase`` treat that as a counter reset). A running run's file has
``imgmig_run_in_progress 1`` and the figures so far; the final file adds ``imgmig_exit_code``,
``imgmig_last_run_timestamp_seconds`` and ``imgmig_copies_out_of_sync``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import EXIT_CODES, ExitCode
from pipeline.files import atomic_write
from pipeline.outcomes import OUTCOMES
from pipeline.report.events import BytesRead, BytesWritten
from pipeline.report.summary import RunSummary

if TYPE_CHECKING:  # prometheus_client is imported when a file is rendered: a run without metrics never loads it
    from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = ["MetricsFile", "copies_out_of_sync"]

FILE_MODE = 0o644
#: imgmig_exit_code's help: every code and its meaning.
_EXIT_HELP = "; ".join(f"{int(code)} {meaning}" for code, meaning in EXIT_CODES.items())


def copies_out_of_sync(summary: RunSummary) -> int | None:
    """Image x target copies this run should have brought in sync and did not; None without a plan.

    The sum of:

    - steps that finished with an outcome that is not ``in_sync`` (``outcomes.OUTCOMES``: failed, cancelled);
    - steps of the plan, other than ``skip``, with no final record (parked at max_runtime, or left undone by an
      interruption or a fatal error);
    - for each unavailable target, each planned image that was not skipped as a whole (the runner records
      those image x target pairs as failed, but they are not among the summary's steps).

    Not counted: steps in sync (copied, metadata, up to date) and ``skipped`` ones (left alone on purpose).
    Without a plan (the run stopped before planning) the number is unknown: None.
    """
    plan = summary.plan
    if plan is None:
        return None
    bad = sum(n for outcome, n in summary.outcomes.items() if outcome in OUTCOMES and not OUTCOMES[outcome].in_sync)
    # a step finishes at most once (``run.images``), and only a step of the plan does
    unfinished = sum(1 for _ in plan.open_steps()) - summary.finished_open
    return bad + unfinished + plan.planned_images * len(summary.unavailable)


class _Families:
    """A collector that yields metric families built beforehand (one registry per rendering)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


class MetricsFile:
    """Counts bytes per region from events (``emit``) and writes the run's metrics file (``write``).

    ``emit`` only adds to two dicts: it never blocks and never raises. ``render`` reads the summary and must
    run on the thread that emits (the event loop); ``store`` does the file I/O and may run in a worker
    thread. ``write`` does both.
    """

    def __init__(self, path: Path, job: str, shard: str | None = None, *, source_region: str,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.path = Path(path)
        self.job = job
        self.shard = shard
        self.source_region = source_region
        self.clock = clock
        #: Bytes read from the source (all in ``source_region``) and written per target label.
        self.bytes_read: dict[str, int] = {source_region: 0}
        self.bytes_written: dict[str, int] = {}

    def emit(self, event: Any) -> None:
        if isinstance(event, BytesWritten):
            self.bytes_written[event.region] = self.bytes_written.get(event.region, 0) + event.n
        elif isinstance(event, BytesRead):
            self.bytes_read[self.source_region] += event.n

    # === rendering

    def render(self, summary: RunSummary, *, final: bool, last_success: float | None,
               requests: Mapping[tuple[str, str], int] | None = None) -> bytes:  # fmt: skip
        """The file's content (Prometheus text format 0.0.4).

        ``final``: the run has finished (``summary.finish`` was called); adds the exit code, the end time
        and the copies out of sync. ``last_success``: ``last_success(journal.state.runs)`` (None: never);
        a final file of a successful run uses this run's end if that is newer. ``requests``: API requests by
        (kind, region), exported as ``imgmig_requests_total`` when given.
        """
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

        base = ["imgmig_job", "shard"] if self.shard is not None else ["imgmig_job"]
        values = [self.job, self.shard] if self.shard is not None else [self.job]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=base)
            family.add_metric(values, value)
            return family

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=base)
            family.add_metric(values, value)
            return family

        families: list[Metric] = []
        read = CounterMetricFamily("imgmig_bytes_read", "Bytes read from the source region in this run "
                                   "(after a source resume only the new bytes).", labels=[*base, "region"])  # fmt: skip
        for region, n in sorted(self.bytes_read.items()):
            read.add_metric([*values, region], n)
        written = CounterMetricFamily("imgmig_bytes_written", "Bytes uploaded to each target in this run "
                                      "(region: the target's label, region or region@profile; retries included).",
                                      labels=[*base, "region"])  # fmt: skip
        targets = dict.fromkeys(summary.plan.targets if summary.plan is not None else (), 0)
        for region, n in sorted({**targets, **self.bytes_written}.items()):
            written.add_metric([*values, region], n)
        families += [read, written]

        counts = summary.counts()
        images = GaugeMetricFamily("imgmig_images", "Image x target steps of this run finished so far, by outcome "
                                   f"({', '.join(OUTCOMES)}).", labels=[*base, "outcome"])  # fmt: skip
        for outcome in OUTCOMES:
            images.add_metric([*values, outcome], counts[outcome])
        unavailable = GaugeMetricFamily("imgmig_unavailable_targets", "Targets this run could not use, by reason: "
                                        "unreachable for the whole run, or over a quota (quota_full).",
                                        labels=[*base, "reason"])  # fmt: skip
        unavailable.add_metric([*values, "unreachable"], counts["unavailable_targets"])
        unavailable.add_metric([*values, "quota_full"], counts["quota_full_targets"])
        families += [
            images,
            gauge("imgmig_parked_images", "Images left unfinished at max_runtime (the next run resumes them).",
                  counts["parked_images"]),
            unavailable,
            counter("imgmig_retries", "Target upload retries in this run.", summary.retries),
            counter("imgmig_source_resumes", "Source downloads reopened after a broken stream in this run.",
                    summary.resumes),
            counter("imgmig_orphans_deleted", "Leftover and duplicate copies deleted by this run's sweep.",
                    summary.orphans_deleted),
        ]  # fmt: skip
        if requests is not None:
            family = CounterMetricFamily("imgmig_requests", "API requests sent in this run, by kind and region.",
                                         labels=[*base, "kind", "region"])  # fmt: skip
            for (kind, region), n in sorted(requests.items()):
                family.add_metric([*values, kind, region], n)
            families.append(family)

        if summary.selected is not None:
            families.append(gauge("imgmig_selected_images", "Source images the job's whole selection matched (every "
                                  "shard's, the same in each shard's file).", summary.selected))  # fmt: skip
        duration = summary.duration if final else max(0.0, self.clock() - summary.started)
        families += [
            gauge("imgmig_run_in_progress", "1 while the run is going, 0 once it has finished.", 0 if final else 1),
            gauge("imgmig_run_start_timestamp_seconds", "When this run started (Unix time).", summary.started_at),
            gauge("imgmig_run_duration_seconds", "How long this run took (while it runs: so far).", duration),
        ]  # fmt: skip
        success = last_success
        if final:
            end = summary.started_at + summary.duration
            if summary.exit_code == ExitCode.OK:
                success = end if success is None else max(success, end)
            families += [
                gauge("imgmig_exit_code", f"The exit code of the finished run: {_EXIT_HELP}.", summary.exit_code),
                gauge("imgmig_last_run_timestamp_seconds", "When the last run finished (Unix time).", end),
            ]  # fmt: skip
            out_of_sync = copies_out_of_sync(summary)
            if out_of_sync is not None:
                families.append(gauge("imgmig_copies_out_of_sync", "Image x target copies the finished run left "
                                      "not in sync: failed, cancelled, not reached, or on an unavailable target.",
                                      out_of_sync))  # fmt: skip
        if success is not None:
            families.append(gauge("imgmig_last_success_timestamp_seconds",
                                  "When the last run with exit code 0 finished (Unix time).", success))  # fmt: skip

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(families))
        return generate_latest(registry)

    # === writing

    def store(self, data: bytes) -> None:
        """Replace the file with ``data`` (``files.atomic_write``). Raises OSError; the old file is then left
        as it was."""
        atomic_write(self.path, data, mode=FILE_MODE)

    def write(self, summary: RunSummary, *, final: bool, last_success: float | None,
              requests: Mapping[tuple[str, str], int] | None = None) -> None:  # fmt: skip
        """``render`` then ``store``: see both."""
        self.store(self.render(summary, final=final, last_success=last_success, requests=requests))
