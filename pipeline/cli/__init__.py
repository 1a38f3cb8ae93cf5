"""The ``imgmig`` command line: argument parsing, logging setup, and exceptions mapped to exit codes.

The edge of the program: it may import every layer below, and nothing imports it. This package is the only
code that prints. User errors become one paragraph on stderr and their exit code (see ``EXIT_CODES_HELP``);
with ``--log-format json`` every line is JSON, errors included. Nothing else is caught here, so a real bug still
shows its traceback.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Sequence
from typing import NoReturn

from pipeline.cli.output import OUTPUT, json_requested
from pipeline.cli.parser import EXIT_CODES_HELP, build_parser
from pipeline.errors import ExitCode, ImgmigError
from pipeline.report.logs import configure_logging

__all__ = ["EXIT_CODES_HELP", "build_parser", "entry", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``imgmig`` console script and ``python -m pipeline``."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(json_errors=json_requested(arguments))
    args = parser.parse_args(arguments)
    json_lines = getattr(args, "log_format", None) == "json"
    stream = sys.stderr
    if args.command in ("run", "copy") and stream.isatty() and not args.no_progress and not json_lines:
        from pipeline.report.progress import TqdmStream

        stream = TqdmStream(sys.stderr)
    fmt = configure_logging(getattr(args, "log_format", None), level=getattr(args, "log_level", "info"), stream=stream)
    OUTPUT.configure(json_lines=json_lines, json_logs=fmt == "json")
    try:
        code: int = args.func(args)
    except ImgmigError as exc:
        OUTPUT.error(str(exc), exc.exit_code)
        return exc.exit_code
    except KeyboardInterrupt:
        OUTPUT.error("interrupted", ExitCode.SIGINT)
        return ExitCode.SIGINT
    return code


def entry() -> NoReturn:
    """The process's entry point (the ``imgmig`` console script, ``python -m pipeline``): ``main``, then exit.
    Before exiting, every object is moved out of the garbage collector's reach (``gc.freeze``): the interpreter's
    teardown would otherwise spend about 70 ms walking them all, on every command, for nothing (the journal,
    the reports and the logs are closed and flushed by then; objects still run their finalizers when their
    last reference goes)."""
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
