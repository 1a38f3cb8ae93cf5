"""The job file's values: what a valid value is (each check raises ``ValueError`` with the message the user
sees), the annotated types the spec's models are built from, the defaults, and ``Secret``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, datetime, time
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, PlainValidator, ValidationInfo

from pipeline.units import KiB, MiB, format_size, parse_duration, parse_rate, parse_size

# The underscore names are the config package's own vocabulary (models, load), not a public API.
__all__ = [
    "BARE_KEY",
    "DEFAULT_BUFFER_DEPTH",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_COMMUNITY",
    "DEFAULT_CONNECTIONS_PER_REGION",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_IDENTITY_URL",
    "DEFAULT_IMAGES_IN_FLIGHT",
    "DEFAULT_JOURNAL_ROOT",
    "DEFAULT_ON_CHANGE",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_RETRIES",
    "DEFAULT_VISIBILITY",
    "NAME",
    "Secret",
    "_AuthRef",
    "_AuthRefs",
    "_ChunkSize",
    "_Duration",
    "_EnvName",
    "_Glob",
    "_Globs",
    "_JobNames",
    "_PathValue",
    "_Rate",
    "_Size",
    "_Text",
    "_Texts",
    "_Timeout",
    "_Url",
    "_aware_datetime",
    "_between",
    "_copy_properties",
    "_existing_path",
    "_fraction",
    "_kind",
    "_product",
    "_visibility",
    "normalize_endpoint",
]

#: NHN Cloud's identity service (Keystone v2.0-style tokens).
DEFAULT_IDENTITY_URL = "https://api-identity-infrastructure.nhncloudservice.com/v2.0"
#: The journal lives in ``DEFAULT_JOURNAL_ROOT / name`` unless ``run.journal_dir`` says otherwise.
DEFAULT_JOURNAL_ROOT = Path("state")
DEFAULT_VISIBILITY: tuple[str, ...] = ("private", "shared")
DEFAULT_ON_CHANGE: Literal["replace", "keep"] = "replace"
DEFAULT_COMMUNITY: Literal["skip", "private", "community"] = "skip"
#: Chosen from make bench (e): 8 beat 4 in every run with 30 ms per request (see the README, Performance).
DEFAULT_IMAGES_IN_FLIGHT = 8
DEFAULT_CHUNK_SIZE = 8 * MiB
DEFAULT_BUFFER_DEPTH = 4
DEFAULT_RETRIES = 5
DEFAULT_CONNECTIONS_PER_REGION = 8
DEFAULT_CONNECT_TIMEOUT = 30.0
DEFAULT_READ_TIMEOUT = 120.0


class Secret:
    """A string that never shows itself in repr, str, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself, for the one place that sends it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def normalize_endpoint(url: str) -> str:
    """A catalog URL without trailing slash or version suffix, so ``/v2/...`` can be appended."""
    url = url.rstrip("/")
    tail = url.rsplit("/", 1)[-1]
    if (tail.startswith("v2") and tail[2:].replace(".", "").isdigit()) or tail == "v2":
        url = url[: -len(tail)].rstrip("/")
    return url


# === value checks used by the models; each raises ValueError with the message the user sees

_TOML_KINDS: dict[type, str] = {
    bool: "a boolean",
    int: "an integer",
    float: "a float",
    str: "a string",
    dict: "a table",
    list: "an array",
    datetime: "a datetime",
    date: "a date",
    time: "a time",
}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_T = TypeVar("_T")
_VISIBILITIES = ("private", "shared", "community")


def _kind(value: object) -> str:
    return _TOML_KINDS.get(type(value), type(value).__name__)


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_kind(value)}")
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _url(value: object) -> str:
    parts = urlsplit(_text(value))
    # The URL itself is not echoed: a pasted URL may carry user:password@.
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    return str(value)


def _env_name(value: object) -> str:
    if not _ENV_NAME.fullmatch(_text(value)):
        # Not echoed either: the usual mistake is pasting the password itself here.
        raise ValueError("must be the NAME of an environment variable (letters, digits, _), not its value")
    return str(value)


def _job_name_ref(value: object) -> str:
    """Another job's name (``[run] previous_names``): the same rule as ``name``."""
    text = _text(value)
    if not NAME.fullmatch(text):
        raise ValueError(f"{text!r} is not a job name: 1-64 letters, digits, '.', '_' or '-', starting with a "
                         "letter or digit")  # fmt: skip
    return text


def _glob(value: object) -> str:
    if value == "":
        raise ValueError("bad glob '': empty")
    pattern = _text(value)
    i = 0
    while i < len(pattern):
        if pattern[i] == "[":
            # fnmatch reads "[!]x]" and "[]x]" as sets containing "]"; the set closes after that.
            j = i + 1 + (pattern[i + 1 : i + 2] == "!")
            j += pattern[j : j + 1] == "]"
            close = pattern.find("]", j)
            if close < 0:
                raise ValueError(f"bad glob {pattern!r}: unclosed '['")
            i = close
        i += 1
    return pattern


