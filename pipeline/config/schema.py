"""Job-file schema: the value checks, the pydantic models of each table, and pydantic errors as (path, message).

``spec`` runs each section of a job file through one of the ``_Raw*`` models here (``extra="forbid"``, strict
types) via ``_validate``, which turns pydantic's errors into short (dotted key path, message) pairs. The value
checks raise ``ValueError`` with the exact message the user sees. Nothing here reads the environment or builds
a ``JobSpec``; the defaults live here because the models need them, and ``spec`` re-exports them.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable
from datetime import date, datetime, time
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    ValidationInfo,
)
from pydantic_core import ErrorDetails

from pipeline.cloud.auth import DEFAULT_IDENTITY_URL
from pipeline.units import KiB, MiB, format_size, parse_duration, parse_rate, parse_size

# What ``spec`` uses; the underscore names are internal to the two modules, not a public API.
__all__ = [
    "DEFAULT_BUFFER_DEPTH",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_COMMUNITY",
    "DEFAULT_CONNECTIONS_PER_REGION",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_IMAGES_IN_FLIGHT",
    "DEFAULT_ON_CHANGE",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_RETRIES",
    "DEFAULT_VISIBILITY",
    "_NAME",
    "_TOP_LEVEL",
    "_Problems",
    "_Raw",
    "_RawAuth",
    "_RawCopy",
    "_RawEndpoint",
    "_RawRun",
    "_RawSelect",
    "_RawSource",
    "_RawTransfer",
    "_dotted",
    "_kind",
    "_unknown_key",
    "_validate",
]

DEFAULT_VISIBILITY: tuple[str, ...] = ("private", "shared")
DEFAULT_ON_CHANGE: Literal["replace", "keep"] = "replace"
DEFAULT_COMMUNITY: Literal["skip", "private", "community"] = "skip"
DEFAULT_IMAGES_IN_FLIGHT = 4
DEFAULT_CHUNK_SIZE = 8 * MiB
DEFAULT_BUFFER_DEPTH = 4
DEFAULT_RETRIES = 5
DEFAULT_CONNECTIONS_PER_REGION = 8
DEFAULT_CONNECT_TIMEOUT = 30.0
DEFAULT_READ_TIMEOUT = 120.0

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
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
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
    if not isinstance(value, list):
        raise ValueError(f"expected an array, got {_kind(value)}")
    if not value:
        raise ValueError("must list at least one of private, shared, community")
    for item in value:
        if item == "public":
            raise ValueError("public images are never copied")
        if item not in _VISIBILITIES:
            raise ValueError(f"unknown visibility {item!r}; expected private, shared or community")
    return tuple(dict.fromkeys(value))


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
    if not isinstance(value, list):
        raise ValueError(f"expected true, false or an array of globs, got {_kind(value)}")
    return tuple(_glob(item) for item in value)


def _path(value: object) -> Path:
    return Path(_text(value)).expanduser()


def _existing_path(value: object) -> Path:
    path = _path(value)
    if not path.exists():
        raise ValueError(f"file not found: {path}")
    return path


# === raw models: the structure of the file, one per table

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


class _Raw(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _RawAuth(_Raw):
    #: "nhn" (NHN Cloud's Keystone v2.0-style identity, the default) or "keystone" (Keystone v3).
    type: Literal["nhn", "keystone"] = "nhn"
    identity_url: _Url = DEFAULT_IDENTITY_URL
    tenant_id: _Text | None = None
    username: _Text | None = None
    password_env: _EnvName | None = None
    endpoint: _Url | None = None
    token_env: _EnvName | None = None
    # Keystone v3 (type = "keystone")
    auth_url: _Url | None = None
    user_id: _Text | None = None
    user_domain_name: _Text | None = None
    user_domain_id: _Text | None = None
    project_name: _Text | None = None
    project_id: _Text | None = None
    project_domain_name: _Text | None = None
    project_domain_id: _Text | None = None
    application_credential_id: _Text | None = None
    application_credential_name: _Text | None = None
    application_credential_secret_env: _EnvName | None = None
    interface: Literal["public", "internal", "admin"] = "public"
    #: A cloud of clouds.yaml (found where openstacksdk looks), or "envvars" for the OS_* variables.
    cloud: _Text | None = None


class _RawEndpoint(_Raw):
    auth: _AuthRef
    region: _Text


class _RawSource(_RawEndpoint):
    #: NHN: switch nhncloud_allow_download on for a gated source while it is read, then back.
    enable_download: bool = False


class _RawSelect(_Raw):
    ids: list[_Text] = Field(default_factory=list)
    names: list[_Glob] = Field(default_factory=list)
    visibility: Annotated[tuple[str, ...], PlainValidator(_visibility)] = DEFAULT_VISIBILITY
    tags: list[_Text] = Field(default_factory=list)
    owner: _Text | None = None
    size_min: _Size | None = None
    size_max: _Size | None = None
    nhncloud_product: Annotated[str, PlainValidator(_product)] | None = None
    updated_since: Annotated[datetime, PlainValidator(_aware_datetime)] | None = None
    properties: dict[str, str] = Field(default_factory=dict)


class _RawCopy(_Raw):
    properties: Annotated[bool | tuple[str, ...], PlainValidator(_copy_properties)] = True
    exclude_properties: list[_Glob] = Field(default_factory=list)
    tags: bool = True
    members: bool = True
    visibility: bool = True
    protected: bool = True
    on_change: Literal["replace", "keep"] = DEFAULT_ON_CHANGE
    additive: bool = False
    member_map: dict[str, _Text] = Field(default_factory=dict)
    accept_members_with: list[_AuthRef] = Field(default_factory=list)
    community: Literal["skip", "private", "community"] = DEFAULT_COMMUNITY


class _RawTransfer(_Raw):
    images_in_flight: Annotated[int, AfterValidator(_between(1, 64))] = DEFAULT_IMAGES_IN_FLIGHT
    chunk_size: _ChunkSize = DEFAULT_CHUNK_SIZE
    buffer_depth: Annotated[int, AfterValidator(_between(1, 64))] = DEFAULT_BUFFER_DEPTH
    bandwidth: _Rate = None
    region_bandwidth: dict[str, _Rate] = Field(default_factory=dict)
    retries: Annotated[int, AfterValidator(_between(0, 100))] = DEFAULT_RETRIES
    connections_per_region: Annotated[int, AfterValidator(_between(1, 256))] = DEFAULT_CONNECTIONS_PER_REGION
    spool_dir: _PathValue | None = None
    connect_timeout: _Timeout = DEFAULT_CONNECT_TIMEOUT
    read_timeout: _Timeout = DEFAULT_READ_TIMEOUT
    #: None: the same as read_timeout.
    source_stall_timeout: _Timeout | None = None


class _RawRun(_Raw):
    journal_dir: _PathValue | None = None
    #: A node_exporter textfile (``*.prom``) rewritten atomically every 30 s and at the end of each run.
    metrics_file: _PathValue | None = None
    max_runtime: _Duration = None
    ca_bundle: Annotated[Path, PlainValidator(_existing_path)] | None = None
    insecure: bool = False


_TOP_LEVEL = ("name", "auth", "source", "targets", "select", "copy", "transfer", "run")
_EXPECTED = {
    "int_type": "an integer",
    "string_type": "a string",
    "bool_type": "a boolean",
    "float_type": "a number",
    "list_type": "an array",
    "tuple_type": "an array",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
}
_M = TypeVar("_M", bound=_Raw)
_Problems = list[tuple[str, str]]

# === turning pydantic's errors into short, human (path, message) pairs


def _dotted(loc: tuple[str | int, ...]) -> str:
    """("targets", 1, "region") -> "targets[1].region"; keys that are not bare TOML keys get quoted."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "[key]":  # pydantic's marker for "the key itself", not a path element
            key = part if _BARE_KEY.fullmatch(part) else json.dumps(part, ensure_ascii=False)
            out = f"{out}.{key}" if out else key
    return out


