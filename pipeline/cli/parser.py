"""The ``imgmig`` argument parser: one subparser per subcommand, each with a complete ``--help``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.cli import commands
from pipeline.cli.output import usage_error_line
from pipeline.errors import EXIT_CODES

__all__ = ["EXIT_CODES_HELP", "build_parser"]

EXIT_CODES_HELP = "exit codes: " + "; ".join(f"{int(code)} {meaning}" for code, meaning in EXIT_CODES.items())
JOB_HELP = "job file (TOML), e.g. jobs/demo.toml; secrets come from the environment variables it names"


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with a one-paragraph message (one JSON line when ``--log-format json`` was asked)."""

    json_errors = False

    def error(self, message: str) -> None:  # type: ignore[override]
        if _Parser.json_errors:
            self.exit(2, usage_error_line(f"{self.prog}: {message}", 2) + "\n")
        self.print_usage(sys.stderr)
        self.exit(2, f"imgmig: error: {message}\n")


def _log_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-format", choices=["console", "json"],
                   help="log format on stderr (default: console on a TTY, JSON lines otherwise)")  # fmt: skip
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="least severe log level shown (default: %(default)s)")  # fmt: skip


def _shard_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shard", metavar="I/K",
                   help="run shard I (0-based) of K: only the source images whose id hashes to I; its journal is "
                        "journal_dir/shard-I-of-K/")  # fmt: skip
    p.add_argument("--shards", type=int, metavar="K",
                   help="shard I of K, with I from JOB_COMPLETION_INDEX (set by a Kubernetes Indexed Job), so "
                        "one command line serves every pod")  # fmt: skip


def _running_options(p: argparse.ArgumentParser, *, job_file: bool) -> None:
    """What ``run`` and ``copy`` share (``commands.run_spec`` reads them): dry run, max runtime, bars, report."""
    p.add_argument("--dry-run", action="store_true", help="plan and print what would happen; change nothing")
    p.add_argument("--max-runtime", metavar="D",
                   help="start nothing new after D (e.g. 50m, 2h), park work in flight, exit 10 (resumable)"
                        + ("; overrides [run] max_runtime" if job_file else ""))  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bars, even on a TTY")
    p.add_argument("--report", type=Path, metavar="FILE.json", help="also write the summary as JSON to FILE")


def _add_run(sub: Any) -> None:
    p = sub.add_parser(
        "run", help="copy the job's images to every target, verified, resumable",
        description="Plan, then stream each selected image once from the source and fan it out to every target "
        "region at the same time, verifying size, md5 and os_hash_value on the fly and against what each "
        "target reports. Then copy properties, tags, visibility, members and protection. Progress is "
        "journalled; an interrupted run resumes without duplicates or orphans. " + EXIT_CODES_HELP,
    )  # fmt: skip
    p.add_argument("job", type=Path, help=JOB_HELP)
    _running_options(p, job_file=True)
    p.add_argument("--metrics-file", type=Path, metavar="FILE.prom",
                   help="write Prometheus metrics for node_exporter's textfile collector to FILE (replaced "
                        "atomically every 30 s and at the end); overrides [run] metrics_file")  # fmt: skip
    p.add_argument("--spool-dir", type=Path, metavar="DIR",
                   help="keep a local copy of each image while it transfers so target retries need not read "
                        "the source again (skipped for an image when DIR lacks free space)")  # fmt: skip
    _shard_options(p)
    _log_options(p)
    p.set_defaults(func=commands.cmd_run)


