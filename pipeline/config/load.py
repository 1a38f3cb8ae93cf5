"""Job files: ``jobs/*.toml`` read into a frozen ``JobSpec``, with every problem reported at once.

Three passes, all collecting into one list of (dotted key path, message):

1. structure: each section (and each auth profile and target) goes through its own model in ``models``
   (``extra="forbid"``, strict types), so one broken section does not hide the problems of another; pydantic's
   errors become short messages here; sizes, rates and durations are parsed by ``units``;
2. references: auth profile names, duplicate targets, a target that is the source;
3. secrets: ``password_env`` / ``token_env`` / ``application_credential_secret_env`` are looked up in the
   ``environ`` mapping given and put on the profile.

Any problem raises one ``JobSpecError`` (exit 2) listing them all. Validation makes no network calls;
it touches the file system only to read the job file and to check that ``ca_bundle`` exists.
Secrets live in ``Secret`` objects, so neither ``repr(spec)`` nor any message shows them.
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from pipeline.config.models import (
    AuthProfile,
    CopyOptions,
    Endpoint,
    JobSpec,
    PruneOptions,
    RunOptions,
    Select,
    Source,
    TransferOptions,
)
from pipeline.config.shard import Shard
from pipeline.config.values import BARE_KEY, DEFAULT_JOURNAL_ROOT, NAME, Secret, _kind
from pipeline.errors import JobSpecError
from pipeline.units import format_size

__all__ = ["load_job", "override", "parse_job"]

_TOP_LEVEL = ("name", "auth", "source", "targets", "select", "copy", "transfer", "run", "prune")
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
_M = TypeVar("_M", bound=BaseModel)
_Problems = list[tuple[str, str]]

# === turning pydantic's errors into short, human (path, message) pairs


def _dotted(loc: tuple[str | int, ...]) -> str:
    """("targets", 1, "region") -> "targets[1].region"; keys that are not bare TOML keys get quoted."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "[key]":  # pydantic's marker for "the key itself", not a path element
            key = part if BARE_KEY.fullmatch(part) else json.dumps(part, ensure_ascii=False)
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
    elif not NAME.fullmatch(value):
        problems.append(("name", "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"))
    else:
        return value
    return None


_KEYSTONE_KEYS = frozenset({
    "auth_url", "user_id", "user_domain_name", "user_domain_id", "project_name", "project_id",
    "project_domain_name", "project_domain_id", "application_credential_id", "application_credential_name",
    "application_credential_secret_env", "interface",
})  # fmt: skip


def _keystone_form(given: set[str], loc: tuple[str | int, ...], problems: _Problems) -> bool:
    """Whether a ``type = "keystone"`` profile names what Keystone v3 needs (problems listed if not)."""
    before = len(problems)
    if "auth_url" not in given:
        problems.append((_dotted((*loc, "auth_url")), "missing required key (the Keystone v3 URL)"))
    stray = given - _KEYSTONE_KEYS - {"type", "username", "password_env"}
    problems.extend((_dotted((*loc, k)), "not a Keystone v3 key") for k in sorted(stray))
    user = "user_id" in given or ("username" in given and given & {"user_domain_name", "user_domain_id"})
    if given & {"application_credential_id", "application_credential_name", "application_credential_secret_env"}:
        if "application_credential_secret_env" not in given:
            problems.append((_dotted((*loc, "application_credential_secret_env")), "missing required key"))
        if "application_credential_id" not in given and not ("application_credential_name" in given and user):
            problems.append((_dotted(loc), "an application credential needs application_credential_id, or "
                                           "application_credential_name with the user (user_id, or username "
                                           "and user_domain_name or user_domain_id)"))  # fmt: skip
        return len(problems) == before
    if "password_env" not in given:
        problems.append((_dotted((*loc, "password_env")), "missing required key"))
    if not user:
        problems.append((_dotted(loc), "needs user_id, or username with user_domain_name or user_domain_id"))
    if "project_id" not in given and not (
        "project_name" in given and given & {"project_domain_name", "project_domain_id"}
    ):
        problems.append((_dotted(loc), "needs project_id, or project_name with project_domain_name or "
                                       "project_domain_id"))  # fmt: skip
    return len(problems) == before


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


def _from_env(table: dict[str, Any], loc: tuple[str | int, ...], problems: _Problems) -> dict[str, Any] | None:
    """``from_env = true`` is ``cloud = "envvars"`` (the OS_* variables); ``false`` means nothing."""
    value, rest = table["from_env"], {k: v for k, v in table.items() if k != "from_env"}
    if not isinstance(value, bool):
        problems.append((_dotted((*loc, "from_env")), f"expected a boolean, got {_kind(value)}"))
        return None
    if value and "cloud" in rest:
        problems.append((_dotted(loc), 'use either cloud = "NAME" or from_env = true, not both'))
        return None
    return {**rest, "cloud": "envvars"} if value else rest


