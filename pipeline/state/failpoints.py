"""Fail points: named places where a test can make the process fail in a chosen way, for crash and fault testing.

``IMGMIG_FAILPOINTS="name"`` kills the process with SIGKILL the first time ``failpoint("name")`` runs; ``name@3``
the third time. An action after ``=`` chooses another failure at that place:

- ``kill`` (the default): SIGKILL, exactly like ``kill -9``: no cleanup, no flush;
- ``enospc``: ``OSError(ENOSPC)``, a full disk, as the code around the point meets it;
- ``bug``: ``TypeError``, a programming error, which must stop the run with its traceback, never be retried.

For example ``record:run_finished=enospc`` fails the journal's ``run_finished`` record (every record passes the
point ``record:<kind>``), and ``uploading@2=bug`` raises in the second chunk handed to an upload. Unset (always, in
production), ``failpoint`` is one dict lookup. This is how the tests put real failures at exact points instead of
hoping a timer lands there.
"""

from __future__ import annotations

import errno
import os
import signal

__all__ = ["ENV", "die", "failpoint", "hit"]

ENV = "IMGMIG_FAILPOINTS"
ACTIONS = ("kill", "enospc", "bug")


def _parse(spec: str) -> dict[str, tuple[int, str]]:
    points: dict[str, tuple[int, str]] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        where, _, action = item.partition("=")
        name, _, nth = where.partition("@")
        points[name] = (int(nth) if nth.isdigit() else 1, action if action in ACTIONS else "kill")
    return points


_POINTS = _parse(os.environ.get(ENV, ""))
_HITS: dict[str, int] = {}


def hit(name: str) -> bool:
    """Count one pass through ``name``; True when this is the pass the environment armed."""
    if not _POINTS or name not in _POINTS:
        return False
    _HITS[name] = _HITS.get(name, 0) + 1
    return _HITS[name] == _POINTS[name][0]


def die() -> None:
    """SIGKILL this process: no cleanup, no flush, exactly like ``kill -9``."""
    os.kill(os.getpid(), signal.SIGKILL)


def failpoint(name: str) -> None:
    """Fail here in the armed way if the environment armed this point (and this is the armed pass)."""
    if not hit(name):
        return
    action = _POINTS[name][1]
    if action == "enospc":
        raise OSError(errno.ENOSPC, f"No space left on device (fail point {name})")
    if action == "bug":
        raise TypeError(f"a deliberate programming error (fail point {name})")
    die()
