"""Reporters: they turn engine and runner events into progress bars and log lines, and never steer.

- ``LogReporter``: one canonical structlog line per image x target (``step``), warnings for retries and
  resumes, and, when there are no bars, a periodic ``progress`` line with bytes, total and rate.
- ``TqdmReporter``: on a TTY, a bar for total bytes plus one bar per image in flight.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

import structlog

from pipeline.outcomes import is_failure
from pipeline.report.events import (
    BytesWritten,
    ImageFinished,
    ImageStarted,
    SourceResumed,
    SpoolFailed,
    TargetFailed,
    TargetQuotaFull,
    TargetRetrying,
)
from pipeline.report.summary import StepFinished

if TYPE_CHECKING:  # tqdm is imported when bars are drawn (on a TTY): a run in cron or a pod never loads it
    from tqdm import tqdm

__all__ = ["LogReporter", "TqdmReporter", "TqdmStream"]

log = structlog.get_logger("imgmig")


class LogReporter:
    """Structured log lines; ``every`` > 0 adds periodic progress lines (for non-TTY runs)."""

    def __init__(self, *, total: int = 0, every: float = 0.0) -> None:
        self.total = total
        self.every = every
        self.written = 0
        self._start = time.monotonic()
        self._last = self._start

    def emit(self, event: Any) -> None:
        if isinstance(event, StepFinished):
            level = log.warning if is_failure(event.outcome) else log.info
            fields = {k: v for k, v in event.to_json().items() if v not in (None, "", [])}
            level("step", **fields)
        elif isinstance(event, SourceResumed):
            log.warning("source_resumed", image_id=event.image_id, offset=event.offset, attempt=event.attempt,
                        restarted=event.restarted, error=event.error)  # fmt: skip
        elif isinstance(event, TargetQuotaFull):
            log.warning("target_quota_full", target=event.region, resource=event.resource, error=event.message,
                        message="nothing more is sent to this target in this run")  # fmt: skip
        elif isinstance(event, SpoolFailed):
            log.warning("spool_failed", image_id=event.image_id, reason=event.reason,
                        message="retries of this image read the source again")  # fmt: skip
        elif isinstance(event, TargetRetrying):
            log.warning("target_retrying", image_id=event.image_id, target=event.region, attempt=event.attempt,
                        delay=round(event.delay, 2), error=event.error)  # fmt: skip
        elif isinstance(event, TargetFailed):
            log.info("target_attempt_failed", image_id=event.image_id, target=event.region, attempt=event.attempt,
                     blame=event.blame, error=event.error)  # fmt: skip
        elif isinstance(event, BytesWritten):
            self.written += event.n
            now = time.monotonic()
            if self.every > 0 and now - self._last >= self.every:
                self._last = now
                rate = self.written / max(now - self._start, 1e-9)
                log.info("progress", bytes=self.written, total=self.total, rate_bytes_per_second=round(rate, 1),
                         percent=round(100 * self.written / self.total, 1) if self.total else None)  # fmt: skip


class TqdmReporter:
    """Progress bars on a TTY: total bytes, plus one bar per image in flight."""

    def __init__(self, total: int, *, stream: TextIO | None = None) -> None:
        from tqdm import tqdm

        self._bar = tqdm
        self.stream = stream or sys.stderr
        self.layout = _layout(self.stream)
        self.total_bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="total",
                              file=self.stream, position=0, **self.layout)  # fmt: skip
        self.bars: dict[str, tqdm[Any]] = {}

    def emit(self, event: Any) -> None:
        if isinstance(event, ImageStarted):
            desc = (event.name or event.image_id)[:28]
            self.bars[event.image_id] = self._bar(
                total=event.size * len(event.regions), unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                file=self.stream, leave=False, position=len(self.bars) + 1, **self.layout,
            )  # fmt: skip
        elif isinstance(event, BytesWritten):
            self.total_bar.update(event.n)
            bar = self.bars.get(event.image_id)
            if bar is not None:
                bar.update(event.n)
        elif isinstance(event, ImageFinished):
            bar = self.bars.pop(event.image_id, None)
            if bar is not None:
                bar.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.total_bar.close()


def _layout(stream: TextIO) -> dict[str, Any]:
    """Follow the terminal's size; a terminal that reports none (0 x 0, e.g. a bare pty) gets 100 x 40,
    because tqdm would otherwise draw empty bars and hide every bar below row 0."""
    try:
        size = os.get_terminal_size(stream.fileno())
        columns, lines = size.columns, size.lines
    except (OSError, ValueError, AttributeError):
        columns = lines = 0
    layout: dict[str, Any] = {"dynamic_ncols": True} if columns > 0 else {"ncols": 100}
    if lines <= 0:
        layout["nrows"] = 40
    return layout


class TqdmStream:
    """A text stream that prints through ``tqdm.write`` so log lines do not tear the bars."""

    def __init__(self, stream: TextIO) -> None:
        from tqdm import tqdm

        self.stream = stream
        self._write = tqdm.write

    def write(self, text: str) -> int:
        if text.strip():
            self._write(text.rstrip("\n"), file=self.stream)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()
