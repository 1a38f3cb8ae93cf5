"""Work done in slices: a generator that yields between slices and returns its result (``Sliced``).

The event loop's thread runs it a slice at a time (``run.runner`` checkpoints between slices), so a large
catalogue's journal load or plan never holds the loop for long; ``drain`` runs it in one go (tests, the commands
that have no loop to share). Such work stays on the loop's thread rather than in a worker thread: it calls zlib
(``state.packed``), which lets go of the GIL on every call, and a worker that does so thousands of times a second
keeps the loop's thread from getting the GIL back for hundreds of milliseconds (CPython hands the GIL to a waiting
thread only when the holder keeps it past the switch interval).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator
from typing import ParamSpec, TypeVar

__all__ = ["SLICE", "Sliced", "drain", "drained"]

T = TypeVar("T")
P = ParamSpec("P")
#: Work that yields between slices and returns a T.
Sliced = Generator[None, None, T]
#: Items (images, lines) per slice: at up to 100 us an item, a slice holds the loop for about 10-25 ms.
SLICE = 128


def drain(work: Sliced[T]) -> T:
    """Run ``work`` to its end, in one go; its result."""
    while True:
        try:
            next(work)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


def drained(make: Callable[P, Sliced[T]]) -> Callable[P, T]:
    """The function that makes ``make``'s work and drains it (the same arguments, the result)."""

    @functools.wraps(make)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        return drain(make(*args, **kwargs))

    return run