def _auth_profile(
    name: str, table: object, env: Mapping[str, str], need_secrets: bool, problems: _Problems
) -> AuthProfile | None:
    loc: tuple[str | int, ...] = ("auth", name)
    if isinstance(table, dict) and "from_env" in table:  # openstacksdk's spelling of cloud = "envvars"
        table = _from_env(table, loc, problems)
        if table is None:
            return None
    raw = _validate(AuthProfile, table, loc, problems, None)
    given = set(table) if isinstance(table, dict) else set()
    if "cloud" in given:  # clouds.yaml or OS_*: read when the job runs (secrets may sit in those files)
        others = given - {"cloud", "interface"}
        problems.extend((_dotted((*loc, k)), "not allowed with cloud (the cloud supplies it)") for k in sorted(others))
        if raw is None or others:
            return None
        return _named(raw, name)
    if isinstance(table, dict) and table.get("type") == "keystone":
        if not _keystone_form(given, loc, problems) or raw is None:
            return None
        return _keystone_profile(name, raw, env, need_secrets, loc, problems)
    # The form is judged on the keys present, so it is reported even when a value is bad.
    stray = given & (_KEYSTONE_KEYS - {"interface"})
    problems.extend((_dotted((*loc, k)), 'a Keystone v3 key: set type = "keystone"') for k in sorted(stray))
    token_form = _auth_form(given, loc, problems) if isinstance(table, dict) else None
    if raw is None or token_form is None or stray:
        return None
    profile = _named(raw, name)
    if need_secrets:
        env_key = "token_env" if token_form else "password_env"
        secret = _secret(getattr(raw, env_key), env, env_key, loc, problems)
        if token_form:
            profile._token = secret
        else:
            profile._password = secret
    return profile


def _secret(variable: str | None, env: Mapping[str, str], key: str, loc: tuple[str | int, ...],
            problems: _Problems) -> Secret | None:  # fmt: skip
    """The secret in environment variable ``variable``, or a problem naming the variable (never its value)."""
    if variable is None:
        return None
    value = env.get(variable)
    if value:
        return Secret(value)
    problems.append(
        (_dotted((*loc, key)), f"environment variable {variable} is {'not set' if value is None else 'empty'}")
    )
    return None


def _keystone_profile(
    name: str, raw: AuthProfile, env: Mapping[str, str], need_secrets: bool, loc: tuple[str | int, ...],
    problems: _Problems,
) -> AuthProfile:  # fmt: skip
    profile = _named(raw, name)
    if need_secrets:
        profile._password = _secret(raw.password_env, env, "password_env", loc, problems)
        profile._application_credential_secret = _secret(
            raw.application_credential_secret_env, env, "application_credential_secret_env", loc, problems
        )
    return profile


def _named(profile: AuthProfile, name: str) -> AuthProfile:
    profile._name = name
    return profile


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


def _targets(value: object, problems: _Problems, profiles: list[str] | None) -> list[Endpoint | None]:
    if value is None:
        problems.append(("targets", "missing required key"))
    elif not isinstance(value, list):
        problems.append(("targets", f"expected an array of tables ([[targets]]), got {_kind(value)}"))
    elif not value:
        problems.append(("targets", "at least one target is required"))
    else:
        return [_validate(Endpoint, item, ("targets", i), problems, profiles) for i, item in enumerate(value)]
    return []


# === checks across sections


def _check_places(
    source: Endpoint | None,
    targets: list[Endpoint | None],
    profiles: Mapping[str, AuthProfile],
    problems: _Problems,
) -> None:
    """A target must differ from the source and from every earlier target (location + region)."""

    def place(end: Endpoint | None) -> tuple[str, str] | None:
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
        src = _validate(Source, doc["source"], ("source",), problems, names)
    targets = _targets(doc.get("targets"), problems, names)
    select = _validate(Select, doc.get("select", {}), ("select",), problems, names)
    copy = _validate(CopyOptions, doc.get("copy", {}), ("copy",), problems, names)
    transfer = _validate(TransferOptions, doc.get("transfer", {}), ("transfer",), problems, names)
    run = _validate(RunOptions, doc.get("run", {}), ("run",), problems, names)
    prune = _validate(PruneOptions, doc.get("prune", {}), ("prune",), problems, names)
    if prune and prune.enabled and prune.max_delete is None:
        problems.append(("prune.max_delete", "required when prune.enabled = true: the most copies one run may "
                                             "delete (a plan with more deletes nothing)"))  # fmt: skip

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
    if problems or not (name and src and targets and select and copy and transfer and run and prune):
        raise JobSpecError(source, problems)
    if "journal_dir" not in run.model_fields_set:
        run = run.model_copy(update={"journal_dir": DEFAULT_JOURNAL_ROOT / name})
    return JobSpec(name=name, path=None, auth=profiles, source=src, targets=tuple(t for t in targets if t),
                   select=select, copy=copy, transfer=transfer, run=run, prune=prune)  # fmt: skip


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


def override(
    spec: JobSpec, *, max_runtime: float | None = None, spool_dir: Path | None = None, shard: Shard | None = None
) -> JobSpec:
    """``spec`` with the command line's ``--max-runtime`` / ``--spool-dir`` in place of the file's values,
    and for ``--shard``/``--shards`` the shard, whose journal lives in ``journal_dir/shard-I-of-K/``."""
    run, transfer = spec.run, spec.transfer
    if max_runtime is not None:
        run = run.model_copy(update={"max_runtime": max_runtime})
    if spool_dir is not None:
        transfer = transfer.model_copy(update={"spool_dir": spool_dir})
    if shard is not None:
        run = run.model_copy(update={"journal_dir": run.journal_dir / shard.directory})
    return replace(spec, run=run, transfer=transfer, shard=shard or spec.shard)
