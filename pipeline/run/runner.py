"""Runs one job: lock, journal, discover, plan, then copy and sync each image under a capacity limit.

# === flow
lock -> open journal -> authenticate + discover -> plan (pure) -> journal the plan -> orphan sweep ->
per image (at most ``images_in_flight`` at once): engine copy -> verify -> metadata -> journal -> done.

A per-image failure is recorded and the job goes on. Fatal errors (source or credential failure, journal
unwritable) stop the job cleanly. SIGINT/SIGTERM and ``max_runtime`` start nothing new and cancel the
work in flight (uploads abort, so target images go back to queued and the next run reuses them); the
journal is flushed either way, and the exit code says what happened.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import anyio
import structlog

from pipeline.cloud.transport import new_session
from pipeline.config import JobSpec
from pipeline.errors import EmptySelectionError, ExitCode, ImgmigError, JournalError, first_error
from pipeline.plan.intent import Intent
from pipeline.plan.planner import Plan
from pipeline.plan.selection import describe_selection
from pipeline.report.events import PlanReady, Reporter
from pipeline.report.logs import bind_run, scrub
from pipeline.report.metrics import MetricsFile
from pipeline.report.summary import RunSummary
from pipeline.run.gate import restore_left_open
from pipeline.run.images import PLAN_SLICE, Running, image_task, journal_plan, sweep
from pipeline.run.inventory import Clients, Inventory, discover, retry_policy, transport_config
from pipeline.run.pruning import prune
from pipeline.slices import Sliced
from pipeline.state.failpoints import failpoint
from pipeline.state.journal import Journal
from pipeline.state.lock import JobLock
from pipeline.state.records import last_success
from pipeline.transfer.engine import Engine, EngineSettings
from pipeline.transfer.source import Bandwidth

__all__ = ["RunControls", "new_run_id", "plan_only", "run_job"]

log = structlog.get_logger("imgmig")
T = TypeVar("T")

#: Group commit: the journal is fsynced at most this often (a process crash loses nothing written;
#: a power cut at most this window, which the provenance properties let the next run recover).
SYNC_EVERY = 5.0
#: How often the metrics file is rewritten during a run.
METRICS_EVERY = 30.0


@dataclass
class RunControls:
    """How this process drives a run (the job's own options are the spec's ``RunOptions``; the command line's
    overrides are applied to the spec by ``config.override``)."""

    reporter: Reporter | None = None
    #: Prometheus metrics: rewritten every METRICS_EVERY seconds while the run goes on (the caller writes
    #: the final file, which needs the exit code).
    metrics: MetricsFile | None = None
    #: Signals that stop the run cleanly; tests may pass () to leave signal handling alone.
    signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)
    clock: Callable[[], float] = time.monotonic
    #: The run's id (the CLI makes it first, so that its own lines carry it too); None: a new one.
    run_id: str | None = None
    #: Inspect each image's head as it streams (``transfer.inspection``). False only in the benches, which measure
    #: what inspection costs; no command line or job file switches it off.
    inspect: bool = True


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


async def run_job(spec: JobSpec, controls: RunControls | None = None) -> RunSummary:
    """Run ``spec`` once; returns the summary (its ``exit_code`` is the process exit code). A fatal error is raised
    with the summary attached (``exc.summary``), so the caller still reports what was done."""
    controls = controls or RunControls()
    lock = JobLock(spec.run.journal_dir, spec.name)
    with lock.held():
        # loading a large journal (its snapshot, the logs) takes a while: a slice of images at a time
        with _long_lived():
            journal = await _sliced(Journal.opening(spec.run.journal_dir, spec.name))
        summary = RunSummary(job=spec.name, run_id=controls.run_id or new_run_id())
        bind_run(spec.name, summary.run_id, str(spec.shard) if spec.shard is not None else None)
        ending = False
        try:
            journal.record("run_started", run=summary.run_id, pid=os.getpid())
            log.info("run_started", source=f"{spec.source.region}@{spec.source.auth}",
                     targets=list(spec.labelled_targets()),
                     selection=describe_selection(spec.select, spec.select.owner),
                     journal=str(spec.run.journal_dir))  # fmt: skip
            try:
                await _run(spec, controls, journal, summary)
            except Exception as exc:
                error = first_error(exc)
                if error is exc:
                    raise
                raise error from exc
            summary.finish(controls.clock)
            # The run's end must be durable before it is declared, or the run did not end well: everything
            # recorded is synced first, then the end is recorded and synced. A JournalError here is the run's
            # fatal error (exit 1), named like any other, and the journal never says a failed end was a success.
            ending = True
            await _sliced(journal.settling(closing=True))  # a snapshot due is encoded on the loop, a slice at a time
            await anyio.to_thread.run_sync(journal.sync)  # the fsyncs off the event loop, in the same order
            _finish_journal(journal, summary)
            await anyio.to_thread.run_sync(journal.close)
        except BaseException as exc:
            summary.fatal = summary.fatal or _describe(exc)
            summary.fatal_code = exc.exit_code if isinstance(exc, ImgmigError) else ExitCode.FAILED
            summary.finish(controls.clock)
            if not isinstance(exc, JournalError) and not ending:
                with contextlib.suppress(JournalError):  # the run already stops with its own error
                    _finish_journal(journal, summary)
            elif isinstance(exc, JournalError) and ending and not journal.broken:
                with contextlib.suppress(JournalError):  # the sync failed, the log still takes records
                    _finish_journal(journal, summary)
            if isinstance(exc, ImgmigError):
                exc.summary = summary  # the CLI still writes --report and prints what was done
            raise
        finally:
            with contextlib.suppress(JournalError):
                journal.close()
            summary.journal_records, summary.journal_seconds = journal.records, journal.seconds
            gc.unfreeze()  # what the run kept for its whole length is ordinary garbage-collected memory again
    return summary


async def _sliced(work: Sliced[T]) -> T:
    """Run ``work`` on the event loop's thread a slice at a time, letting the loop's other tasks run in between
    (``slices``: why not in a worker thread)."""
    while True:
        try:
            next(work)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        await anyio.lowlevel.checkpoint()


@contextlib.contextmanager
def _long_lived() -> Iterator[None]:
    """Build what the run holds for its whole length (the journal's state, the listings, the plan) without the
    cyclic garbage collector, then exempt it from the collector's full passes (``gc.freeze``; reference counting
    still frees each object when it is let go). A full pass walks every object there is: at 10,000 images x 2
    targets it held the event loop (and every thread) for 100-180 ms, two dozen times a run, and most often
    while these were being built. ``run_job`` unfreezes at its end."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, ImgmigError) else f"{type(exc).__name__}"


