"""Job files: ``jobs/*.toml`` read into a frozen ``JobSpec``, with every problem reported at once.

Three passes, all collecting into one list of (dotted key path, message):

1. structure: each section (and each auth profile and target) goes through its own pydantic model
   (``extra="forbid"``, strict types), so one broken section does not hide the problems of another;
   sizes, rates and durations are parsed by ``units``;
2. references: auth profile names, duplicate targets, a target that is the source;
3. secrets: ``password_env`` / ``token_env`` are looked up in the ``environ`` mapping given.

Any problem raises one ``JobSpecError`` (exit 2) listing them all. Validation makes no network calls;
it touches the file system only to read the job file and to check that ``ca_bundle`` exists.
Secrets live in ``Secret`` objects, so neither ``repr(spec)`` nor any message shows them.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
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

from .errors import JobSpecError
from .glance.auth import DEFAULT_IDENTITY_URL, Secret, normalize_endpoint
from .units import KiB, MiB, format_size, parse_duration, parse_rate, parse_size

__all__ = [
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
    "AuthProfile",
    "CopyOptions",
    "Endpoint",
    "JobSpec",
    "RunOptions",
    "Select",
    "TransferOptions",
    "load_job",
    "parse_job",
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
#: The journal lives in ``DEFAULT_JOURNAL_ROOT / name`` unless ``run.journal_dir`` says otherwise.
DEFAULT_JOURNAL_ROOT = Path("state")

# === the data model: what every other module reads


@dataclass(frozen=True, slots=True)
class AuthProfile:
    """Named credentials: identity URL + tenant + username + password, or a fixed endpoint + token."""

    name: str
    identity_url: str = DEFAULT_IDENTITY_URL
    tenant_id: str | None = None
    username: str | None = None
    password_env: str | None = None
    endpoint: str | None = None
    token_env: str | None = None
    password: Secret | None = None
    token: Secret | None = None

    @property
    def location(self) -> str:
        """Where the profile points: its endpoint, or identity URL + tenant; equal means the same place."""
        if self.endpoint is not None:
            return normalize_endpoint(self.endpoint)
        return f"{self.identity_url.rstrip('/')} tenant {self.tenant_id}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One side of the copy: an auth profile name and a region."""

    auth: str
    region: str


@dataclass(frozen=True, slots=True)
class Select:
    """Which source images to copy; an image must pass every filter that is set."""

    ids: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    visibility: tuple[str, ...] = DEFAULT_VISIBILITY
    tags: tuple[str, ...] = ()
    owner: str | None = None
    size_min: int | None = None
    size_max: int | None = None
    nhncloud_product: str | None = None
    updated_since: datetime | None = None
    properties: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CopyOptions:
    """What travels with the bytes, and what to do when a target already differs."""

    properties: bool | tuple[str, ...] = True
    exclude_properties: tuple[str, ...] = ()
    tags: bool = True
    members: bool = True
    visibility: bool = True
    protected: bool = True
    on_change: Literal["replace", "keep"] = DEFAULT_ON_CHANGE
    additive: bool = False
    member_map: Mapping[str, str] = field(default_factory=dict)
    accept_members_with: tuple[str, ...] = ()
    community: Literal["skip", "private", "community"] = DEFAULT_COMMUNITY


@dataclass(frozen=True, slots=True)
class TransferOptions:
    """How hard to push: concurrency, chunking, bandwidth, retries, timeouts (seconds, bytes/s)."""

    images_in_flight: int = DEFAULT_IMAGES_IN_FLIGHT
    chunk_size: int = DEFAULT_CHUNK_SIZE
    buffer_depth: int = DEFAULT_BUFFER_DEPTH
    bandwidth: float | None = None
    region_bandwidth: Mapping[str, float] = field(default_factory=dict)
    retries: int = DEFAULT_RETRIES
    connections_per_region: int = DEFAULT_CONNECTIONS_PER_REGION
    spool_dir: Path | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Where the journal lives, how long a run may take, and TLS settings."""

    journal_dir: Path
    max_runtime: float | None = None
    ca_bundle: Path | None = None
    insecure: bool = False


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A whole validated job file."""

    name: str
    path: Path | None
    auth: Mapping[str, AuthProfile]
    source: Endpoint
    targets: tuple[Endpoint, ...]
    select: Select
    copy: CopyOptions
    transfer: TransferOptions
    run: RunOptions

    def profile(self, endpoint: Endpoint) -> AuthProfile:
        """The auth profile an endpoint names (validation guarantees it exists)."""
        return self.auth[endpoint.auth]


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
    identity_url: _Url = DEFAULT_IDENTITY_URL
    tenant_id: _Text | None = None
    username: _Text | None = None
    password_env: _EnvName | None = None
    endpoint: _Url | None = None
    token_env: _EnvName | None = None


