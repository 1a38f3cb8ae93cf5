"""The ``imgmig`` command line: argument parsing, logging setup, and exceptions mapped to exit codes.

This is the only module that prints. User errors become one paragraph on stderr and their exit code
(see ``EXIT_CODES_HELP``); nothing else is caught here, so a real bug still shows its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio

from pipeline import __version__
from pipeline.errors import ImgmigError, UsageError
from pipeline.report.logs import configure_logging
from pipeline.units import format_size, format_table

__all__ = ["build_parser", "main"]

EXIT_CODES_HELP = (
    "exit codes: 0 all done; 1 some image or target failed (the rest done); 2 usage or job-file error; "
    "3 another run holds the job's lock; 4 authentication failed; 10 stopped at max_runtime with work left "
    "(resumable); 130/143 interrupted by SIGINT/SIGTERM (state saved, the next run resumes)"
)
JOB_HELP = "job file (TOML), e.g. jobs/demo.toml; secrets come from the environment variables it names"


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with a one-paragraph message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"imgmig: error: {message}\n")


def _log_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-format", choices=["console", "json"],
                   help="log format on stderr (default: console on a TTY, JSON lines otherwise)")  # fmt: skip
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="least severe log level shown (default: %(default)s)")  # fmt: skip


def _add_run(sub: Any) -> None:
    p = sub.add_parser(
        "run", help="copy the job's images to every target, verified, resumable",
        description="Plan, then stream each selected image once from the source and fan it out to every target "
        "region at the same time, verifying size, md5 and os_hash_value on the fly and against what each "
        "target reports. Then copy properties, tags, visibility, members and protection. Progress is "
        "journalled; an interrupted run resumes without duplicates or orphans. " + EXIT_CODES_HELP,
    )  # fmt: skip
    p.add_argument("job", type=Path, help=JOB_HELP)
    p.add_argument("--dry-run", action="store_true", help="plan and print what would happen; change nothing")
    p.add_argument("--max-runtime", metavar="D",
                   help="start nothing new after D (e.g. 50m, 2h), park work in flight, exit 10 (resumable); "
                        "overrides [run] max_runtime")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bars, even on a TTY")
    p.add_argument("--report", type=Path, metavar="FILE.json", help="also write the summary as JSON to FILE")
    p.add_argument("--metrics-file", type=Path, metavar="FILE.prom",
                   help="write Prometheus metrics for node_exporter's textfile collector to FILE (replaced "
                        "atomically every 30 s and at the end); overrides [run] metrics_file")  # fmt: skip
    p.add_argument("--spool-dir", type=Path, metavar="DIR",
                   help="keep a local copy of each image while it transfers so target retries need not read "
                        "the source again (skipped for an image when DIR lacks free space)")  # fmt: skip
    _log_options(p)
    p.set_defaults(func=_cmd_run)


def _add_plan(sub: Any) -> None:
    p = sub.add_parser(
        "plan", help="show what a run would do, per image and target",
        description="Authenticate, list the source selection and every target's copies, and print the action "
        "(copy, resume, replace, metadata, skip) and bytes per image x target. Changes nothing. "
        "Exit 0, or 2/4 on job-file or authentication errors.",
    )  # fmt: skip
    p.add_argument("job", type=Path, help=JOB_HELP)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    _log_options(p)
    p.set_defaults(func=_cmd_plan)


def _add_status(sub: Any) -> None:
    p = sub.add_parser(
        "status", help="show the job's journal: runs and the state of each image x target",
        description="Read the job's journal (no network, no credentials needed) and show the last runs and "
        "the state of every image x target. --json prints the stable machine-readable view. "
        "Exit 0, or 2 if the job file is invalid, or 1 if the journal is unreadable.",
    )  # fmt: skip
    p.add_argument("job", type=Path, help=JOB_HELP)
    p.add_argument("--json", action="store_true", help="print the stable JSON view")
    p.set_defaults(func=_cmd_status)


def _add_verify(sub: Any) -> None:
    p = sub.add_parser(
        "verify", help="compare every copy with its source (metadata; --deep: the bytes too)",
        description="Re-read every target's copy and compare it with the source image: existence, size, "
        "checksum and os_hash_value, then properties, tags, members, visibility and protection. With --deep, "
        "download each copy and hash it. Changes nothing. Exit 0 when everything matches, 1 otherwise.",
    )  # fmt: skip
    p.add_argument("job", type=Path, help=JOB_HELP)
    p.add_argument("--deep", action="store_true", help="download and hash every copy")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    _log_options(p)
    p.set_defaults(func=_cmd_verify)


def _add_report(sub: Any) -> None:
    p = sub.add_parser(
        "report", help="write one self-contained HTML page about a run, from the journal",
        description="Read the job's journal (no network, no credentials) and write one HTML file (inline CSS "
        "and SVG, nothing fetched from anywhere): the run's totals, a timeline of every image x target (or "
        "of time buckets for large runs), throughput per target region, failures with their reasons, the "
        "plan and skipped images. The last run by default. Exit 0, 2 if the job file or the run id is wrong.",
    )  # fmt: skip
    p.add_argument("job", type=Path, help=JOB_HELP)
    p.add_argument("--html", type=Path, metavar="FILE.html", required=True, help="where to write the page (0600)")
    p.add_argument("--run", metavar="ID", help="the run to show (default: the last one; see imgmig status)")
    p.set_defaults(func=_cmd_report)


def _add_check(sub: Any) -> None:
    p = sub.add_parser(
        "check", help="authenticate every profile and resolve every region; touch no image",
        description="Authenticate every [auth.NAME] profile of the job and print, per profile, the identity "
        "kind, the project, the token's expiry and each region's image endpoint, then whether the source and "
        "every target region resolve. No image is read or changed. Exit 0 when all is well, 2 for a job-file "
        "or region problem, 4 when a credential is refused.",
    )  # fmt: skip
    p.add_argument("job", type=Path, help=JOB_HELP)
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    _log_options(p)
    p.set_defaults(func=_cmd_check)


def _add_emulate(sub: Any) -> None:
    p = sub.add_parser(
        "emulate", help="run the embedded multi-region emulator in the foreground",
        description=(
            "Run the embedded emulator of NHN Cloud identity and Image API v2 (Glance 33 behaviour) for "
            "several regions in one process, on loopback. The first line on stdout is one JSON object: "
            '{"identity_url": ..., "regions": {REGION: URL, ...}}. Any tenant, username and non-empty '
            "password is accepted unless --users says otherwise. Admin endpoints under "
            "IDENTITY/_admin/ change fault knobs and token lifetimes at runtime. Stops on SIGINT/SIGTERM (exit 0)."
        ),
    )  # fmt: skip
    p.add_argument("--regions", default="KR1,KR2,KR3,JP1",
                   help="comma-separated region names (default: %(default)s)")  # fmt: skip
    p.add_argument("--glance-downloads", action="store_true",
                   help="serve any image's data like plain Glance, without NHN's download permission "
                        "(nhncloud_allow_download must be true by default)")  # fmt: skip
    p.add_argument("--port", type=int, default=0,
                   help="identity port; regions take the next ports (default 0: ephemeral ports)")  # fmt: skip
    p.add_argument("--data-dir", type=Path, help="where image data is stored (default: a temporary directory)")
    p.add_argument("--seed", choices=["demo"], help="load a sample data set into the first region")
    p.add_argument("--token-ttl", type=float, default=3600.0, help="token lifetime in seconds (default: %(default)s)")
    p.add_argument("--tls-cert", type=Path, help="serve HTTPS with this PEM certificate chain (with --tls-key)")
    p.add_argument("--tls-key", type=Path, help="the PEM private key of --tls-cert")
    p.add_argument("--users", type=Path,
                   help='JSON users file {"users": [{"username", "password", "tenants": [...]}]}')  # fmt: skip
    p.set_defaults(func=_cmd_emulate)


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with one subparser per subcommand."""
    parser = _Parser(
        prog="imgmig",
        description="Bulk image migration for NHN Cloud Image API v2 (OpenStack Glance v2): stream each "
        "image once from a source region to every target region, verified on the fly, resumable.",
        epilog=EXIT_CODES_HELP,
    )
    parser.add_argument("--version", action="version", version=f"imgmig {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add in (_add_run, _add_plan, _add_status, _add_verify, _add_check, _add_report, _add_emulate):
        add(sub)
    return parser


# === commands


def _load(path: Path, *, need_secrets: bool = True) -> Any:
    from pipeline.config import load_job

    return load_job(path, os.environ, need_secrets=need_secrets)


def _run_async(fn: Callable[[], Any]) -> Any:
    return anyio.run(fn)


def _cmd_run(args: argparse.Namespace) -> int:
    from pipeline.config import override
    from pipeline.run.runner import RunControls, run_job
    from pipeline.units import parse_duration

    spec = _load(args.job)
    max_runtime = None
    if args.max_runtime is not None:
        try:
            max_runtime = parse_duration(args.max_runtime)
        except ValueError as exc:
            raise UsageError(f"--max-runtime {args.max_runtime!r}: {exc}") from exc
    if args.dry_run:
        return _print_plan(spec, as_json=False, dry_run=True)
    reporter = _Reporter(tty=sys.stderr.isatty() and not args.no_progress)
    metrics = _metrics_file(args, spec)
    spec = override(spec, max_runtime=max_runtime, spool_dir=args.spool_dir)
    controls = RunControls(reporter=reporter, metrics=metrics)
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
    path = args.metrics_file or spec.run.metrics_file
    if path is None:
        return None
    from pipeline.report.metrics import MetricsFile

    return MetricsFile(path, spec.name, source_region=spec.source.region)


def _finish_run(args: argparse.Namespace, summary: Any, spec: Any, metrics: Any) -> None:
    if args.report is not None:
        _write_private(args.report, json.dumps(summary.to_json(), indent=2, ensure_ascii=False) + "\n")
    if metrics is not None:
        from pipeline.report.metrics import last_success
        from pipeline.state.journal import Journal

        try:
            previous = last_success(Journal.read(spec.run.journal_dir, spec.name).runs)
            metrics.write(summary, final=True, last_success=previous, requests=summary.requests.counts)
        except (OSError, ImgmigError) as exc:  # the metrics never change the run's exit code
            print(f"imgmig: warning: cannot write the metrics file {metrics.path}: {exc}", file=sys.stderr)
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


def _print_plan(spec: Any, *, as_json: bool, dry_run: bool = False) -> int:
    from pipeline.run.runner import plan_only

    plan, inventory = _run_async(lambda: plan_only(spec))
    if as_json:
        doc = plan.to_json()
        doc["job"] = spec.name
        doc["unavailable_targets"] = {k: t.error for k, t in inventory.targets.items() if t.error}
        print(json.dumps(doc, indent=2, ensure_ascii=False))
        return 0
    rows = [("IMAGE", "NAME", "TARGET", "ACTION", "BYTES", "REASON")]
    for image_plan, step in plan.steps():
        name = (image_plan.image.name or "")[:32]
        rows.append((image_plan.image.id, name, step.target, step.action.value, format_size(step.bytes),
                     step.reason))  # fmt: skip
    print(format_table(rows))
    counts = ", ".join(f"{k} {v}" for k, v in plan.counts().items() if v)
    prefix = "dry run: " if dry_run else ""
    print(f"\n{prefix}{len(plan.images)} images x {len(plan.targets)} targets: {counts or 'nothing'}; "
          f"{format_size(plan.bytes)} to write")  # fmt: skip
    for label, target in inventory.targets.items():
        if target.error:
            print(f"UNAVAILABLE {label}: {target.error}")
    for note in plan.notes:
        print(f"note: {note}")
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    return _print_plan(_load(args.job), as_json=args.json)


def _cmd_status(args: argparse.Namespace) -> int:
    from pipeline.run.status import render_status, status_view

    spec = _load(args.job, need_secrets=False)
    view = status_view(spec)
    print(json.dumps(view, indent=2, ensure_ascii=False) if args.json else render_status(view))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from pipeline.run.verify import verify_job

    spec = _load(args.job)
    report = _run_async(lambda: verify_job(spec, deep=args.deep))
    if args.json:
        print(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        rows = [("IMAGE", "NAME", "TARGET", "STATUS", "DETAILS")]
        rows += [(f.image_id, (f.name or "")[:32], f.target, f.status, "; ".join(f.details + f.notes))
                 for f in report.findings]  # fmt: skip
        print(format_table(rows))
        counts = ", ".join(f"{k} {v}" for k, v in report.counts().items())
        print(f"\nverify{' --deep' if args.deep else ''}: {counts or 'nothing selected'}")
    return 0 if report.ok else 1


def _cmd_report(args: argparse.Namespace) -> int:
    from pipeline.run.htmlreport import build_report

    spec = _load(args.job, need_secrets=False)
    _write_private(args.html, build_report(spec.run.journal_dir, spec.name, args.run))
    print(f"wrote {args.html}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from pipeline.run.checks import check_job

    report = _run_async(lambda: check_job(_load(args.job)))
    if args.json:
        print(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        print(report.render())
    if report.error is not None:
        raise report.error  # one paragraph on stderr and its exit code (2 or 4)
    return 0


def _cmd_emulate(args: argparse.Namespace) -> int:
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


def _write_private(path: Path, text: str) -> None:
    """Write a report readable only by its owner (0600), in a directory only the owner can enter."""
    try:
        if path.parent != Path() and not path.parent.exists():
            path.parent.mkdir(mode=0o700, parents=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(path, 0o600)
    except OSError as exc:
        raise UsageError(f"cannot write the report {path}: {exc.strerror or exc}") from exc


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``imgmig`` console script and ``python -m pipeline``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    stream = sys.stderr
    if args.command == "run" and stream.isatty() and not args.no_progress:
        from pipeline.report.progress import TqdmStream

        stream = TqdmStream(sys.stderr)
    configure_logging(getattr(args, "log_format", None), level=getattr(args, "log_level", "info"), stream=stream)
    try:
        code: int = args.func(args)
    except ImgmigError as exc:
        print(f"imgmig: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("imgmig: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