def _add_copy(sub: Any) -> None:
    p = sub.add_parser(
        "copy", help="copy images to other regions in one line, no job file",
        description="Copy the images named (a name, a glob or an id) from one region to one or more others, with "
        "the engine, verification, metadata and guarantees of imgmig run. PROFILE is an [auth.PROFILE] of the "
        "profiles file ($IMGMIG_PROFILES, default ~/.config/imgmig/profiles.toml; the form of a job file's "
        "profiles), else a cloud of clouds.yaml (auth_type v2password is NHN Cloud's identity), else envvars for "
        "the OS_* variables; an empty PROFILE (:KR2, or no --from) is --os-cloud, $OS_CLOUD or the OS_* "
        "variables. The job is named copy-HASH (a hash of the source and target places; copies carry it as "
        "imgmig_job) and keeps its journal in $XDG_STATE_HOME/imgmig/copy/ (default ~/.local/state): the same "
        "command again resumes an interrupted copy, or does nothing. " + EXIT_CODES_HELP,
    )  # fmt: skip
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="an image name, a glob (quoted: 'ubuntu-*') or an id; one copy takes ids or names")  # fmt: skip
    p.add_argument("--from", dest="source", metavar="PROFILE[:REGION]",
                   help="where the images are (default: the default cloud in its region_name)")  # fmt: skip
    p.add_argument("--to", dest="targets", action="append", required=True, metavar="PROFILE:REGION[,REGION...]",
                   help="where copies go; repeat --to for targets of other profiles")  # fmt: skip
    p.add_argument("--os-cloud", metavar="NAME",
                   help="the cloud of clouds.yaml an empty PROFILE means (default: $OS_CLOUD, else the OS_* "
                        "variables, else the only cloud)")  # fmt: skip
    p.add_argument("--enable-download", action="store_true",
                   help="NHN Cloud: switch nhncloud_allow_download on while a source is read, then back")  # fmt: skip
    _running_options(p, job_file=False)
    p.add_argument("--json", action="store_true",
                   help="print the JSON report on stdout, not the summary (with --dry-run: the plan)")  # fmt: skip
    p.add_argument("--save", type=Path, metavar="FILE.toml",
                   help="also write the equivalent job file, so status, report, verify and cron can take over "
                        "(an existing different file is not overwritten)")  # fmt: skip
    _log_options(p)
    p.set_defaults(func=commands.cmd_copy)


def _add_plan(sub: Any) -> None:
    p = sub.add_parser(
        "plan", help="show what a run would do, per image and target",
        description="Authenticate, list the source selection and every target's copies, and print the action "
        "(copy, resume, replace, metadata, adopt, restore, skip, blocked, refused, not_portable) and bytes per image "
        "x target, the prune's deletions or retirements, and the retired copies. Changes nothing in any region "
        "(--inspect journals its verdicts). Exit 0; 1 when a run would fail something (blocked, refused, not "
        "portable, an unreachable target, a refused prune); 2/4 on job-file or authentication errors; 3 when "
        "--inspect finds the job's lock held.",
    )  # fmt: skip
    p.add_argument("job", type=Path, help=JOB_HELP)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--inspect", action="store_true",
                   help="also read the head of each selected source (a Range request of at most 8 MiB) and show "
                        "its detected format and safety verdict; verdicts are journalled with the source's "
                        "checksum (under the job's lock: exit 3 while a run holds it), so later plans and runs "
                        "read nothing again")  # fmt: skip
    _shard_options(p)
    _log_options(p)
    p.set_defaults(func=commands.cmd_plan)


def _add_status(sub: Any) -> None:
    p = sub.add_parser(
        "status", help="show the job's journal: runs and the state of each image x target",
        description="Read the job's journal (no network, no credentials needed) and show the last runs and "
        "the state of every image x target. --json prints the stable machine-readable view. A sharded job "
        "(journal_dir/shard-I-of-K/) is shown merged: totals, and per shard whether it is running, done, "
        "failed or never ran; --shard I/K shows one shard's journal. "
        "Exit 0, or 2 if the job file is invalid, or 1 if the journal is unreadable.",
    )  # fmt: skip
    p.add_argument("job", type=Path, help=JOB_HELP)
    p.add_argument("--json", action="store_true", help="print the stable JSON view")
    _shard_options(p)
    p.set_defaults(func=commands.cmd_status)


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
    _shard_options(p)
    _log_options(p)
    p.set_defaults(func=commands.cmd_verify)


