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
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import structlog

from pipeline.cloud.retry import RetryBudget, spending
from pipeline.cloud.transport import new_session
from pipeline.config.spec import JobSpec
from pipeline.errors import ApiError, ImgmigError, JournalError, first_error
from pipeline.models import Image
from pipeline.plan.intent import Intent
from pipeline.plan.planner import Action, ImagePlan, Plan, Step
from pipeline.report.events import PlanReady, Reporter
from pipeline.report.metrics import MetricsFile, last_success
from pipeline.report.summary import EXIT_FAILED, RunSummary, StepFinished
from pipeline.run.gate import download_enabled, restore_left_open
from pipeline.run.inventory import Clients, Inventory, discover, retry_policy, transport_config
from pipeline.run.metasync import Desired, apply_metadata, create_fields
from pipeline.state.failpoints import failpoint
from pipeline.state.journal import JobLock, Journal
from pipeline.transfer.copies import delete_copy
from pipeline.transfer.engine import Engine, EngineHooks, EngineSettings, TargetResult, TargetSpec
from pipeline.transfer.source import Bandwidth

__all__ = ["RunOptions", "plan_only", "run_job"]

log = structlog.get_logger("imgmig")

#: Group commit: the journal is fsynced at most this often (a process crash loses nothing written;
#: a power cut at most this window, which the provenance properties let the next run recover).
SYNC_EVERY = 5.0
#: How often the metrics file is rewritten during a run.
METRICS_EVERY = 30.0


@dataclass
class RunOptions:
    max_runtime: float | None = None
    spool_dir: Path | None = None
    reporter: Reporter | None = None
    #: Prometheus metrics: rewritten every METRICS_EVERY seconds while the run goes on (the caller writes
    #: the final file, which needs the exit code).
    metrics: MetricsFile | None = None
    #: Signals that stop the run cleanly; tests may pass () to leave signal handling alone.
    signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)
    clock: Callable[[], float] = time.monotonic


@dataclass
class _Run:
    spec: JobSpec
    options: RunOptions
    journal: Journal
    clients: Clients
    engine: Engine
    summary: RunSummary
    inventory: Inventory | None = None
    intent: Intent | None = None
    max_runtime: float | None = None
    work: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    stop: str | None = None  # "parked", "SIGINT", "SIGTERM"


async def run_job(spec: JobSpec, options: RunOptions | None = None) -> RunSummary:
    """Run ``spec`` once; returns the summary (its ``exit_code`` is the process exit code)."""
    options = options or RunOptions()
    lock = JobLock(spec.run.journal_dir, spec.name)
    with lock.held():
        journal = Journal.open(spec.run.journal_dir, spec.name)
        summary = RunSummary(job=spec.name, run_id=uuid.uuid4().hex[:12])
        try:
            journal.record("run_started", run=summary.run_id, pid=os.getpid())
            try:
                await _run(spec, options, journal, summary)
            except Exception as exc:
                error = first_error(exc)
                if error is exc:
                    raise
                raise error from exc
        except BaseException as exc:
            summary.fatal = summary.fatal or _describe(exc)
            summary.fatal_code = exc.exit_code if isinstance(exc, ImgmigError) else EXIT_FAILED
            summary.finish(options.clock)
            if not isinstance(exc, JournalError):
                _finish_journal(journal, summary)
            if isinstance(exc, ImgmigError):
                exc.summary = summary  # the CLI still writes --report and prints what was done
            raise
        else:
            summary.finish(options.clock)
            _finish_journal(journal, summary)
        finally:
            _close(journal)
            summary.journal_records, summary.journal_seconds = journal.records, journal.seconds
    return summary


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, ImgmigError) else f"{type(exc).__name__}"


def _finish_journal(journal: Journal, summary: RunSummary) -> None:
    with contextlib.suppress(JournalError):  # an unwritable journal already stopped the run, loudly
        journal.record("run_finished", run=summary.run_id, outcome=summary.outcome,
                       exit_code=summary.exit_code, summary=summary.counts())  # fmt: skip


def _close(journal: Journal) -> None:
    with contextlib.suppress(JournalError):
        journal.close()


