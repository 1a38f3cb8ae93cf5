"""The ``imgmig`` command line: argument parsing, logging setup, and exceptions mapped to exit codes.

This is the only module that prints. User errors become one paragraph on stderr and their exit code;
nothing else is caught here, so a real bug still shows its traceback.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio

from . import __version__
from .errors import ImgmigError
from .logs import configure_logging

__all__ = ["EXIT_INTERRUPTED", "build_parser", "main"]

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INTERRUPTED = {signal.SIGINT: 130, signal.SIGTERM: 143}


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with a one-paragraph message (its default, made explicit)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"imgmig: error: {message}\n")


def _add_emulate(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser(
        "emulate",
        help="run the embedded multi-region emulator in the foreground",
        description=(
            "Run the embedded emulator of NHN Cloud identity and Image API v2 (Glance 33 behaviour) for "
            "several regions in one process, on loopback. The first line on stdout is one JSON object: "
            '{"identity_url": ..., "regions": {REGION: URL, ...}}. Any tenant, username and non-empty '
            "password is accepted unless --users says otherwise. Admin endpoints under "
            "IDENTITY/_admin/ change fault knobs and token lifetimes at runtime. Stops on SIGINT/SIGTERM."
        ),
    )
    p.add_argument("--regions", default="KR1,KR2,JP1", help="comma-separated region names (default: %(default)s)")
    p.add_argument("--port", type=int, default=0,
                   help="identity port; regions take the next ports (default 0: ephemeral ports)")
    p.add_argument("--data-dir", type=Path, help="where image data is stored (default: a temporary directory)")
    p.add_argument("--seed", choices=["demo"], help="load a sample data set into the first region")
    p.add_argument("--token-ttl", type=float, default=3600.0, help="token lifetime in seconds (default: %(default)s)")
    p.add_argument("--users", type=Path,
                   help='JSON users file {"users": [{"username", "password", "tenants": [...]}]}')  # fmt: skip
    p.set_defaults(func=_cmd_emulate)


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with one subparser per subcommand."""
    parser = _Parser(
        prog="imgmig",
        description="Bulk image migration for NHN Cloud Image API v2 (OpenStack Glance v2): stream each "
        "image once from a source region to every target region, verified on the fly, resumable.",
    )
    parser.add_argument("--version", action="version", version=f"imgmig {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _add_emulate(sub)
    return parser


def _cmd_emulate(args: argparse.Namespace) -> int:
    from .emulator.identity import load_users
    from .emulator.serve import info_line, running_emulator

    regions = [r.strip() for r in args.regions.split(",") if r.strip()]
    if not regions or len(set(regions)) != len(regions):
        raise _usage("--regions needs one or more distinct region names, e.g. KR1,KR2,JP1")
    users = None
    if args.users is not None:
        try:
            users = load_users(args.users)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise _usage(f"cannot read users file {args.users}: {exc}") from exc
    if args.data_dir is not None:
        args.data_dir.mkdir(parents=True, exist_ok=True)

    async def serve() -> None:
        async with running_emulator(
            regions, port=args.port, data_dir=args.data_dir, seed=args.seed, token_ttl=args.token_ttl, users=users
        ) as emu:
            print(info_line(emu), flush=True)
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    return

    try:
        anyio.run(serve)
    except OSError as exc:
        raise _usage(f"cannot start the emulator: {exc}") from exc
    return EXIT_OK


def _usage(message: str) -> ImgmigError:
    from .errors import UsageError

    return UsageError(message)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``imgmig`` console script and ``python -m pipeline``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(getattr(args, "log_format", None))
    try:
        code: int = args.func(args)
    except ImgmigError as exc:
        print(f"imgmig: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED[signal.SIGINT]
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
