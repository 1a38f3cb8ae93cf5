"""The ``imgmig`` command line: argument parsing, logging setup, and exceptions mapped to exit codes.

The edge of the program: it may import every layer below, and nothing imports it. This package is the only
code that prints. User errors become one paragraph on stderr and their exit code (see ``EXIT_CODES_HELP``);
nothing else is caught here, so a real bug still shows its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pipeline.cli.parser import EXIT_CODES_HELP, build_parser
from pipeline.errors import ExitCode, ImgmigError
from pipeline.report.logs import configure_logging

__all__ = ["EXIT_CODES_HELP", "build_parser", "main"]


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
        return ExitCode.SIGINT
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
