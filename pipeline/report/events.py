"""Events the engine and runner emit; reporters (progress bars, logs, summaries) only observe them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "BytesRead",
    "BytesWritten",
    "Event",
    "ImageFinished",
    "ImageStarted",
    "NullReporter",
    "PlanReady",
    "PlannedWork",
    "Reporter",
    "SourceResumed",
    "SpoolFailed",
    "TargetFailed",
    "TargetFinished",
    "TargetQuotaFull",
    "TargetRetrying",
    "TeeReporter",
]


class PlannedWork(Protocol):
    """What reporting reads of a run's plan (``plan.planner.Plan`` is one; reporting never imports it)."""

    @property
    def targets(self) -> tuple[str, ...]: ...

    @property
    def planned_images(self) -> int: ...

    def open_steps(self) -> Iterable[tuple[str, str]]: ...

    def to_json(self, *, lazy: bool = False) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class PlanReady:
    """The run has planned: how many images and steps, and how many bytes it will write."""

    images: int
    steps: int
    bytes: int


@dataclass(frozen=True, slots=True)
class ImageStarted:
    image_id: str
    name: str | None
    size: int
    regions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class BytesRead:
    """Bytes read from the source (after a resume, only the new bytes)."""

    image_id: str
    n: int


@dataclass(frozen=True, slots=True)
class BytesWritten:
    """Bytes handed to one target's upload."""

    image_id: str
    region: str
    n: int


@dataclass(frozen=True, slots=True)
class SourceResumed:
    """The source stream broke and was reopened at ``offset`` (Range) or from 0 (``restarted``)."""

    image_id: str
    offset: int
    attempt: int
    error: str
    restarted: bool = False


@dataclass(frozen=True, slots=True)
class SpoolFailed:
    """The spool of one image cannot serve retries (a write or read-back failed); they read the source."""

    image_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class TargetQuotaFull:
    """A target answered with a full quota: nothing more is sent to it in this run (reported once). ``reason``:
    the error every image x that target then fails with."""

    region: str
    resource: str
    message: str
    reason: str


@dataclass(frozen=True, slots=True)
class TargetRetrying:
    image_id: str
    region: str
    attempt: int
    error: str
    delay: float


@dataclass(frozen=True, slots=True)
class TargetFailed:
    """One attempt of one target failed (it may still be retried)."""

    image_id: str
    region: str
    attempt: int
    error: str
    blame: str  # "source" or "target"


@dataclass(frozen=True, slots=True)
class TargetFinished:
    """Final outcome of one image x target: done (verified), failed, or cancelled."""

    image_id: str
    region: str
    state: str
    target_id: str | None
    attempts: int
    bytes: int
    error: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ImageFinished:
    image_id: str
    ok: bool


Event = (
    PlanReady | ImageStarted | BytesRead | BytesWritten | SourceResumed | SpoolFailed | TargetRetrying | TargetFailed
    | TargetFinished | ImageFinished | TargetQuotaFull
)  # fmt: skip


class Reporter(Protocol):
    """Receives events; must be quick and must not raise (it only observes)."""

    def emit(self, event: Any) -> None: ...


class NullReporter:
    """Ignores everything."""

    def emit(self, event: Any) -> None:
        return None


class TeeReporter:
    """Sends each event to several reporters."""

    def __init__(self, *reporters: Reporter) -> None:
        self.reporters = reporters

    def emit(self, event: Any) -> None:
        for reporter in self.reporters:
            reporter.emit(event)