async def _run(spec: JobSpec, options: RunOptions, journal: Journal, summary: RunSummary) -> None:
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
        spool_dir=options.spool_dir or transfer.spool_dir, backoff=retry, job=spec.name,
    )  # fmt: skip
    regional = {region: Bandwidth(rate) for region, rate in transfer.region_bandwidth.items()}
    async with new_session(config) as session:
        engine = Engine(settings, reporter=summary.reporter(options.reporter),
                        source_bandwidth=Bandwidth(transfer.bandwidth), region_bandwidth=regional)  # fmt: skip
        run = _Run(spec, options, journal, Clients(spec, session, retry, summary.requests), engine, summary)
        run.max_runtime = options.max_runtime if options.max_runtime is not None else spec.run.max_runtime
        async with anyio.create_task_group() as tg:
            if options.signals:
                tg.start_soon(_watch_signals, run, options.signals)
            tg.start_soon(_group_commit, journal)
            if options.metrics is not None:
                tg.start_soon(_write_metrics, options.metrics, summary, last_success(journal.state.runs))
            await _execute(run)
            tg.cancel_scope.cancel()
        summary.tokens_issued = run.clients.tokens_issued()
        if run.stop in ("SIGINT", "SIGTERM"):
            summary.interrupted = run.stop
        elif run.stop == "parked":
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


async def _watch_signals(run: _Run, signals: tuple[signal.Signals, ...]) -> None:
    with anyio.open_signal_receiver(*signals) as received:
        async for signum in received:
            run.stop = signal.Signals(signum).name
            log.warning("interrupted", job=run.spec.name, signal=run.stop,
                        message="stopping: nothing new starts, transfers in flight are cancelled")  # fmt: skip
            run.work.cancel()
            return


async def _execute(run: _Run) -> None:
    spec = run.spec
    with run.work:
        if run.max_runtime:
            # at the deadline nothing new starts and work in flight is cancelled (parked, resumable)
            run.work.deadline = anyio.current_time() + run.max_runtime
        await _discover_and_copy(run)
    if run.work.cancelled_caught and run.stop is None:
        run.stop = "parked"
        log.warning("max_runtime_reached", job=spec.name,
                    message="max_runtime reached: work in flight parked; the next run resumes")  # fmt: skip
        assert run.summary.plan is not None
        done = {(s.image_id, s.target) for s in run.summary.steps}
        run.summary.parked_images = sum(
            1 for p in run.summary.plan.images
            if any(st.action is not Action.SKIP and (p.image.id, st.target) not in done for st in p.steps)
        )  # fmt: skip


async def _discover_and_copy(run: _Run) -> None:
    spec, summary = run.spec, run.summary
    if run.journal.state.open_sources:  # before anything else: what an interrupted run left switched on
        source = run.clients.client(spec.source.auth, spec.source.region)
        summary.sources_left_open.update(await restore_left_open(source, run.journal))
    inventory = await discover(spec, run.clients)
    run.inventory = inventory
    run.intent = Intent(spec, inventory, run.journal.state)
    plan = run.intent.plan()
    summary.plan = plan
    if summary.downstream is not None:
        summary.downstream.emit(PlanReady(len(plan.images), sum(1 for _ in plan.steps()), plan.bytes))
    summary.unavailable.update({label: t.error for label, t in inventory.targets.items() if t.error})
    _journal_plan(run, plan, inventory)
    await run.journal.flush()
    failpoint("planned")
    await _sweep(run, plan, inventory)
    limiter = anyio.CapacityLimiter(spec.transfer.images_in_flight)
    async with anyio.create_task_group() as tg:
        for image_plan in plan.images:
            tg.start_soon(_image_task, run, image_plan, limiter)


# === plan


async def plan_only(spec: JobSpec) -> tuple[Plan, Inventory]:
    """Discover and plan without changing anything (``imgmig plan``, ``run --dry-run``); no lock taken."""
    state = Journal.read(spec.run.journal_dir, spec.name)
    config, retry = transport_config(spec), retry_policy(spec)
    async with new_session(config) as session:
        inventory = await discover(spec, Clients(spec, session, retry))
    return Intent(spec, inventory, state).plan(), inventory


