"""Logging setup, called once by the CLI: structlog, console on a TTY, JSON lines otherwise.

Every event passes ``redact_secrets`` last-but-one, which masks values of keys that name secrets and any
registered secret string wherever it appears, as a second line of defence behind ``Secret``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO

import structlog

__all__ = ["LogFormat", "bind_run", "configure_logging", "redact_secrets", "register_secret", "scrub"]

LogFormat = Literal["console", "json"]
_SECRET_KEYS = ("password", "token", "secret", "authorization", "x-auth-token")
_secrets: set[str] = set()


def register_secret(value: str) -> None:
    """Mask ``value`` wherever it would appear in a log line."""
    if value and len(value) >= 4:
        _secrets.add(value)


def _mask(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


def scrub(text: str) -> str:
    """``text`` with every registered secret masked: for what is kept beyond a log line (the journal)."""
    return _mask(text)


def redact_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: no secret value leaves the process through a log line."""
    for key in list(event):
        value = event[key]
        if any(s in key.lower() for s in _SECRET_KEYS) and key not in ("token_refreshes", "tokens_issued"):
            event[key] = "***"
        elif isinstance(value, str) and _secrets:
            event[key] = _mask(value)
        elif isinstance(value, BaseException) and _secrets:
            event[key] = _mask(f"{type(value).__name__}: {value}")
    return event


def bind_run(job: str, run_id: str | None = None, shard: str | None = None) -> None:
    """Every log line from here on (in this context and the tasks it starts) carries ``job``, ``run_id`` and
    ``shard``: a log pipeline can group a run's lines without parsing messages."""
    structlog.contextvars.bind_contextvars(job=job, **{k: v for k, v in (("run_id", run_id), ("shard", shard)) if v})


def configure_logging(fmt: LogFormat | None = None, *, level: str = "info", stream: TextIO | None = None) -> LogFormat:
    """Configure structlog once: ``console`` on a TTY by default, ``json`` lines otherwise; returns the format."""
    stream = stream or sys.stderr
    if fmt is None:
        fmt = "console" if stream.isatty() else "json"
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(ensure_ascii=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info if fmt == "json" else structlog.processors.StackInfoRenderer(),
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.clear_contextvars()
    return fmt
