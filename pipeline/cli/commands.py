"""The subcommands: each loads the job, calls the layer that does the work, and prints the outcome. Only the
CLI prints (``print`` is allowed in this package alone)."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import anyio

from pipeline.cli.output import OUTPUT
from pipeline.errors import ExitCode, ImgmigError, UsageError, first_error
from pipeline.report.logs import bind_run
from pipeline.units import clip, format_duration, format_size, format_table

__all__ = ["cmd_check", "cmd_copy", "cmd_emulate", "cmd_plan", "cmd_report", "cmd_restore", "cmd_run", "cmd_status",
           "cmd_verify"]  # fmt: skip


def _load(path: Path, *, need_secrets: bool = True, args: argparse.Namespace | None = None, write: bool = False,
          metrics_file: Path | None = None, spool_dir: Path | None = None) -> Any:  # fmt: skip
    """The job file, as the shard ``--shard``/``--shards`` in ``args`` names (if any), with its paths checked
    (``run.paths.check_paths``: a file in the way of a directory always; with ``write``, that each can be
    created and written): a path problem is a job-file problem, exit 2, before any work."""
    from pipeline.config import load_job, override, shard_from_args
    from pipeline.run.paths import check_paths

    shard = None
    if args is not None:  # the command line is checked before the file is read
        shard = shard_from_args(getattr(args, "shard", None), getattr(args, "shards", None), os.environ)
    spec = load_job(path, os.environ, need_secrets=need_secrets)
    bind_run(spec.name, shard=str(shard) if shard is not None else None)
    _warn_old_journal(spec)
    if shard is not None or spool_dir is not None:
        spec = override(spec, shard=shard, spool_dir=spool_dir)
    check_paths(spec, write=write, metrics_file=metrics_file)
    return spec


def _warn_old_journal(spec: Any) -> None:
    """A journal where an older imgmig kept it (its relative journal_dir taken from the working directory, not
    from the job file's directory): named, with the one command that moves it."""
    from pipeline.state.journal import SNAPSHOT

    journal, base = spec.run.journal_dir, spec.path.absolute().parent if spec.path is not None else None
    if base is None or not journal.is_relative_to(base) or (journal / SNAPSHOT).exists():
        return
    old = Path.cwd() / journal.relative_to(base)
    if old != journal and (old / SNAPSHOT).exists():
        OUTPUT.warning(
            f"job {spec.name!r} keeps its journal in {journal} (journal_dir is relative to the "
            f"job file), but one is in {old}, where it was relative to the working directory. Move it there "
            f"once: mkdir -p {shlex.quote(str(journal.parent))} && mv {shlex.quote(str(old))} "
            f"{shlex.quote(str(journal))}"
        )


def _run_async(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in an event loop. An error that a task group wrapped in an exception group is raised as itself
    when it is one of ours (``first_error``): a user's mistake met in a concurrent step (a wrong target region)
    is one paragraph and its exit code, not a traceback."""
    try:
        return anyio.run(fn)
    except BaseExceptionGroup as group:
        error = first_error(group)
        if isinstance(error, ImgmigError):
            raise error from group
        raise


def cmd_run(args: argparse.Namespace) -> int:
    spec = _load(args.job, args=args, write=not args.dry_run, metrics_file=args.metrics_file,
                 spool_dir=args.spool_dir)  # fmt: skip
    return run_spec(args, spec)


def cmd_copy(args: argparse.Namespace) -> int:
    from pipeline.run.oneoff import copy_job
    from pipeline.run.paths import check_paths

    job = copy_job(args.images, source=args.source, targets=args.targets, os_cloud=args.os_cloud,
                   environ=os.environ, enable_download=args.enable_download)  # fmt: skip
    bind_run(job.spec.name)
    if args.save is not None:
        _save_job(args.save, job.toml())
    check_paths(job.spec, write=not args.dry_run)
    return run_spec(args, job.spec)


def _save_job(path: Path, text: str) -> None:
    """Write the copy's job file; an existing file is replaced only when it is the same job (a rerun)."""
    import tomllib

    if path.exists():
        try:
            same = tomllib.loads(path.read_text(encoding="utf-8")) == tomllib.loads(text)
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            same = False
        if not same:
            raise UsageError(f"--save {path}: the file exists and holds something else; it is left as it is. "
                             "Name a new file, or remove that one")  # fmt: skip
        return
    try:
        if path.parent != Path() and not path.parent.exists():
            path.parent.mkdir(parents=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write --save {path}: {exc.strerror or exc}") from exc


def run_spec(args: argparse.Namespace, spec: Any) -> int:
    """Run (or with ``--dry-run`` plan) a loaded job as ``imgmig run`` does: progress, summary, report, metrics."""
    from pipeline.config import override
    from pipeline.run.runner import RunControls, new_run_id, run_job
    from pipeline.units import parse_duration

    max_runtime = None
    if getattr(args, "max_runtime", None) is not None:
        try:
            max_runtime = parse_duration(args.max_runtime)
        except ValueError as exc:
            raise UsageError(f"--max-runtime {args.max_runtime!r}: {exc}") from exc
    if args.dry_run:
        return _print_plan(spec, as_json=getattr(args, "json", False), dry_run=True)
    reporter = _Reporter(tty=sys.stderr.isatty() and not args.no_progress and not OUTPUT.json_lines)
    metrics = _metrics_file(args, spec)
    spec = override(spec, max_runtime=max_runtime)
    run_id = new_run_id()
    bind_run(spec.name, run_id, str(spec.shard) if spec.shard is not None else None)  # the CLI's lines too
    controls = RunControls(reporter=reporter, metrics=metrics, run_id=run_id)
    if metrics is not None:
        from pipeline.report.events import TeeReporter

        controls.reporter = TeeReporter(reporter, metrics)
    try:
        summary = _run_async(lambda: run_job(spec, controls))
    except ImgmigError as exc:
        if exc.summary is not None:  # a fatal error: still report what was done, then its own exit code
            _finish_run(args, exc.summary, spec, metrics)
        raise
    finally:
        reporter.close()
    _finish_run(args, summary, spec, metrics)
    code: int = summary.exit_code
    return code


def _metrics_file(args: argparse.Namespace, spec: Any) -> Any:
    path = getattr(args, "metrics_file", None) or spec.run.metrics_file
    if path is None:
        return None
    from pipeline.report.metrics import MetricsFile

    if spec.shard is not None:  # one file per shard (node_exporter reads every *.prom), with a shard label
        path = path.with_name(f"{path.stem}.{spec.shard.directory}{path.suffix}")
    shard = str(spec.shard) if spec.shard is not None else None
    return MetricsFile(path, spec.name, shard, source_region=spec.source.region)


def _finish_run(args: argparse.Namespace, summary: Any, spec: Any, metrics: Any) -> None:
    if getattr(args, "report", None) is not None:
        from pipeline.report.streamed import json_pieces

        # streamed: its steps (and its plan's images) are made one at a time as they are written
        _write_private(args.report, json_pieces(summary.to_json(lazy=True)))
    if metrics is not None:
        from pipeline.state.journal import Journal
        from pipeline.state.records import last_success

        try:
            previous = last_success(Journal.read(spec.run.journal_dir, spec.name, packed=True).runs)
            metrics.write(summary, final=True, last_success=previous, requests=summary.requests.counts)
        except (OSError, ImgmigError) as exc:  # the metrics never change the run's exit code
            OUTPUT.warning(f"cannot write the metrics file {metrics.path}: {exc}")
    if OUTPUT.json_logs:  # the whole summary as one event, numbers as numbers (each step has had its own line)
        import structlog

        doc = {k: v for k, v in summary.to_json().items() if k not in ("steps", "plan", "job", "run_id")}
        structlog.get_logger("imgmig").info("run_finished", **doc)
    if getattr(args, "json", False):  # imgmig copy --json: the report on stdout
        OUTPUT.document(summary.to_json(), as_json=True)
    elif not OUTPUT.json_lines:
        print(summary.render())


class _Reporter:
    """Log lines always; progress bars on a TTY, created once the plan says how many bytes to expect."""

    def __init__(self, *, tty: bool) -> None:
        from pipeline.report.progress import LogReporter

        self.tty = tty
        self.bars: Any = None
        self.log = LogReporter(every=0.0 if tty else 10.0)

    def emit(self, event: Any) -> None:
        from pipeline.report.events import PlanReady

        if isinstance(event, PlanReady):
            self.log.total = event.bytes
            if self.tty and event.bytes:
                from pipeline.report.progress import TqdmReporter

                self.bars = TqdmReporter(total=event.bytes)
        if self.bars is not None:
            self.bars.emit(event)
        self.log.emit(event)

    def close(self) -> None:
        if self.bars is not None:
            self.bars.close()


def _print_plan(spec: Any, *, as_json: bool, dry_run: bool = False, inspect: bool = False) -> int:
    from pipeline.plan.planner import Action
    from pipeline.run.headcheck import plan_inspected
    from pipeline.run.runner import plan_only

    verdicts: dict[str, dict[str, Any]] | None = None
    if inspect:
        plan, inventory, verdicts = _run_async(lambda: plan_inspected(spec))
    else:
        plan, inventory = _run_async(lambda: plan_only(spec))
    unavailable = {k: t.error for k, t in inventory.targets.items() if t.error}
    # what the run would exit with: 1 when something is blocked, not portable, refused or unreachable, or prune
    # refuses
    failed = (Action.BLOCKED, Action.NOT_PORTABLE, Action.REFUSED)
    failing = unavailable or any(step.action in failed for _, step in plan.steps()) or (
        plan.prune is not None and plan.prune.refused)  # fmt: skip
    allow = spec.copy.allow_format_mismatch  # a head inspected now that a run would refuse
    failing = failing or any(v.get("inspected") and (not v.get("safe") or (v.get("mismatch") and not allow))
                             for v in (verdicts or {}).values())  # fmt: skip
    code = ExitCode.FAILED if failing else ExitCode.OK
    if as_json or OUTPUT.json_lines:
        doc = plan.to_json(lazy=not OUTPUT.json_lines)
        doc["job"] = spec.name
        doc["unavailable_targets"] = unavailable
        if verdicts is not None:
            doc["inspected"] = verdicts
        doc["exit_code"] = int(code)
        if OUTPUT.json_lines:
            OUTPUT.document(doc, as_json=True)
        else:  # its images written one per line as they are made: no second copy of a large plan
            from pipeline.run.status import write_status_json

            write_status_json(doc, sys.stdout)
        return code
    rows: list[tuple[object, ...]] = [("IMAGE", "NAME", "TARGET", "ACTION", "BYTES", "REASON")]
    steps = sorted(plan.steps(), key=lambda pair: (pair[0].image.name or "", pair[0].image.id, pair[1].target))
    for image_plan, step in steps:
        rows.append((image_plan.image.id, clip(image_plan.image.name or "", 32), step.target, step.action.value,
                     format_size(step.bytes), step.reason))  # fmt: skip
    rows += _prune_rows(plan)
    print(format_table(rows))
    if verdicts is not None:
        print("\n" + format_table(_inspection_rows(plan, verdicts)))
    counts = ", ".join(f"{k} {v}" for k, v in plan.counts().items() if v)
    prefix = "dry run: " if dry_run else ""
    print(f"\n{prefix}{len(plan.images)} images x {len(plan.targets)} targets: {counts or 'nothing'}; "
          f"{format_size(plan.bytes)} to write")  # fmt: skip
    for label, target in inventory.targets.items():
        if target.error:
            print(f"UNAVAILABLE {label}: {target.error}")
    for note in plan.notes:
        print(f"note: {note}")
    if plan.prune is not None and plan.prune.refused:
        print(f"PRUNE REFUSED: {plan.prune.refused}")
    return code


def _inspection_rows(plan: Any, verdicts: dict[str, dict[str, Any]]) -> list[tuple[object, ...]]:
    """``plan --inspect``'s table: per source, its label, what its head is, and the verdict (or why not read)."""
    rows: list[tuple[object, ...]] = [("IMAGE", "NAME", "LABEL", "CONTENT", "VERDICT")]
    for image_plan in sorted(plan.images, key=lambda p: (p.image.name or "", p.image.id)):
        image, seen = image_plan.image, verdicts.get(image_plan.image.id)
        if seen is None:
            continue
        label = image.raw.get("disk_format") or "-"
        if not seen.get("inspected"):
            rows.append((image.id, clip(image.name or "", 32), label, "-", f"not inspected: {seen.get('reason')}"))
            continue
        verdict = "safe" if seen.get("safe") and not seen.get("mismatch") else str(seen.get("reason"))
        if seen.get("safe") and seen.get("mismatch"):
            verdict = f"mismatch: {seen.get('reason')}"
        elif not seen.get("safe"):
            verdict = f"UNSAFE: {seen.get('reason')}"
        origin = " (journalled)" if seen.get("journalled") else ""
        rows.append((image.id, clip(image.name or "", 32), label, f"{seen.get('format')}{origin}", verdict))
    return rows


def _prune_rows(plan: Any) -> list[tuple[object, ...]]:
    """The plan's table rows for ``[prune]``: each deletion or retirement, each copy kept, each retired copy (with
    when it is deleted, or that it is, with prune off, only listed)."""
    from pipeline.plan.provenance import iso_time

    pruning = plan.prune
    gone = "its source is no longer selected or gone"
    grace = pruning.grace if pruning is not None else None
    out: list[tuple[object, ...]] = []
    listed = []
    if pruning is not None:
        retire = "retire" if pruning.retires else "delete"
        listed += [(d, retire, gone + (f" (deleted {format_duration(grace)} later)" if grace else "")) for d in
                   pruning.deletions]  # fmt: skip
        listed += [(d, "keep", gone + " (protected; prune_protected = false)") for d in pruning.kept]
        listed += [(d, "keep", gone + " (adopted; [prune] adopted = false)") for d in pruning.kept_adopted]
        listed += [(d, "delete", "retired, and its grace period is over") for d in pruning.expired]
        listed += [(d, "retire", "its retirement was cut short: completed") for d in pruning.unfinished]
    for deletion, action, why in listed:
        out.append((deletion.source_id, clip(deletion.copy.name or "", 32), deletion.target, f"prune:{action}",
                    format_size(0), f"copy {deletion.copy.id}: {why}"))  # fmt: skip
    handled = {d.copy.id for d, _, _ in listed}
    for old in plan.retired:
        if old.copy.id in handled:
            continue
        when = (f"deleted by the first run with prune on after {iso_time(old.deleted_after(grace))}" if pruning
                is not None else "kept while prune is off (imgmig restore brings it back)")  # fmt: skip
        out.append((old.source_id, clip(old.copy.name or "", 32), old.target, "retired", format_size(0),
                    f"copy {old.copy.id}, retired at {iso_time(old.at)}: {when}"))  # fmt: skip
    return out


def cmd_plan(args: argparse.Namespace) -> int:
    return _print_plan(_load(args.job, args=args), as_json=args.json, inspect=args.inspect)


def cmd_status(args: argparse.Namespace) -> int:
    from pipeline.run.status import render_status, status_view, write_status_json

    spec = _load(args.job, need_secrets=False, args=args)
    view = status_view(spec)
    if args.json:
        write_status_json(view, sys.stdout)  # the images as they are made: no second copy of the journal
    else:
        print(render_status(view))
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from pipeline.run.restore import restore_job

    spec = _load(args.job, args=args, write=True)
    report = _run_async(lambda: restore_job(spec, args.images))
    if args.json or OUTPUT.json_lines:
        OUTPUT.document(report.to_json(), as_json=True)
    else:
        rows: list[tuple[object, ...]] = [("SOURCE", "NAME", "TARGET", "COPY", "RETIRED AT", "RESULT")]
        rows += [(r["source_id"], clip(r["name"] or "", 32), r["target"], r["target_id"], r["retired_at"],
                  r["state"] + (f": {r['error']}" if r.get("error") else "")) for r in report.rows]  # fmt: skip
        print(format_table(rows) if report.rows else f"job {spec.name}: no retired copy to restore")
    return 0 if report.ok else 1


def cmd_verify(args: argparse.Namespace) -> int:
    from pipeline.run.verify import verify_job

    spec = _load(args.job, args=args)
    report = _run_async(lambda: verify_job(spec, deep=args.deep))
    if args.json or OUTPUT.json_lines:
        OUTPUT.document(report.to_json(), as_json=True)
    else:
        rows = [("IMAGE", "NAME", "TARGET", "STATUS", "DETAILS")]
        rows += [(f.image_id, clip(f.name or "", 32), f.target, f.status,
                  "; ".join(f.details + f.notes + ([f"format {f.format}"] if f.format else [])))
                 for f in report.findings]  # fmt: skip
        print(format_table(rows))
        counts = ", ".join(f"{k} {v}" for k, v in report.counts().items())
        print(f"\nverify{' --deep' if args.deep else ''}: {counts or 'nothing selected'}")
    return 0 if report.ok else 1


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.run.htmlreport import build_report

    spec = _load(args.job, need_secrets=False, args=args)
    _write_private(args.html, build_report(spec.run.journal_dir, spec.name, args.run))
    print(f"wrote {args.html}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from pipeline.run.checks import check_job

    report = _run_async(lambda: check_job(_load(args.job)))
    OUTPUT.document(report.to_json(), as_json=args.json, text=report.render())
    if report.error is not None:
        raise report.error  # one paragraph on stderr and its exit code (1 unreachable, 2 region, 4 refused)
    return 0


def cmd_emulate(args: argparse.Namespace) -> int:
    from pipeline.emulator.identity import load_users
    from pipeline.emulator.serve import info_line, running_emulator

    regions = [r.strip() for r in args.regions.split(",") if r.strip()]
    if not regions or len(set(regions)) != len(regions):
        raise UsageError("--regions needs one or more distinct region names, e.g. KR1,KR2,JP1")
    users = None
    if args.users is not None:
        try:
            users = load_users(args.users)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"cannot read users file {args.users}: {exc}") from exc
    if args.data_dir is not None:
        args.data_dir.mkdir(parents=True, exist_ok=True)
    tls = _server_tls(args.tls_cert, args.tls_key)

    async def serve() -> None:
        async with running_emulator(
            regions,
            port=args.port,
            data_dir=args.data_dir,
            seed=args.seed,
            token_ttl=args.token_ttl,
            users=users,
            tls=tls,
            download_rule=not args.glance_downloads,
            disk_formats=args.disk_formats,
            container_formats=args.container_formats,
        ) as emu:
            print(info_line(emu), flush=True)
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    return

    try:
        anyio.run(serve)
    except OSError as exc:
        raise UsageError(f"cannot start the emulator: {exc}") from exc
    return 0


def _server_tls(cert: Path | None, key: Path | None) -> Any:
    """An HTTPS server context for the emulator, or None."""
    if (cert is None) != (key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    if cert is None:
        return None
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load --tls-cert/--tls-key: {exc}") from exc
    return context


def _write_private(path: Path, text: str | Iterable[str]) -> None:
    """Write a report readable only by its owner (0600; a new directory only the owner can enter), replaced
    atomically: a reader, or a job that keeps the last report, never sees half of one."""
    from pipeline.files import atomic_write
    from pipeline.report.streamed import joined

    blocks = joined([text] if isinstance(text, str) else text)
    try:
        if path.parent != Path() and not path.parent.exists():
            path.parent.mkdir(mode=0o700, parents=True)
        target = path.resolve() if path.is_symlink() else path  # a link keeps pointing where it did
        if target.exists() and not target.is_file():  # /dev/stdout, a FIFO: written through, as they are
            with target.open("wb") as fh:
                for block in blocks:
                    fh.write(block)
        else:
            atomic_write(target, blocks, mode=0o600)
    except OSError as exc:
        raise UsageError(f"cannot write the report {path}: {exc.strerror or exc}") from exc