def _add_restore(sub: Any) -> None:
    p = sub.add_parser(
        "restore", help="bring back copies that a grace-period prune retired",
        description="With [prune] grace, a prune retires a copy instead of deleting it: marked with "
        "imgmig_retired_at, hidden (os_hidden) and, where the target allows it, deactivated; the first run after "
        "the grace period deletes it. restore brings retired copies back now: reactivated, the marker removed, "
        "os_hidden set back to the source's (false when the source is gone). IMAGE names a source image id, a copy "
        "id or a copy name; without IMAGE every retired copy of the job is restored. `imgmig plan` lists them. "
        "A restored copy stays the job's: while its source is not selected, the next run with prune on retires "
        "it again. Takes the job's lock (exit 3 while a run holds it). Exit 0 when every copy named was restored, "
        "1 when one failed, 2 when an IMAGE names no retired copy.",
    )  # fmt: skip
    p.add_argument("job", type=Path, help=JOB_HELP)
    p.add_argument("images", nargs="*", metavar="IMAGE", help="source image id, copy id or copy name (default: all)")
    p.add_argument("--json", action="store_true", help="print what was restored as JSON")
    _shard_options(p)
    _log_options(p)
    p.set_defaults(func=commands.cmd_restore)


def _add_report(sub: Any) -> None:
    p = sub.add_parser(
        "report", help="write one self-contained HTML page about a run, from the journal",
        description="Read the job's journal (no network, no credentials) and write one HTML file (inline CSS "
        "and SVG, nothing fetched from anywhere): the run's totals, a timeline of every image x target (or "
        "of time buckets for large runs), throughput per target region, failures with their reasons, the "
        "plan and skipped images. By default the last run that reached its plan (a run that stopped earlier, on "
        "a wrong region say, has nothing to draw; status shows its reason). A sharded job keeps one journal per "
        "shard: name the shard with --shard I/K (or --shards K and JOB_COMPLETION_INDEX). Exit 0, 2 if the job "
        "file, the shard or the run id is wrong.",
    )  # fmt: skip
    p.add_argument("job", type=Path, help=JOB_HELP)
    p.add_argument("--html", type=Path, metavar="FILE.html", required=True, help="where to write the page (0600)")
    p.add_argument(
        "--run",
        metavar="ID",
        help="the run to show, any run (default: the last one that reached its plan; see imgmig status)",
    )
    _shard_options(p)
    p.set_defaults(func=commands.cmd_report)


def _add_check(sub: Any) -> None:
    p = sub.add_parser(
        "check", help="authenticate every profile and resolve every region; touch no image",
        description="Authenticate every [auth.NAME] profile of the job and print, per profile, the identity "
        "kind, the project, the token's expiry and each region's image endpoint, then whether the source and "
        "every target region resolve, then create and write once each directory a run writes in (journal_dir, "
        "spool_dir, the metrics file's). No image is read or changed. Exit 0 when all is well; 1 when an identity "
        "service cannot be reached (UNREACHABLE) or its certificate does not verify (TLS); 2 for a job-file, "
        "region or path problem; 4 when a credential is refused (REFUSED).",
    )  # fmt: skip
    p.add_argument("job", type=Path, help=JOB_HELP)
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    _log_options(p)
    p.set_defaults(func=commands.cmd_check)


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
    p.add_argument("--disk-formats", metavar="LIST",
                   help="comma-separated disk formats every region accepts, as Glance's [image_format] "
                        "disk_formats (default: Glance's)")  # fmt: skip
    p.add_argument("--container-formats", metavar="LIST",
                   help="comma-separated container formats every region accepts, as Glance's [image_format] "
                        "container_formats (default: Glance's)")  # fmt: skip
    p.set_defaults(func=commands.cmd_emulate)


def build_parser(*, json_errors: bool = False) -> argparse.ArgumentParser:
    """The full parser, with one subparser per subcommand; ``json_errors``: its errors as one JSON line."""
    _Parser.json_errors = json_errors
    parser = _Parser(
        prog="imgmig",
        description="Bulk image migration for NHN Cloud Image API v2 (OpenStack Glance v2): stream each "
        "image once from a source region to every target region, verified on the fly, resumable.",
        epilog=EXIT_CODES_HELP,
    )
    parser.add_argument("--version", action="version", version=f"imgmig {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add in (_add_run, _add_copy, _add_plan, _add_status, _add_verify, _add_restore, _add_check, _add_report,
                _add_emulate):  # fmt: skip
        add(sub)
    return parser