class _RawEndpoint(_Raw):
    auth: _AuthRef
    region: _Text


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


class _RawRun(_Raw):
    journal_dir: _PathValue | None = None
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


# === sections that are more than a model: the name, auth profiles, targets


def _job_name(value: object, problems: _Problems) -> str | None:
    if value is None:
        problems.append(("name", "missing required key"))
    elif not isinstance(value, str):
        problems.append(("name", f"expected a string, got {_kind(value)}"))
    elif not _NAME.fullmatch(value):
        problems.append(("name", "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"))
    else:
        return value
    return None


def _auth_form(given: set[str], loc: tuple[str | int, ...], problems: _Problems) -> bool | None:
    """True for the token form, False for the password form, None (and a problem) for neither or both."""
    token_form = bool(given & {"endpoint", "token_env"})
    if token_form and given & {"username", "password_env"}:
        problems.append((_dotted(loc), "use either username + password_env or endpoint + token_env, not both"))
        return None
    if not token_form and not given & {"tenant_id", "username", "password_env"}:
        problems.append((_dotted(loc), "needs tenant_id, username and password_env, or endpoint and token_env"))
        return None
    needed = ("endpoint", "token_env") if token_form else ("tenant_id", "username", "password_env")
    missing = [key for key in needed if key not in given]
    problems.extend((_dotted((*loc, key)), "missing required key") for key in missing)
    return None if missing else token_form


def _auth_profile(
    name: str, table: object, env: Mapping[str, str], need_secrets: bool, problems: _Problems
) -> AuthProfile | None:
    loc: tuple[str | int, ...] = ("auth", name)
    raw = _validate(_RawAuth, table, loc, problems, None)
    # The form is judged on the keys present, so it is reported even when a value is bad.
    token_form = _auth_form(set(table), loc, problems) if isinstance(table, dict) else None
    if raw is None or token_form is None:
        return None
    env_key = "token_env" if token_form else "password_env"
    variable = str(getattr(raw, env_key))
    secret = None
    if need_secrets:
        value = env.get(variable)
        if value:
            secret = Secret(value)
        else:  # the value is never put in a message, even an empty one
            state = "not set" if value is None else "empty"
            problems.append((_dotted((*loc, env_key)), f"environment variable {variable} is {state}"))
    return AuthProfile(
        name=name,
        identity_url=raw.identity_url,
        tenant_id=raw.tenant_id,
        username=raw.username,
        password_env=raw.password_env,
        endpoint=raw.endpoint,
        token_env=raw.token_env,
        password=None if token_form else secret,
        token=secret if token_form else None,
    )


def _auth(value: object, env: Mapping[str, str], need_secrets: bool, problems: _Problems) -> dict[str, AuthProfile]:
    if value is None:
        problems.append(("auth", "missing required key"))
    elif not isinstance(value, dict):
        problems.append(("auth", f"expected a table, got {_kind(value)}"))
    elif not value:
        problems.append(("auth", "define at least one profile, like [auth.src]"))
    else:
        profiles = {name: _auth_profile(name, table, env, need_secrets, problems) for name, table in value.items()}
        return {name: profile for name, profile in profiles.items() if profile}
    return {}


def _targets(value: object, problems: _Problems, profiles: list[str] | None) -> list[_RawEndpoint | None]:
    if value is None:
        problems.append(("targets", "missing required key"))
    elif not isinstance(value, list):
        problems.append(("targets", f"expected an array of tables ([[targets]]), got {_kind(value)}"))
    elif not value:
        problems.append(("targets", "at least one target is required"))
    else:
        return [_validate(_RawEndpoint, item, ("targets", i), problems, profiles) for i, item in enumerate(value)]
    return []


# === checks across sections