def _finish_journal(journal: Journal, summary: RunSummary) -> None:
    conditions = {k: v for k, v in (("quota_full", summary.quota_full), ("unavailable", summary.unavailable)) if v}
    why = {"error": scrub(summary.fatal)} if summary.fatal else {}  # a run that ends fatal keeps its reason
    journal.record("run_finished", run=summary.run_id, outcome=summary.outcome, exit_code=summary.exit_code,
                   summary=summary.counts(), conditions=conditions, **why)  # fmt: skip


@dataclass
class Stop:
    """What stops the work of a run early: its cancel scope (max_runtime's deadline, a signal), and why."""

    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    #: "parked" (max_runtime), "SIGINT" or "SIGTERM"; None while the run goes on.
    reason: str | None = None


async def _run(spec: JobSpec, controls: RunControls, journal: Journal, summary: RunSummary) -> None:
    transfer = spec.transfer
    config = transport_config(spec)
    if spec.run.insecure:
        log.warning("tls_verification_disabled", job=spec.name,
                    message="insecure = true: TLS certificates are NOT verified for this job")  # fmt: skip
    retry = retry_policy(spec)
    source_stall = transfer.source_stall_timeout or transfer.read_timeout
    settings = EngineSettings(
        chunk_size=transfer.chunk_size, buffer_depth=transfer.buffer_depth, retries=transfer.retries,
        stall_timeout=transfer.read_timeout, source_stall_timeout=source_stall,
        spool_dir=transfer.spool_dir, backoff=retry, job=spec.names,
        allow_format_mismatch=spec.copy.allow_format_mismatch, inspect=controls.inspect,
    )  # fmt: skip
    regional = {region: Bandwidth(rate) for region, rate in transfer.region_bandwidth.items()}
    stop = Stop()
    async with new_session(config) as session:
        engine = Engine(settings, reporter=summary.reporter(controls.reporter),
                        source_bandwidth=Bandwidth(transfer.bandwidth), region_bandwidth=regional)  # fmt: skip
        clients = Clients(spec, session, retry, summary.requests)
        async with anyio.create_task_group() as tg:
            if controls.signals:
                tg.start_soon(_watch_signals, spec, stop, controls.signals)
            tg.start_soon(_group_commit, journal)
            if controls.metrics is not None:
                tg.start_soon(_write_metrics, controls.metrics, summary, last_success(journal.state.runs))
            await _execute(spec, stop, journal, clients, engine, summary)
            tg.cancel_scope.cancel()
        summary.tokens_issued = clients.tokens_issued()
        if stop.reason in ("SIGINT", "SIGTERM"):
            summary.interrupted = stop.reason
        elif stop.reason == "parked":
            summary.parked = True


