"""Sizes, rates and durations as people write them ("8MiB", "200MiB/s", "1h30m"), parsed and formatted.

Pure functions, no I/O. Parsers raise ``ValueError`` with a short message that names the problem
but not the value (the caller knows the value and the key path, and puts both in its own message).
Arithmetic is done in ``Decimal`` so "1.5GiB" is exactly 1610612736 bytes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from decimal import Decimal

__all__ = [
    "GB",
    "KB",
    "MB",
    "TB",
    "GiB",
    "KiB",
    "MiB",
    "TiB",
    "clip",
    "display_width",
    "format_duration",
    "format_rate",
    "format_size",
    "format_table",
    "parse_duration",
    "parse_rate",
    "parse_size",
]

KB, MB, GB, TB = 10**3, 10**6, 10**9, 10**12
KiB, MiB, GiB, TiB = 2**10, 2**20, 2**30, 2**40

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": KB,
    "mb": MB,
    "gb": GB,
    "tb": TB,
    "kib": KiB,
    "mib": MiB,
    "gib": GiB,
    "tib": TiB,
}
_BIT_UNITS = {"bit": 1, "kbit": KB, "mbit": MB, "gbit": GB, "tbit": TB}
_SIZE_HINT = "B, KB, MB, GB, TB, KiB, MiB, GiB or TiB"
_NUMBER_UNIT = re.compile(r"(?P<num>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(?P<unit>[A-Za-z]*)")

_NUM = r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_PLAIN_SECONDS = re.compile(_NUM)
# "1d2h3m4s500ms": each part optional, in this order; fullmatch backtracks "500ms" away from "m".
_COMPACT = re.compile(rf"(?:{_NUM}d)?(?:{_NUM}h)?(?:{_NUM}m)?(?:{_NUM}s)?(?:{_NUM}ms)?", re.IGNORECASE)
_COMPACT_FACTORS = tuple(Decimal(f) for f in ("86400", "3600", "60", "1", "0.001"))
_ISO = re.compile(rf"P(?:{_NUM}D)?(?:T(?:{_NUM}H)?(?:{_NUM}M)?(?:{_NUM}S)?)?", re.IGNORECASE)
_ISO_FACTORS = _COMPACT_FACTORS[:4]
_BINARY_PREFIXES = ("KiB", "MiB", "GiB", "TiB", "PiB")


def _number_and_unit(text: str, example: str) -> tuple[Decimal, str]:
    """Split "1.5 GiB" into (Decimal("1.5"), "GiB"); refuse signs, exponents and junk."""
    text = text.strip()
    if text.startswith("-"):
        raise ValueError("must not be negative")
    match = _NUMBER_UNIT.fullmatch(text)
    if match is None:
        raise ValueError(f"expected a number and a unit, like {example!r}")
    return Decimal(match["num"]), match["unit"]


def _reject_non_value(value: object, what: str) -> None:
    # bool is an int subclass; "insecure = true" must never be read as a size of 1 byte.
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected {what}, got {type(value).__name__}")


def parse_size(value: int | str) -> int:
    """Bytes from an integer or a string like "64KiB", "8MiB", "1.5GiB", "500MB" or "1024".

    Units are case-insensitive: B, KB, MB, GB, TB are powers of 1000; KiB, MiB, GiB, TiB powers of 1024.
    """
    if isinstance(value, float):
        raise ValueError("expected an integer or a string like '8MiB', got a float")
    _reject_non_value(value, "an integer or a string like '8MiB'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    number, unit = _number_and_unit(value, "8MiB")
    factor = _SIZE_UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(f"unknown unit {unit!r} (use {_SIZE_HINT})")
    total = number * factor
    if total != total.to_integral_value():
        raise ValueError("not a whole number of bytes")
    return int(total)


def parse_rate(value: int | float | str) -> float | None:
    """Bytes per second from "200MiB/s", "500KB/s" or "100Mbit/s"; 0 or "0" means unlimited (None).

    The "/s" is required so that a size is never mistaken for a rate; bit units (bit, Kbit, Mbit,
    Gbit, Tbit, powers of 1000) are divided by 8.
    """
    _reject_non_value(value, "a string like '200MiB/s'")
    if isinstance(value, int | float):
        if value == 0:
            return None
        raise ValueError("a rate needs a unit, like '200MiB/s' (or 0 for no limit)")
    text = value.strip()
    if text == "0":
        return None
    if not text.lower().endswith("/s"):
        raise ValueError("a rate ends in '/s', like '200MiB/s' (or '0' for no limit)")
    number, unit = _number_and_unit(text[:-2], "200MiB/s")
    key = unit.lower()
    if key in _BIT_UNITS:
        bps = number * _BIT_UNITS[key] / 8
    elif key in _SIZE_UNITS:
        bps = number * _SIZE_UNITS[key]
    else:
        raise ValueError(f"unknown unit {unit!r} (use {_SIZE_HINT}, or Kbit, Mbit, Gbit)")
    return float(bps) or None


def parse_duration(value: int | float | str) -> float | None:
    """Seconds from "90s", "50m", "2h", "1h30m", "1d", "500ms", "PT50M" or a plain number of seconds.

    0 (in any form) means no limit and gives None.
    """
    _reject_non_value(value, "a duration like '50m' or a number of seconds")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("must be a finite number of seconds")
        if value < 0:
            raise ValueError("must not be negative")
        return float(value) or None
    text = "".join(value.split())
    if text.startswith("-"):
        raise ValueError("must not be negative")
    seconds = _duration_seconds(text)
    if seconds is None:
        raise ValueError("expected a duration like '90s', '50m', '1h30m', '1d' or 'PT50M'")
    return float(seconds) or None


def _duration_seconds(text: str) -> Decimal | None:
    if not text:
        return None
    if _PLAIN_SECONDS.fullmatch(text):
        return Decimal(text)
    for pattern, factors in ((_COMPACT, _COMPACT_FACTORS), (_ISO, _ISO_FACTORS)):
        match = pattern.fullmatch(text)
        if match is None or not any(match.groups()):
            continue
        return sum(
            (Decimal(part) * factor for part, factor in zip(match.groups(), factors, strict=True) if part),
            Decimal(0),
        )
    return None


def display_width(text: str) -> int:
    """How many terminal columns ``text`` takes (a Korean syllable takes two; an unprintable character counts one)."""
    from wcwidth import wcwidth  # imported where tables are drawn, not by every command that parses a size

    return sum(max(wcwidth(ch), 0) if ch.isprintable() else 1 for ch in text)


def clip(text: str, width: int) -> str:
    """``text`` cut to at most ``width`` columns, with an ellipsis where it was cut."""
    if display_width(text) <= width:
        return text
    out, used = [], 0
    for ch in text:
        w = display_width(ch)
        if used + w > width - 1:
            break
        out.append(ch)
        used += w
    return "".join(out) + "…"


def format_table(rows: Sequence[Sequence[object]]) -> str:
    """Rows as left-aligned columns two spaces apart (the first row is the header), aligned by display width."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(display_width(r[i]) for r in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c + " " * (w - display_width(c)) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)  # fmt: skip


def format_size(n: float) -> str:
    """A byte count for people: "512 B", "8.0 MiB", "1.5 GiB" (binary units, one decimal)."""
    if n < 0 or not math.isfinite(n):
        raise ValueError("a size must be a finite, non-negative number")
    if n < KiB:
        return f"{n:.0f} B"
    value = float(n)
    for prefix in _BINARY_PREFIXES:
        value /= KiB
        # Go up a unit when rounding would print "1024.0 KiB".
        if round(value, 1) < KiB or prefix == _BINARY_PREFIXES[-1]:
            return f"{value:.1f} {prefix}"
    raise AssertionError("unreachable")  # pragma: no cover


def format_rate(bps: float | None) -> str:
    """A rate for people: "200.0 MiB/s"; None is "unlimited"."""
    if bps is None:
        return "unlimited"
    return f"{format_size(bps)}/s"


def format_duration(seconds: float | None) -> str:
    """A duration for people: "1h02m03s", "4m05s", "45s", "1.5s", "2d03h00m00s"; None is "unlimited"."""
    if seconds is None:
        return "unlimited"
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError("a duration must be a finite, non-negative number")
    if seconds < 10 and seconds != int(seconds):
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h{minutes:02d}m{secs:02d}s"
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