def _journal_plan(run: _Run, plan: Plan, inventory: Inventory) -> None:
    """One record per image, holding the plan of each of its targets (a write per image, not per step)."""
    unavailable = {label: t.error for label, t in inventory.targets.items() if t.error is not None}
    for image_plan in plan.images:
        image = image_plan.image
        steps: dict[str, dict[str, Any]] = {}
        for step in image_plan.steps:
            steps[step.target] = {"action": step.action.value, "reason": step.reason, "state": "planned"}
            if step.existing is not None:
                steps[step.target]["target_id"] = step.existing.id
        for label, error in unavailable.items():
            steps[label] = {"action": "copy", "state": "failed", "error": error}
        run.journal.record("image", image_id=image.id, name=image.name, size=image.size, checksum=image.checksum,
                           status=image.status, skipped=image_plan.skipped, plan=steps)  # fmt: skip
    for missing in inventory.missing_ids:
        run.journal.record("image", image_id=missing, status="missing", skipped="selected id not found in the source")


async def _sweep(run: _Run, plan: Plan, inventory: Inventory) -> None:
    """Delete duplicate and leftover copies of this job (the orphan sweep); each image's provenance is
    re-checked on the image itself before it is deleted (``copies.delete_copy``)."""
    for image_plan, step in plan.steps():
        for extra in step.extra:
            target = inventory.targets[step.target]
            try:
                deleted = await delete_copy(target.client, extra, run.spec.name)
            except ApiError as exc:
                log.warning("orphan_delete_failed", image_id=image_plan.image.id, target=step.target,
                            target_image=extra.id, error=str(exc))  # fmt: skip
                continue
            if not deleted:
                log.warning(
                    "orphan_not_ours",
                    image_id=image_plan.image.id,
                    target=step.target,
                    target_image=extra.id,
                    message="no longer carries this job's provenance; left alone",
                )
                continue
            run.summary.orphans_deleted += 1
            failpoint("swept")
            run.journal.record("target", image_id=image_plan.image.id, region=step.target, deleted=extra.id)


# === one image


class _Hooks(EngineHooks):
    def __init__(self, run: _Run, image: Image) -> None:
        self.run, self.image = run, image

    async def creating(self, region: str, image_id: str) -> None:
        self.run.journal.record("target", image_id=self.image.id, region=region, creating=image_id)

    async def created(self, region: str, image_id: str) -> None:
        self.run.journal.record("target", image_id=self.image.id, region=region, created=image_id)

    async def deleted(self, region: str, image_id: str) -> None:
        self.run.journal.record("target", image_id=self.image.id, region=region, deleted=image_id)


async def _image_task(run: _Run, plan: ImagePlan, limiter: anyio.CapacityLimiter) -> None:
    assert run.inventory is not None
    unreadable = run.inventory.image_errors.get(plan.image.id)
    if unreadable is not None:
        for step in plan.steps:
            _record_step(run, plan.image, step, "failed", error=unreadable)
        return
    async with limiter:
        try:
            await _copy_image(run, plan)
        except Exception as exc:  # one image's failure is recorded; the job goes on unless it is fatal
            error = first_error(exc)
            if isinstance(error, ImgmigError) and error.fatal:
                raise error from exc
            if not isinstance(error, ImgmigError):
                raise
            finished = {(s.image_id, s.target) for s in run.summary.steps}
            for step in plan.steps:
                if (plan.image.id, step.target) not in finished:
                    _record_step(run, plan.image, step, "failed", error=str(error))


async def _copy_image(run: _Run, plan: ImagePlan) -> None:
    inventory, intent = run.inventory, run.intent
    assert inventory is not None
    assert intent is not None
    image = plan.image
    data_steps = [s for s in plan.steps if s.action.moves_data]
    results: dict[str, TargetResult] = {}
    if data_steps:
        specs = []
        for step in data_steps:
            target = inventory.targets[step.target]
            fields = create_fields(image, intent.desired(image, step.target))
            entry = run.journal.state.target(image.id, step.target)
            specs.append(TargetSpec(step.target, target.client, fields, existing=step.existing,
                                    algorithms=target.algorithms,
                                    pending_id=entry.creating if entry is not None else None))  # fmt: skip
        # NHN: a gated source is switched on just for this read, and restored once every target is done
        gate = download_enabled(inventory.source, run.journal, image) if plan.enable_download else None
        try:
            async with gate or contextlib.nullcontext():
                await run.engine.copy_image(inventory.source, image, specs, hooks=_Hooks(run, image), results=results)
        except ApiError as exc:  # only opening the gate raises one: the engine reports per target
            why = f"cannot switch on the source's download permission (nhncloud_allow_download): {exc}"
            for step in data_steps:
                results.setdefault(step.target, TargetResult(step.target, state="failed", error=why))
        finally:
            # synchronous journal writes: they complete even while the task is being cancelled
            for step in data_steps:
                result = results.get(step.target)
                if result is not None and result.state != "done":
                    _record_step(run, image, step, result.state, result=result, error=result.error)
    for step in plan.steps:
        result = results.get(step.target)
        if step.action.moves_data and (result is None or result.state != "done"):
            continue
        await _finish_step(run, image, step, result)