async def _group_commit(journal: Journal) -> None:
    """fsync the journal every SYNC_EVERY seconds while records arrive (off the event loop): a power cut
    loses at most that window; a process crash loses nothing that was written."""
    while True:
        await anyio.sleep(SYNC_EVERY)
        await journal.flush()


async def _write_metrics(metrics: MetricsFile, summary: RunSummary, previous: float | None) -> None:
    """The metrics file at once, then every METRICS_EVERY seconds (rendered here, written off the loop)."""
    while True:
        data = metrics.render(summary, final=False, last_success=previous, requests=summary.requests.counts)
        try:
            await anyio.to_thread.run_sync(metrics.store, data)
        except OSError as exc:  # metrics never stop a run
            log.warning("metrics_write_failed", path=str(metrics.path), error=exc.strerror or str(exc))
        await anyio.sleep(METRICS_EVERY)


async def _watch_signals(spec: JobSpec, stop: Stop, signals: tuple[signal.Signals, ...]) -> None:
    with anyio.open_signal_receiver(*signals) as received:
        async for signum in received:
            stop.reason = signal.Signals(signum).name
            log.warning("interrupted", job=spec.name, signal=stop.reason,
                        message="stopping: nothing new starts, transfers in flight are cancelled")  # fmt: skip
            stop.scope.cancel()
            return


async def _execute(spec: JobSpec, stop: Stop, journal: Journal, clients: Clients, engine: Engine,
                   summary: RunSummary) -> None:  # fmt: skip
    run: Running | None = None
    with stop.scope:
        if spec.run.max_runtime:
            # at the deadline nothing new starts and work in flight is cancelled (parked, resumable)
            stop.scope.deadline = anyio.current_time() + spec.run.max_runtime
        run = await _discover(spec, journal, clients, engine, summary)
        await _copy(run)
    if stop.scope.cancelled_caught and stop.reason is None:
        stop.reason = "parked"
        plan = summary.plan
        if plan is None:  # the deadline came while listing: nothing was planned, so nothing was started
            log.warning("max_runtime_reached", job=spec.name, parked_before_planning=True,
                        message="max_runtime reached before planning: parked before planning, nothing was "
                                "copied; the next run starts with a new listing")  # fmt: skip
            return
        log.warning("max_runtime_reached", job=spec.name,
                    message="max_runtime reached: work in flight parked; the next run resumes")  # fmt: skip
        # the images with something to do whose steps did not all finish (none started before ``run`` was made)
        settled = run.progress.settled if run is not None else 0
        summary.parked_images = len({image_id for image_id, _ in plan.open_steps()}) - settled