def _check_places(
    source: _RawEndpoint | None,
    targets: list[_RawEndpoint | None],
    profiles: Mapping[str, AuthProfile],
    problems: _Problems,
) -> None:
    """A target must differ from the source and from every earlier target (location + region)."""

    def place(end: _RawEndpoint | None) -> tuple[str, str] | None:
        if end is None:
            return None
        # A broken profile still has a name: the same name and region is the same place.
        profile = profiles.get(end.auth)
        return (profile.location if profile else f"auth {end.auth}", end.region)

    here = place(source)
    seen: dict[tuple[str, str], int] = {}
    for i, target in enumerate(targets):
        key = place(target)
        if key is None:
            continue
        if key == here:
            problems.append((f"targets[{i}]", "target is the source (same location and region)"))
        elif key in seen:
            where = f"targets[{seen[key]}]"
            problems.append((f"targets[{i}]", f"duplicate target: same location and region as {where}"))
        else:
            seen[key] = i


def _fields(raw: _Raw) -> dict[str, Any]:
    """A raw model's values as dataclass keyword arguments, arrays frozen into tuples."""
    return {key: tuple(value) if isinstance(value, list) else value for key, value in raw}


# === entry points


def parse_job(
    doc: Mapping[str, Any],
    source: str,
    environ: Mapping[str, str] | None = None,
    *,
    need_secrets: bool = True,
) -> JobSpec:
    """Validate a parsed TOML document; raise ``JobSpecError`` listing every problem found.

    ``environ`` (default ``os.environ``) supplies the secrets named by ``password_env``/``token_env``;
    with ``need_secrets=False`` they are neither required nor read (for ``plan``-like commands).
    """
    env = os.environ if environ is None else environ
    problems: _Problems = [
        (_dotted((key,)), _unknown_key(key, list(_TOP_LEVEL))) for key in doc if key not in _TOP_LEVEL
    ]
    name = _job_name(doc.get("name"), problems)
    auth = doc.get("auth")
    names = list(auth) if isinstance(auth, dict) else None  # references are checked against these
    profiles = _auth(auth, env, need_secrets, problems)
    src = None
    if "source" not in doc:
        problems.append(("source", "missing required key"))
    else:
        src = _validate(_RawEndpoint, doc["source"], ("source",), problems, names)
    targets = _targets(doc.get("targets"), problems, names)
    select = _validate(_RawSelect, doc.get("select", {}), ("select",), problems, names)
    copy = _validate(_RawCopy, doc.get("copy", {}), ("copy",), problems, names)
    transfer = _validate(_RawTransfer, doc.get("transfer", {}), ("transfer",), problems, names)
    run = _validate(_RawRun, doc.get("run", {}), ("run",), problems, names)

    _check_places(src, targets, profiles, problems)
    if select and select.size_min is not None and select.size_max and select.size_min > select.size_max:
        problems.append(("select.size_min", f"is larger than select.size_max ({format_size(select.size_max)})"))
    if transfer and src and targets and all(targets):
        regions = {src.region} | {t.region for t in targets if t}
        problems.extend(
            (
                _dotted(("transfer", "region_bandwidth", region)),
                "is neither the source region nor a target region",
            )
            for region in transfer.region_bandwidth
            if region not in regions
        )
    # Without problems every section parsed; the second half only tells the type checker so.
    if problems or not (name and src and targets and select and copy and transfer and run):
        raise JobSpecError(source, problems)
    return JobSpec(
        name=name,
        path=None,
        auth=profiles,
        source=Endpoint(src.auth, src.region),
        targets=tuple(Endpoint(t.auth, t.region) for t in targets if t),
        select=Select(**{**_fields(select), "size_max": select.size_max or None}),
        copy=CopyOptions(**_fields(copy)),
        transfer=TransferOptions(
            **{
                **_fields(transfer),
                "region_bandwidth": {r: bps for r, bps in transfer.region_bandwidth.items() if bps is not None},
            }
        ),
        run=RunOptions(**{**_fields(run), "journal_dir": run.journal_dir or DEFAULT_JOURNAL_ROOT / name}),
    )


def load_job(
    path: str | os.PathLike[str], environ: Mapping[str, str] | None = None, *, need_secrets: bool = True
) -> JobSpec:
    """Read and validate a job file; every problem (unreadable, bad TOML, invalid) is a ``JobSpecError``."""
    source = os.fspath(path)
    try:
        with open(path, "rb") as file:
            doc = tomllib.load(file)
    except OSError as exc:
        raise JobSpecError(source, [("", f"cannot read the file: {exc.strerror or exc}")]) from exc
    except UnicodeDecodeError as exc:
        raise JobSpecError(source, [("", "the file is not UTF-8 text")]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise JobSpecError(source, [("", f"TOML syntax error: {exc}")]) from exc
    return replace(parse_job(doc, source, environ, need_secrets=need_secrets), path=Path(source))