def _auth_ref(value: object, info: ValidationInfo) -> str:
    name = _text(value)
    names = (info.context or {}).get("profiles")
    if names is not None and name not in names:
        raise ValueError(f"unknown auth profile {name!r}; defined: {', '.join(names) or 'none'}")
    return name


def _parsed(parse: Callable[[Any], _T], what: str, example: str) -> Callable[[object], _T]:
    def check(value: object) -> _T:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(f"expected {example}, got {_kind(value)}")
        try:
            return parse(value)
        except ValueError as exc:
            raise ValueError(f"bad {what} {value!r}: {exc}") from None

    return check


_size = _parsed(parse_size, "size", "a size like '10GiB' or an integer")
_rate = _parsed(parse_rate, "rate", "a rate like '200MiB/s'")
_duration = _parsed(parse_duration, "duration", "a duration like '50m' or a number of seconds")


def _timeout(value: object) -> float:
    seconds = _duration(value)
    if seconds is None:
        raise ValueError("must be longer than 0s")
    return seconds


def _between(lo: int, hi: int, show: Callable[[int], str] = str) -> Callable[[int], int]:
    def check(value: int) -> int:
        if not lo <= value <= hi:
            raise ValueError(f"must be between {show(lo)} and {show(hi)}, got {show(value)}")
        return value

    return check


def _visibility(value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):  # a tuple: built in code
        raise ValueError(f"expected an array, got {_kind(value)}")
    if not value:
        raise ValueError("must list at least one of private, shared, community")
    for item in value:
        if item == "public":
            raise ValueError("public images are never copied")
        if item not in _VISIBILITIES:
            raise ValueError(f"unknown visibility {item!r}; expected private, shared or community")
    return tuple(dict.fromkeys(value))


def _fraction(value: object) -> float:
    """A share: "50%" or a number from 0 to 1."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            share = float(value.strip()[:-1]) / 100
        except ValueError:
            raise ValueError(f"bad percentage {value!r}: expected something like '50%'") from None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        share = float(value)
    else:
        raise ValueError(f"expected a percentage like '50%' or a number from 0 to 1, got {_kind(value)}")
    if not 0 <= share <= 1:
        raise ValueError(f"must be between 0% and 100%, got {value!r}")
    return share


def _product(value: object) -> str:
    if value not in ("compute", "gpu"):
        raise ValueError(f"must be 'compute' or 'gpu', got {value!r}")
    return str(value)


def _aware_datetime(value: object) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"bad datetime {value!r}: expected RFC 3339, like 2024-05-01T00:00:00Z") from None
    if not isinstance(value, datetime):
        raise ValueError(f"expected a datetime, got {_kind(value)}")
    if value.utcoffset() is None:
        raise ValueError("needs a UTC offset, like 2024-05-01T00:00:00Z")
    return value


def _copy_properties(value: object) -> bool | tuple[str, ...]:
    if isinstance(value, bool):
        return value
    if not isinstance(value, list | tuple):  # a tuple: built in code
        raise ValueError(f"expected true, false or an array of globs, got {_kind(value)}")
    return tuple(_glob(item) for item in value)


def _path(value: object) -> Path:
    if isinstance(value, Path):  # built in code (tests, overrides), not read from a file
        return value
    return Path(_text(value)).expanduser()


def _existing_path(value: object) -> Path:
    path = _path(value)
    if not path.exists():
        raise ValueError(f"file not found: {path}")
    return path


def _listed(value: object) -> object:
    """TOML arrays arrive as lists; the spec keeps them as tuples (frozen). Anything else fails as "an array"."""
    return tuple(value) if isinstance(value, list) else value


# === the annotated types the models use

_Text = Annotated[str, PlainValidator(_text)]
_Url = Annotated[str, PlainValidator(_url)]
_EnvName = Annotated[str, PlainValidator(_env_name)]
_Glob = Annotated[str, PlainValidator(_glob)]
_AuthRef = Annotated[str, PlainValidator(_auth_ref)]
_Size = Annotated[int, PlainValidator(_size)]
_Rate = Annotated[float | None, PlainValidator(_rate)]
_Duration = Annotated[float | None, PlainValidator(_duration)]
_Timeout = Annotated[float, PlainValidator(_timeout)]
_ChunkSize = Annotated[int, PlainValidator(_size), AfterValidator(_between(64 * KiB, 256 * MiB, format_size))]
_PathValue = Annotated[Path, PlainValidator(_path)]
_Texts = Annotated[tuple[_Text, ...], BeforeValidator(_listed)]
_Globs = Annotated[tuple[_Glob, ...], BeforeValidator(_listed)]
_AuthRefs = Annotated[tuple[_AuthRef, ...], BeforeValidator(_listed)]
_JobNames = Annotated[tuple[Annotated[str, PlainValidator(_job_name_ref)], ...], BeforeValidator(_listed)]