def _unknown_key(key: object, known: list[str]) -> str:
    if key in ("password", "token"):
        return f"unknown key; put the {key} in an environment variable and name it in {key}_env"
    close = difflib.get_close_matches(str(key), known, n=1)
    return f"unknown key (did you mean {close[0]!r}?)" if close else "unknown key"


def _message(error: ErrorDetails, known: list[str]) -> str:
    kind = error["type"]
    if kind == "missing":
        return "missing required key"
    if kind == "extra_forbidden":
        return _unknown_key(error["loc"][-1], known)
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {_kind(error['input'])}"
    if kind == "literal_error":
        return f"must be {error.get('ctx', {}).get('expected')}, got {error['input']!r}"
    if kind == "value_error":
        return str(error.get("ctx", {}).get("error", error["msg"]))
    return error["msg"][:1].lower() + error["msg"][1:]


def _validate(
    model: type[_M],
    value: object,
    loc: tuple[str | int, ...],
    problems: _Problems,
    profiles: list[str] | None,
) -> _M | None:
    try:
        return model.model_validate(value, context={"profiles": profiles})
    except ValidationError as exc:
        known = list(model.model_fields)
        problems.extend((_dotted(loc + tuple(e["loc"])), _message(e, known)) for e in exc.errors())
        return None