async def _discover(spec: JobSpec, journal: Journal, clients: Clients, engine: Engine,
                    summary: RunSummary) -> Running:  # fmt: skip
    """Restore what an interrupted run left open, discover, plan and journal the plan: the run, built whole."""
    if journal.state.open_sources:  # before anything else: what an interrupted run left switched on
        source = clients.client(spec.source.auth, spec.source.region)
        summary.sources_left_open.update(await restore_left_open(source, journal))
    try:
        with _long_lived():
            inventory = await discover(spec, clients, journal.state.schemas)
    except EmptySelectionError:
        summary.selected = 0  # the metrics of a run that failed for it say so: the gauge to alert on
        raise
    summary.selected = inventory.selected_count
    for label, target in inventory.targets.items():
        if target.schema_read is not None:  # a fresh read: later runs skip it while it stays fresh
            journal.record("schema", region=label, **target.schema_read)
    intent = Intent(spec, inventory, journal.state)
    # a slice of images at a time: the event loop (the group commit, the signals, the metrics) is not held up by a
    # large catalogue's plan (nothing writes the journal meanwhile)
    with _long_lived():
        plan = await _sliced(intent.plan_sliced())
    # an event per image that another image references (its referrers wait for it), not one per image
    referenced = {target for refs in intent.references.refs.values() for target in refs.values()}
    finished = {p.image.id: anyio.Event() for p in plan.images if p.image.id in referenced}
    run = Running(spec, journal, clients, engine, summary, inventory, intent, plan, finished)
    summary.plan = plan
    if summary.downstream is not None:
        summary.downstream.emit(PlanReady(len(plan.images), plan.step_count, plan.bytes))
    summary.unavailable.update({label: t.error for label, t in inventory.targets.items() if t.error})
    await journal_plan(run)
    journal.record("planned", run=summary.run_id, images=len(plan.images))
    await journal.flush()
    failpoint("planned")
    return run


async def _copy(run: Running) -> None:
    """The orphan sweep, every image's copy and metadata under the capacity limit, then the prune."""
    plan, spec = run.plan, run.spec
    await sweep(run)
    limiter = anyio.CapacityLimiter(spec.transfer.images_in_flight)
    # images_in_flight workers take the images in plan order from one shared iterator (a task per image would
    # cost memory per image of the catalogue). The plan puts every referenced image before the images that
    # reference it, so a worker that waits for a reference waits for an image another worker has already taken.
    pending = iter(plan.images)

    async def worker() -> None:
        for number, image_plan in enumerate(pending, start=1):
            if number % PLAN_SLICE == 0:  # an image in sync may finish without waiting for anything: let the
                await anyio.lowlevel.checkpoint()  # loop's other tasks run between slices of an idle rerun
            await image_task(run, image_plan, limiter)

    async with anyio.create_task_group() as tg:
        for _ in range(min(spec.transfer.images_in_flight, len(plan.images))):
            tg.start_soon(worker)
    await prune(run)  # after the copies, like rclone's default --delete-after
    if plan.prune is None or plan.prune.refused is None:
        # the baseline a later prune compares with: a refused selection never becomes the baseline, so a
        # broken source keeps being refused night after night until someone raises the limit for a run
        run.journal.record("selection", count=len(run.inventory.images))


# === plan


async def plan_only(spec: JobSpec) -> tuple[Plan, Inventory]:
    """Discover and plan without changing anything (``imgmig plan``, ``run --dry-run``); no lock taken."""
    state = Journal.read(spec.run.journal_dir, spec.name, packed=True)
    config, retry = transport_config(spec), retry_policy(spec)
    async with new_session(config) as session:
        inventory = await discover(spec, Clients(spec, session, retry), state.schemas)
    return Intent(spec, inventory, state).plan(), inventory
