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

import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline.config.models import (
    AuthProfile,
    CopyOptions,
    Endpoint,
    JobSpec,
    PruneOptions,
    RunOptions,
    Select,
    Source,
    Target,
    TransferOptions,
)
from pipeline.config.problems import Problems, dotted, unknown_key, validate
from pipeline.config.profiles import auth_profiles
from pipeline.config.shard import Shard
from pipeline.config.values import DEFAULT_JOURNAL_ROOT, NAME, _kind
from pipeline.errors import JobSpecError
from pipeline.units import format_size

__all__ = ["load_job", "override", "parse_job"]

_TOP_LEVEL = ("name", "auth", "source", "targets", "select", "copy", "transfer", "run", "prune")
# === sections that are more than a model: the name, auth profiles, targets


def _job_name(value: object, problems: Problems) -> str | None:
    if value is None:
        problems.append(("name", "missing required key"))
    elif not isinstance(value, str):
        problems.append(("name", f"expected a string, got {_kind(value)}"))
    elif not NAME.fullmatch(value):
        problems.append(("name", "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"))
    else:
        return value
    return None


def _targets(value: object, problems: Problems, profiles: list[str] | None) -> list[Target | None]:
    if value is None:
        problems.append(("targets", "missing required key"))
    elif not isinstance(value, list):
        problems.append(("targets", f"expected an array of tables ([[targets]]), got {_kind(value)}"))
    elif not value:
        problems.append(("targets", "at least one target is required"))
    else:
        return [validate(Target, item, ("targets", i), problems, profiles) for i, item in enumerate(value)]
    return []


# === checks across sections


def _check_places(
    source: Endpoint | None,
    targets: Sequence[Endpoint | None],
    profiles: Mapping[str, AuthProfile],
    problems: Problems,
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


#: The keys that hold paths: relative ones are relative to the job file's directory.
PATH_KEYS = (("run", "journal_dir"), ("run", "metrics_file"), ("run", "ca_bundle"), ("transfer", "spool_dir"))


def _anchored(doc: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """``doc`` with every relative path of ``PATH_KEYS`` made relative to ``base`` (``~`` paths stay home's)."""
    out = dict(doc)
    for section, key in PATH_KEYS:
        table = out.get(section)
        value = table.get(key) if isinstance(table, dict) else None
        if isinstance(value, str) and value and not value.startswith("~") and not os.path.isabs(value):
            out[section] = {**table, key: os.path.normpath(base / value)}  # type: ignore[dict-item]
    return out


def parse_job(
    doc: Mapping[str, Any],
    source: str,
    environ: Mapping[str, str] | None = None,
    *,
    need_secrets: bool = True,
    base: Path | None = None,
) -> JobSpec:
    """Validate a parsed TOML document; raise ``JobSpecError`` listing every problem found.

    ``environ`` (default ``os.environ``) supplies the secrets named by ``password_env``/``token_env``;
    with ``need_secrets=False`` they are neither required nor read (for ``plan``-like commands). ``base``: the
    directory relative paths are relative to (the job file's; default the working directory), the default
    ``journal_dir`` (``state/<name>``) included.
    """
    env = os.environ if environ is None else environ
    base = Path.cwd() if base is None else base
    doc = _anchored(doc, base)
    problems: Problems = [(dotted((key,)), unknown_key(key, list(_TOP_LEVEL))) for key in doc if key not in _TOP_LEVEL]
    name = _job_name(doc.get("name"), problems)
    auth = doc.get("auth")
    names = list(auth) if isinstance(auth, dict) else None  # references are checked against these
    profiles = auth_profiles(auth, env, need_secrets, problems)
    src = None
    if "source" not in doc:
        problems.append(("source", "missing required key"))
    else:
        src = validate(Source, doc["source"], ("source",), problems, names)
    targets = _targets(doc.get("targets"), problems, names)
    select = validate(Select, doc.get("select", {}), ("select",), problems, names)
    copy = validate(CopyOptions, doc.get("copy", {}), ("copy",), problems, names)
    transfer = validate(TransferOptions, doc.get("transfer", {}), ("transfer",), problems, names)
    run = validate(RunOptions, doc.get("run", {}), ("run",), problems, names)
    prune = validate(PruneOptions, doc.get("prune", {}), ("prune",), problems, names)
    if prune and prune.enabled and prune.max_delete is None:
        problems.append(("prune.max_delete", "required when prune.enabled = true: the most copies one run may "
                                             "delete (a plan with more deletes nothing)"))  # fmt: skip

    if run and name and name in run.previous_names:
        problems.append(("run.previous_names", f"names this job itself ({name!r}): list only the names it had before"))
    if prune and prune.grace is not None and prune.grace <= 0:
        problems.append(("prune.grace", "must be a positive duration like '7d' (leave it out to delete at once)"))
    _check_places(src, targets, profiles, problems)
    if select and select.size_min is not None and select.size_max and select.size_min > select.size_max:
        problems.append(("select.size_min", f"is larger than select.size_max ({format_size(select.size_max)})"))
    if transfer and src and targets and all(targets):
        regions = {src.region} | {t.region for t in targets if t}
        problems.extend(
            (
                dotted(("transfer", "region_bandwidth", region)),
                "is neither the source region nor a target region",
            )
            for region in transfer.region_bandwidth
            if region not in regions
        )
    # Without problems every section parsed; the second half only tells the type checker so.
    if problems or not (name and src and targets and select and copy and transfer and run and prune):
        raise JobSpecError(source, problems)
    if "journal_dir" not in run.model_fields_set:
        run = run.model_copy(update={"journal_dir": base / DEFAULT_JOURNAL_ROOT / name})
    return JobSpec(name=name, path=None, auth=profiles, source=src, targets=tuple(t for t in targets if t),
                   select=select, copy=copy, transfer=transfer, run=run, prune=prune)  # fmt: skip


def load_job(
    path: str | os.PathLike[str], environ: Mapping[str, str] | None = None, *, need_secrets: bool = True
) -> JobSpec:
    """Read and validate a job file; every problem (unreadable, bad TOML, invalid) is a ``JobSpecError``. Its
    relative paths are relative to its own directory (to the working directory for a job read from standard
    input), so a job means the same from cron, from a shell anywhere, and from a Kubernetes pod."""
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
    base = Path.cwd() if _is_stream(source) else Path(source).absolute().parent
    return replace(parse_job(doc, source, environ, need_secrets=need_secrets, base=base), path=Path(source))


def _is_stream(source: str) -> bool:
    """Whether the job comes from standard input or a pipe (``/dev/stdin``, ``/dev/fd/N``), not a file."""
    return source == "/dev/stdin" or source.startswith(("/dev/fd/", "/proc/self/fd/"))


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