async def _finish_step(run: _Run, image: Image, step: Step, result: TargetResult | None) -> None:
    """Metadata for a verified copy (or a metadata-only step), then the step's final record."""
    if step.action is Action.SKIP:
        _record_step(run, image, step, "skipped" if step.reason != "up to date" else "done")
        return
    if step.action is Action.BLOCKED:  # nothing was created anywhere; the reason says what to do
        _record_step(run, image, step, "failed", error=step.reason)
        return
    assert run.inventory is not None
    assert run.intent is not None
    target = run.inventory.targets[step.target]
    target_id = result.target_id if result is not None else (step.existing.id if step.existing else None)
    assert target_id is not None
    budget = result.budget if result is not None else RetryBudget(run.spec.transfer.retries)
    try:
        with spending(budget):  # the metadata step spends the same retry budget as the copy before it
            copy = await target.client.get_image(target_id)
            members = await target.client.list_members(target_id) if copy.visibility == "shared" else []
            desired = run.intent.desired(image, step.target)
            diff = run.intent.diff(image, step.target, copy, members)
            acceptors = await _acceptors(run, step.target, desired)
            report = await apply_metadata(target.client, copy, desired, diff, acceptors=acceptors)
            failpoint("synced")
            for stale in step.stale:
                await delete_copy(target.client, stale, run.spec.name)
                failpoint("replaced")
                run.journal.record("target", image_id=image.id, region=step.target, deleted=stale.id)
    except ApiError as exc:
        _record_step(run, image, step, "failed", result=result, error=f"metadata: {exc}", target_id=target_id)
        return
    _record_step(run, image, step, "done", result=result, target_id=target_id, problems=report.problems,
                 pending=report.pending_members, managed=report.managed, changed=report.changed)  # fmt: skip


async def _acceptors(run: _Run, label: str, desired: Desired) -> dict[str, Any]:
    """Clients able to accept a membership in this target's region: one per profile tenant."""
    spec = run.spec
    if not spec.copy.accept_members_with or not desired.members:
        return {}
    region = run.inventory.targets[label].endpoint.region if run.inventory else label
    out = {}
    for profile in spec.copy.accept_members_with:
        tenant = await run.clients.tenant(profile)
        if tenant and tenant in desired.members:
            out[tenant] = run.clients.client(profile, region)
    return out


def _record_step(
    run: _Run, image: Image, step: Step, state: str, *, result: TargetResult | None = None,
    error: str | None = None, target_id: str | None = None, problems: list[str] | None = None,
    pending: list[str] | None = None, managed: list[str] | None = None, changed: bool = False,
) -> None:  # fmt: skip
    # a final record: empty fields are left out (the journal state resets them)
    fields: dict[str, Any] = {"state": state}
    if error:
        fields["error"] = error
    if result is not None:
        fields["bytes"], fields["attempts"] = result.bytes, result.attempts
        if result.evidence is not None:
            fields["evidence"] = result.evidence.to_json()
        target_id = target_id or result.target_id
    if target_id:
        fields["target_id"] = target_id
    if state == "done":
        fields["source_checksum"] = image.checksum
    if problems:
        fields["problems"] = problems
    if pending:
        fields["pending_members"] = pending
    if managed is not None:
        fields["metadata"] = ",".join(managed)
    run.journal.record("target", image_id=image.id, region=step.target, **fields)
    run.summary.step_finished(StepFinished(
        image_id=image.id, name=image.name, target=step.target, action=step.action.value, state=state,
        bytes=result.bytes if result else 0, error=error, reason=step.reason, problems=tuple(problems or ()),
        pending_members=tuple(pending or ()), changed=changed, target_id=target_id,
    ))  # fmt: skip
