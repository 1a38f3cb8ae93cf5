"""What the command writes besides its log lines: results on stdout, warnings and errors on stderr, as plain
text or, with ``--log-format json``, as JSON lines, so that ``2>&1`` into one file yields a file of JSON lines."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

import structlog

__all__ = ["OUTPUT", "Output", "json_requested", "usage_error_line"]

log = structlog.get_logger("imgmig")


def json_requested(argv: list[str]) -> bool:
    """Whether the command line asks for ``--log-format json`` (read before argparse, for its own errors)."""
    for i, arg in enumerate(argv):
        if arg == "--log-format=json" or (arg == "--log-format" and argv[i + 1 : i + 2] == ["json"]):
            return True
    return False


def usage_error_line(message: str, code: int) -> str:
    """A command-line error as one JSON line (argparse's errors come before logging is set up)."""
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return json.dumps({"event": "usage_error", "level": "error", "timestamp": now, "error": message,
                       "exit_code": code}, ensure_ascii=False)  # fmt: skip


class Output:
    """The command's output mode: ``json_lines`` (``--log-format json`` given) makes every line JSON; ``json_logs``
    (the log lines are JSON, also by default off a TTY) adds the ``run_finished`` event to the human summary."""

    def __init__(self) -> None:
        self.json_lines = False
        self.json_logs = False

    def configure(self, *, json_lines: bool, json_logs: bool) -> None:
        self.json_lines, self.json_logs = json_lines, json_logs or json_lines

    def error(self, message: str, code: int) -> None:
        if self.json_lines:
            log.error("error", error=message, exit_code=int(code))
        else:
            print(f"imgmig: error: {message}", file=sys.stderr)

    def warning(self, message: str) -> None:
        if self.json_lines:
            log.warning("warning", message=message)
        else:
            print(f"imgmig: warning: {message}", file=sys.stderr)

    def document(self, doc: Any, *, as_json: bool, text: str | None = None) -> None:
        """A result on stdout: ``doc`` as JSON (indented for ``--json``, one line in JSON-lines mode), else
        ``text``."""
        if self.json_lines:
            print(json.dumps(doc, ensure_ascii=False, separators=(",", ":")))
        elif as_json or text is None:
            print(json.dumps(doc, indent=2, ensure_ascii=False))
        else:
            print(text)


OUTPUT = Output()
