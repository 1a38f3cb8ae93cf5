"""RetryPolicy: which errors are retried, how long it waits, and that attempts are bounded."""

from __future__ import annotations

import pytest

from pipeline.cloud.retry import RetryPolicy, parse_retry_after, should_retry
from pipeline.errors import (
    BadRequestError,
    ConnectError,
    NotFoundError,
    RateLimitedError,
    ServerError,
    TLSVerificationError,
    TokenRejectedError,
)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ConnectError("x"), True),
        (ServerError("x", status=503), True),
        (RateLimitedError("x", status=429), True),
        (TokenRejectedError("x", status=401), True),
        (BadRequestError("x", status=400), False),
        (NotFoundError("x", status=404), False),
        (TLSVerificationError("x"), False),
        (ValueError("x"), False),
    ],
    ids=["connect", "503", "429", "token-rejected", "400", "404", "tls", "foreign"],
)
def test_should_retry(exc: BaseException, expected: bool) -> None:
    """Connection errors, 408/429/5xx are retryable; client errors and foreign exceptions are not."""
    assert should_retry(exc) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("3", 3.0), ("0", 0.0), ("-5", 0.0), ("1.5", 1.5), (None, None), ("soon", None),
     ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0)],
    ids=["int", "zero", "negative", "float", "absent", "garbage", "http-date"],
)  # fmt: skip
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    """Retry-After is read as seconds or as an HTTP date relative to now; garbage is ignored."""
    now = 1445412480.0  # 2015-10-21T07:28:00Z
    assert parse_retry_after(value, now=now) == expected


def test_delay_prefers_retry_after_but_caps_it() -> None:
    """A server's Retry-After is honoured up to max_retry_after; otherwise jitter stays under the cap."""
    policy = RetryPolicy(initial=1.0, maximum=8.0, max_retry_after=30.0)
    assert policy.delay(1, ServerError("x", retry_after=12.0)) == 12.0
    assert policy.delay(1, ServerError("x", retry_after=500.0)) == 30.0
    for attempt in range(1, 10):
        assert 0 <= policy.delay(attempt, ServerError("x")) <= 8.0


async def test_call_retries_then_succeeds() -> None:
    """call() sleeps between attempts and returns the first success."""
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    attempts = iter([ServerError("a", retry_after=0.5), ConnectError("b"), "ok"])

    async def fn() -> str:
        item = next(attempts)
        if isinstance(item, Exception):
            raise item
        return item

    seen: list[int] = []
    result = await RetryPolicy(attempts=3, sleep=sleep).call(fn, on_retry=lambda n, e, w: seen.append(n))
    assert result == "ok"
    assert slept[0] == 0.5
    assert len(slept) == 2
    assert seen == [1, 2]


async def test_call_stops_after_attempts_and_on_permanent_errors() -> None:
    """call() gives up after `attempts` and never retries a non-retryable error."""
    calls = 0

    async def sleep(s: float) -> None:
        pass

    async def failing() -> None:
        nonlocal calls
        calls += 1
        raise ServerError("down", status=503)

    with pytest.raises(ServerError):
        await RetryPolicy(attempts=3, sleep=sleep).call(failing)
    assert calls == 3

    calls = 0

    async def bad() -> None:
        nonlocal calls
        calls += 1
        raise BadRequestError("no", status=400)

    with pytest.raises(BadRequestError):
        await RetryPolicy(attempts=3, sleep=sleep).call(bad)
    assert calls == 1


async def test_a_failed_first_attempt_is_never_sent_twice() -> None:
    """The first attempt runs outside tenacity; its failure is handed over, not repeated: with one attempt
    allowed the request is sent once, and with two, twice, with one wait and one on_retry in between."""
    calls, slept, seen = 0, [], []

    async def sleep(s: float) -> None:
        slept.append(s)

    async def failing() -> None:
        nonlocal calls
        calls += 1
        raise ConnectError("reset")

    with pytest.raises(ConnectError):
        await RetryPolicy(attempts=1, sleep=sleep).call(failing, on_retry=lambda n, e, w: seen.append(n))
    assert (calls, slept, seen) == (1, [], [])

    with pytest.raises(ConnectError):
        await RetryPolicy(attempts=2, sleep=sleep).call(failing, on_retry=lambda n, e, w: seen.append(n))
    assert (calls, len(slept), seen) == (3, 1, [1])
