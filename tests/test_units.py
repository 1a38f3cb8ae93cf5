"""Sizes, rates and durations: what people write, what we read, and what we print."""

from __future__ import annotations

import pytest

from pipeline.units import (
    GiB,
    KiB,
    MiB,
    clip,
    display_width,
    format_duration,
    format_rate,
    format_size,
    format_table,
    parse_duration,
    parse_rate,
    parse_size,
)

GOOD_SIZES = [
    (0, 0),
    (1024, 1024),
    ("1024", 1024),
    ("64KiB", 64 * KiB),
    ("8MiB", 8 * MiB),
    ("8mib", 8 * MiB),
    ("1.5GiB", 3 * GiB // 2),
    ("500MB", 500_000_000),
    ("500 mb", 500_000_000),
    ("2TB", 2 * 10**12),
    ("1TiB", 2**40),
    ("10B", 10),
    ("0.5KB", 500),
    (" 3 KiB ", 3 * KiB),
]


@pytest.mark.parametrize(("text", "expected"), GOOD_SIZES, ids=[repr(t) for t, _ in GOOD_SIZES])
def test_parse_size_accepts(text: int | str, expected: int) -> None:
    """Integers are bytes; strings take decimal (KB..TB) and binary (KiB..TiB) units in any case."""
    assert parse_size(text) == expected


BAD_SIZES = [
    ("12XB", "unknown unit 'XB'"),
    ("", "expected a number and a unit"),
    ("MiB", "expected a number and a unit"),
    ("-5MiB", "must not be negative"),
    (-1, "must not be negative"),
    ("1.5B", "not a whole number of bytes"),
    ("1e6", "expected a number and a unit"),
    (True, "got bool"),
    (1.5, "got a float"),
    ("8 MiB/s", "expected a number and a unit"),
]


@pytest.mark.parametrize(("value", "message"), BAD_SIZES, ids=[repr(v) for v, _ in BAD_SIZES])
def test_parse_size_rejects(value: object, message: str) -> None:
    """Unknown units, signs, fractions of a byte and non-sizes are refused with a short reason."""
    with pytest.raises(ValueError, match=message):
        parse_size(value)  # type: ignore[arg-type]


GOOD_RATES = [
    (0, None),
    ("0", None),
    ("0MiB/s", None),
    ("200MiB/s", 200 * MiB),
    ("200mib/S", 200 * MiB),
    ("500KB/s", 500_000),
    ("1.5GiB/s", 1.5 * GiB),
    ("100Mbit/s", 12_500_000),
    ("1Gbit/s", 125_000_000),
    ("8bit/s", 1),
    ("1024/s", 1024),
]


@pytest.mark.parametrize(("text", "expected"), GOOD_RATES, ids=[repr(t) for t, _ in GOOD_RATES])
def test_parse_rate_accepts(text: int | str, expected: float | None) -> None:
    """Rates are sizes per second (bit units divided by 8); zero in any form means unlimited."""
    assert parse_rate(text) == expected


BAD_RATES = [
    ("200MiB", "ends in '/s'"),
    (100, "needs a unit"),
    ("fast/s", "expected a number and a unit"),
    ("10XB/s", "unknown unit 'XB'"),
    ("-1MiB/s", "must not be negative"),
    (None, "got NoneType"),
]


@pytest.mark.parametrize(("value", "message"), BAD_RATES, ids=[repr(v) for v, _ in BAD_RATES])
def test_parse_rate_rejects(value: object, message: str) -> None:
    """A size without "/s", a bare non-zero number or an unknown unit is not a rate."""
    with pytest.raises(ValueError, match=message):
        parse_rate(value)  # type: ignore[arg-type]


GOOD_DURATIONS = [
    (0, None),
    ("0", None),
    ("0s", None),
    (90, 90.0),
    (1.5, 1.5),
    ("90", 90.0),
    ("90s", 90.0),
    ("50m", 3000.0),
    ("2h", 7200.0),
    ("1h30m", 5400.0),
    ("1h 30m", 5400.0),
    ("1d", 86400.0),
    ("1d2h3m4s", 93784.0),
    ("500ms", 0.5),
    ("1.5h", 5400.0),
    ("PT50M", 3000.0),
    ("pt1h30m", 5400.0),
    ("P1DT2H", 93600.0),
    ("PT0.5S", 0.5),
]


@pytest.mark.parametrize(("text", "expected"), GOOD_DURATIONS, ids=[repr(t) for t, _ in GOOD_DURATIONS])
def test_parse_duration_accepts(text: int | float | str, expected: float | None) -> None:
    """Compact (1h30m), ISO-8601 (PT50M) and plain seconds are read; zero means no limit."""
    assert parse_duration(text) == expected


BAD_DURATIONS = [
    ("5 years", "expected a duration"),
    ("", "expected a duration"),
    ("30m1h", "expected a duration"),
    ("P", "expected a duration"),
    ("PT", "expected a duration"),
    ("-5m", "must not be negative"),
    (-1, "must not be negative"),
    (float("inf"), "finite"),
    (False, "got bool"),
]


@pytest.mark.parametrize(("value", "message"), BAD_DURATIONS, ids=[repr(v) for v, _ in BAD_DURATIONS])
def test_parse_duration_rejects(value: object, message: str) -> None:
    """Unknown units, units out of order, empty ISO forms and negative values are refused."""
    with pytest.raises(ValueError, match=message):
        parse_duration(value)  # type: ignore[arg-type]


FORMATTED_SIZES = [
    (0, "0 B"),
    (512, "512 B"),
    (1023, "1023 B"),
    (KiB, "1.0 KiB"),
    (8 * MiB, "8.0 MiB"),
    (3 * GiB // 2, "1.5 GiB"),
    (MiB - 1, "1.0 MiB"),
    (2**50, "1.0 PiB"),
    (2**60, "1024.0 PiB"),
]


@pytest.mark.parametrize(("n", "text"), FORMATTED_SIZES, ids=[t for _, t in FORMATTED_SIZES])
def test_format_size(n: int, text: str) -> None:
    """Sizes print in binary units with one decimal, never as "1024.0" of a smaller unit."""
    assert format_size(n) == text


FORMATTED_RATES = [(None, "unlimited"), (200 * MiB, "200.0 MiB/s"), (100.0, "100 B/s")]


@pytest.mark.parametrize(("bps", "text"), FORMATTED_RATES, ids=[t for _, t in FORMATTED_RATES])
def test_format_rate(bps: float | None, text: str) -> None:
    """Rates print as a size per second; None prints as unlimited."""
    assert format_rate(bps) == text


FORMATTED_DURATIONS = [
    (None, "unlimited"),
    (0, "0s"),
    (1.5, "1.5s"),
    (45, "45s"),
    (59.6, "1m00s"),
    (245, "4m05s"),
    (3723, "1h02m03s"),
    (2 * 86400 + 3 * 3600, "2d03h00m00s"),
]


@pytest.mark.parametrize(("seconds", "text"), FORMATTED_DURATIONS, ids=[t for _, t in FORMATTED_DURATIONS])
def test_format_duration(seconds: float | None, text: str) -> None:
    """Durations print as 1h02m03s with zero-padded minor units; None prints as unlimited."""
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("formatter", "value"),
    [(format_size, -1), (format_rate, -1.0), (format_duration, -1), (format_duration, float("nan"))],
    ids=["size", "rate", "duration", "duration-nan"],
)
def test_formatters_reject_negative(formatter: object, value: float) -> None:
    """Negative or non-finite quantities are a bug in the caller, not something to print."""
    with pytest.raises(ValueError, match="non-negative"):
        formatter(value)  # type: ignore[operator]


@pytest.mark.parametrize("text", ["8MiB", "1.5GiB", "64KiB", "1TiB"], ids=["8MiB", "1.5GiB", "64KiB", "1TiB"])
def test_size_round_trip(text: str) -> None:
    """What format_size prints, parse_size reads back (spaces and all)."""
    assert parse_size(format_size(parse_size(text))) == parse_size(text)


def test_display_width_counts_terminal_columns() -> None:
    """A Korean syllable takes two columns, a combining mark none, a control character one."""
    assert display_width("golden") == 6
    assert display_width("골든") == 4
    assert display_width("e\u0301") == 1
    assert display_width("a\tb") == 3


@pytest.mark.parametrize(
    ("text", "width", "clipped"),
    [
        ("short", 10, "short"),
        ("exactly-10", 10, "exactly-10"),
        ("one-too-long", 11, "one-too-lo…"),
        ("골든이미지", 6, "골든…"),  # 2 + 2 + ellipsis; a third syllable would take 7 columns
        ("골든이미지", 5, "골든…"),
    ],
)
def test_clip_ends_a_cut_in_an_ellipsis_within_the_width(text: str, width: int, clipped: str) -> None:
    assert clip(text, width) == clipped
    assert display_width(clip(text, width)) <= width


def test_format_table_aligns_by_display_width() -> None:
    """A Korean name does not push the next column out of line: every row's second column starts at one column."""
    table = format_table([("NAME", "TARGET"), ("골든", "KR2"), ("golden-image", "JP1")]).splitlines()
    targets = ("TARGET", "KR2", "JP1")
    starts = {display_width(line[: line.index(target)]) for line, target in zip(table, targets, strict=True)}
    assert starts == {len("golden-image") + 2}
