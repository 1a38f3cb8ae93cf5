"""Fail points: named places where a test can make the process die with SIGKILL, for crash testing.

``IMGMIG_FAILPOINTS="name"`` kills the process the first time ``failpoint("name")`` runs; ``name@3`` the
third time. Unset (always, in production), ``failpoint`` is one dict lookup. This is how the crash
tests put a real ``kill -9`` at exact points (mid-upload, between two journal records, ...) instead of
hoping a timer lands there.
"""

from __future__ import annotations

import os
import signal

__all__ = ["ENV", "die", "failpoint", "hit"]

ENV = "IMGMIG_FAILPOINTS"


def _parse(spec: str) -> dict[str, int]:
    points: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, nth = item.partition("@")
        points[name] = int(nth) if nth.isdigit() else 1
    return points


_POINTS = _parse(os.environ.get(ENV, ""))
_HITS: dict[str, int] = {}


def hit(name: str) -> bool:
    """Count one pass through ``name``; True when this is the pass the environment armed."""
    if not _POINTS or name not in _POINTS:
        return False
    _HITS[name] = _HITS.get(name, 0) + 1
    return _HITS[name] == _POINTS[name]


def die() -> None:
    """SIGKILL this process: no cleanup, no flush, exactly like ``kill -9``."""
    os.kill(os.getpid(), signal.SIGKILL)


def failpoint(name: str) -> None:
    """Die with SIGKILL here if the environment armed this point (and this is the armed pass)."""
    if hit(name):
        die()
