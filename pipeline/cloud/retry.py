"""Retries: the low-level policy for replayable requests, and the one retry budget per image x target.

The decisions are pure (``should_retry``, ``RetryPolicy.delay``); the loop is tenacity's
``AsyncRetrying`` with an injected ``sleep`` so tests run without waiting. Uploads are never retried here:
a streamed body cannot be replayed, so the engine restarts the whole image x target transfer instead.

``[transfer] retries = N`` is one budget per image x target: every retry spent on its behalf counts
against it, at whichever level it happens (a request sent again, a new upload pass, a reopened source
stream). The engine sets the budget for the code working on one target with ``spending(budget)``; a
``RetryPolicy`` consults it through a context variable, so the HTTP layer needs no extra argument.
Outside any budget (discovery, listing, identity), a request gets ``attempts`` tries.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TypeVar

import anyio
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.stop import stop_base
from tenacity.wait import wait_random_exponential

from pipeline.errors import ImgmigError

__all__ = [
    "DEFAULT_ATTEMPTS",
    "RetryBudget",
    "RetryPolicy",
    "current_budget",
    "parse_retry_after",
    "should_retry",
    "spending",
]

T = TypeVar("T")

DEFAULT_ATTEMPTS = 5
DEFAULT_INITIAL = 0.5
DEFAULT_MAXIMUM = 20.0
#: A server asking for more than this is believed only up to this many seconds per wait.
DEFAULT_MAX_RETRY_AFTER = 120.0


def should_retry(exc: BaseException) -> bool:
    """Whether sending the same request again may help (connection errors, 408, 429, 5xx)."""
    return isinstance(exc, ImgmigError) and exc.retryable


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), or None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:  # pragma: no cover - older Pythons returned None
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


class RetryBudget:
    """The retries one image x target may still spend, whatever the level. ``limit = 0``: one attempt."""

    __slots__ = ("limit", "spent")

    def __init__(self, limit: int) -> None:
        self.limit = max(0, limit)
        self.spent = 0

    @property
    def remaining(self) -> int:
        return self.limit - self.spent

    def take(self) -> bool:
        """Spend one retry; False (and nothing spent) when the budget is exhausted."""
        if self.spent >= self.limit:
            return False
        self.spent += 1
        return True

    def __repr__(self) -> str:
        return f"RetryBudget({self.spent}/{self.limit} spent)"


_BUDGET: ContextVar[RetryBudget | None] = ContextVar("imgmig_retry_budget", default=None)


@contextmanager
def spending(budget: RetryBudget | None) -> Iterator[RetryBudget | None]:
    """Charge every low-level retry made in this block (and in tasks it starts) to ``budget``."""
    token = _BUDGET.set(budget)
    try:
        yield budget
    finally:
        _BUDGET.reset(token)


def current_budget() -> RetryBudget | None:
    """The budget the running code spends from, if any."""
    return _BUDGET.get()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many times to send a replayable request, and how long to wait in between."""

    attempts: int = DEFAULT_ATTEMPTS
    initial: float = DEFAULT_INITIAL
    maximum: float = DEFAULT_MAXIMUM
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER
    sleep: Callable[[float], Awaitable[None]] = field(default=anyio.sleep, repr=False, compare=False)

    def delay(self, attempt: int, exc: BaseException | None) -> float:
        """Seconds to wait before attempt ``attempt + 1``: Retry-After if the server said, else jitter."""
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(retry_after, (int, float)) and retry_after >= 0:
            return min(float(retry_after), self.max_retry_after)
        return float(wait_random_exponential(multiplier=self.initial, max=self.maximum)(_state(attempt)))

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return self.delay(state.attempt_number, exc)

    async def call(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        on_retry: Callable[[int, BaseException, float], None] | None = None,
    ) -> T:
        """Run ``fn`` until it succeeds, raises a non-retryable error, or attempts (or the budget of the
        image x target it works for, see ``spending``) run out.

        The first attempt runs bare: setting up tenacity costs more CPU than a request on a fast link,
        and nearly every request succeeds the first time. Only a retryable failure hands over to tenacity,
        which starts from that failure (replayed, not sent again) exactly as if it had made the attempt."""
        try:
            return await fn()
        except Exception as exc:
            if not should_retry(exc):
                raise
            replay: list[BaseException] = [exc]
        budget = current_budget()

        def before_sleep(state: RetryCallState) -> None:
            if budget is not None:
                budget.take()  # only now is a retry certain (tenacity checked stop already)
            failed = state.outcome.exception() if state.outcome is not None else None
            if on_retry is not None and failed is not None and state.next_action is not None:
                on_retry(state.attempt_number, failed, state.next_action.sleep)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(max(1, self.attempts)) | _stop_when_spent(budget),
            wait=self._wait,
            retry=retry_if_exception(should_retry),
            sleep=self.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )

        async def run() -> T:  # tenacity only awaits callables it recognises as coroutine functions
            if replay:
                raise replay.pop()
            return await fn()

        result: T = await retrying(run)
        return result


class _stop_when_spent(stop_base):
    """Stop retrying once the image x target's budget is spent (never, outside any budget)."""

    def __init__(self, budget: RetryBudget | None) -> None:
        self.budget = budget

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.budget is not None and self.budget.remaining <= 0


def _state(attempt: int) -> RetryCallState:
    """A minimal RetryCallState carrying only the attempt number, for tenacity's wait strategies."""
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = attempt
    return state
