"""``imgmig copy``: a one-off copy given on the command line, turned into the job it stands for.

``--from PROFILE[:REGION]`` and ``--to PROFILE:REGION[,REGION...]`` name places. A PROFILE is, in this order:

1. an ``[auth.PROFILE]`` table of the profiles file (``$IMGMIG_PROFILES``, else
   ``$XDG_CONFIG_HOME/imgmig/profiles.toml``, default ``~/.config/imgmig/profiles.toml``), in a job file's form;
2. a cloud of clouds.yaml (found where the openstack CLI finds it), or ``envvars`` for the OS_* variables.

An empty PROFILE (``--to :KR2``, or no ``--from`` at all) is the default cloud: ``--os-cloud``, else ``$OS_CLOUD``,
else the OS_* variables, else the only cloud of clouds.yaml. A place without a region takes its cloud's
``region_name``. The job is an ordinary ``JobSpec``: its name is ``copy-`` plus a short hash of the source's and
the targets' locations, its journal ``$XDG_STATE_HOME/imgmig/copy/NAME`` (default ``~/.local/state``). The same
command run again therefore finds its journal: it resumes an interrupted copy, or has nothing to do.
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import tomli_w

from pipeline.cloud.cloudconfig import load_cloud
from pipeline.config import JobSpec, parse_job
from pipeline.errors import JobSpecError, UsageError

__all__ = ["PROFILES_VARIABLE", "CopyJob", "copy_job", "profiles_path", "state_home"]

#: The environment variable that names the profiles file.
PROFILES_VARIABLE = "IMGMIG_PROFILES"
_UUID = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}")
_SOURCE = "imgmig copy"


@dataclass(frozen=True)
class CopyJob:
    """The job a copy command stands for: the spec to run, and the document ``--save`` writes."""

    spec: JobSpec
    document: dict[str, Any]

    def toml(self) -> str:
        """The job file ``--save`` writes: the same copy, for ``status``, ``report``, ``verify`` and cron."""
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        head = (f"# Written by `imgmig copy --save` on {stamp}: the same copy as a job file.\n"
                "# Its journal is the copy's own: `imgmig status` shows the copy's runs, `imgmig run` goes on.\n"
                "# Secrets stay in the environment variables named here, or in clouds.yaml\n\n")  # fmt: skip
        return head + tomli_w.dumps(self.document)


def profiles_path(environ: Mapping[str, str]) -> Path:
    """Where the profiles file is: ``$IMGMIG_PROFILES``, else the XDG config directory's ``imgmig/profiles.toml``."""
    given = environ.get(PROFILES_VARIABLE)
    if given:
        return Path(given).expanduser()
    return _xdg(environ, "XDG_CONFIG_HOME", ".config") / "imgmig" / "profiles.toml"


def state_home(environ: Mapping[str, str]) -> Path:
    """``$XDG_STATE_HOME`` (default ``~/.local/state``)/imgmig: where copies keep their journals."""
    return _xdg(environ, "XDG_STATE_HOME", ".local/state") / "imgmig"


def _xdg(environ: Mapping[str, str], variable: str, default: str) -> Path:
    value = environ.get(variable, "")
    if os.path.isabs(value):
        return Path(value)
    home = environ.get("HOME") or os.path.expanduser("~")
    return Path(home) / default


def _read_profiles(environ: Mapping[str, str]) -> tuple[Path, dict[str, Any]]:
    """The profiles file's ``[auth.NAME]`` tables (none without a file, unless ``$IMGMIG_PROFILES`` names one)."""
    path = profiles_path(environ)
    try:
        with path.open("rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        if environ.get(PROFILES_VARIABLE):
            raise JobSpecError(str(path), [("", f"cannot read the file ({PROFILES_VARIABLE} names it): "
                                                "no such file")]) from None  # fmt: skip
        return path, {}
    except OSError as exc:
        raise JobSpecError(str(path), [("", f"cannot read the file: {exc.strerror or exc}")]) from exc
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise JobSpecError(str(path), [("", f"TOML syntax error: {exc}")]) from exc
    stray = [key for key in doc if key != "auth"]
    auth = doc.get("auth", {})
    problems = [(key, "a profiles file holds [auth.NAME] tables only") for key in stray]
    if not isinstance(auth, dict) or any(not isinstance(t, dict) for t in auth.values()):
        problems.append(("auth", "expected [auth.NAME] tables"))
    if problems:
        raise JobSpecError(str(path), problems)
    return path, auth


def _place(text: str, option: str) -> tuple[str, tuple[str, ...]]:
    """``PROFILE[:REGION[,REGION...]]`` -> (profile, regions); an empty profile is the default cloud."""
    profile, _, regions = text.partition(":")
    names = tuple(r.strip() for r in regions.split(",") if r.strip())
    if ":" in text and not names:
        raise UsageError(f"{option} {text!r}: name a region after the colon, e.g. {profile or ''}:KR1")
    if len(set(names)) != len(names):
        raise UsageError(f"{option} {text!r} names a region twice")
    return profile.strip(), names


class _Profiles:
    """Profile names resolved to job-file tables: the profiles file's, else clouds.yaml's (or the OS_* cloud)."""

    def __init__(self, environ: Mapping[str, str], os_cloud: str | None) -> None:
        self.environ = environ
        self.os_cloud = os_cloud
        self.path, self.file = _read_profiles(environ)
        self.tables: dict[str, dict[str, Any]] = {}
        #: Where each cloud points (identity URL, project or tenant, user): a cloud's name alone is not a place.
        self.locations: dict[str, str] = {}

    def resolve(self, name: str, regions: tuple[str, ...], option: str) -> tuple[str, tuple[str, ...]]:
        """The profile's name in the job and its regions (a cloud's ``region_name`` when none is given)."""
        if name in self.file:
            self.tables[name] = dict(self.file[name])
            if not regions:
                raise UsageError(f"{option} {name!r}: profile {name!r} of {self.path} has no region of its own; "
                                 f"write {option} {name}:REGION")  # fmt: skip
            return name, regions
        try:
            cloud = load_cloud(name or self.os_cloud or None, environ=self.environ)
        except UsageError as exc:
            if not name:
                raise UsageError(f"{option} names no profile, and there is no default cloud: {exc}. Name one: "
                                 f"{option} PROFILE:REGION, or --os-cloud NAME") from None  # fmt: skip
            raise UsageError(f"{option} {name!r}: {name!r} is neither an [auth.{name}] of {self.path} nor an "
                             f"OpenStack cloud: {exc}") from None  # fmt: skip
        self.tables[cloud.name] = {"cloud": cloud.name}
        scope = cloud.project_id or cloud.project_name or cloud.tenant_id or cloud.tenant_name or ""
        who = cloud.application_credential_id or cloud.application_credential_name or cloud.user_id or cloud.username
        self.locations[cloud.name] = f"{(cloud.auth_url or '').rstrip('/')} {scope} {who or ''}"
        if not regions:
            if not cloud.region_name:
                raise UsageError(f"{option}: cloud {cloud.name!r} ({cloud.source}) has no region_name; write "
                                 f"{option} {name}:REGION")  # fmt: skip
            regions = (cloud.region_name,)
        return cloud.name, regions


def _selection(images: Sequence[str]) -> dict[str, list[str]]:
    """IMAGE arguments as ``[select]``: ids (UUIDs) or names and globs, not both in one command."""
    ids = [i for i in images if _UUID.fullmatch(i)]
    names = [i for i in images if not _UUID.fullmatch(i)]
    if ids and names:
        raise UsageError(f"give images by id ({', '.join(ids)}) or by name ({', '.join(names)}), not both in one "
                         "copy: a job selects by one or the other. Run one copy for each")  # fmt: skip
    return {"ids": ids} if ids else {"names": names}


def _job_name(spec: JobSpec, locations: Mapping[str, str]) -> str:
    """``copy-`` plus a short, stable hash of where the copy goes from and to (the order of --to aside):
    each place's identity and project (a cloud's as clouds.yaml resolves it) and region."""

    def where(auth: str, region: str) -> str:
        return f"{locations.get(auth) or spec.auth[auth].location} {region}"

    places = [where(spec.source.auth, spec.source.region), *sorted(where(t.auth, t.region) for t in spec.targets)]
    return "copy-" + hashlib.sha256("\n".join(places).encode()).hexdigest()[:10]


def copy_job(
    images: Sequence[str], *, source: str | None, targets: Sequence[str], os_cloud: str | None = None,
    environ: Mapping[str, str] | None = None, enable_download: bool = False,
) -> CopyJob:  # fmt: skip
    """The job of ``imgmig copy --from SOURCE --to TARGET... IMAGE...``; a problem is a ``UsageError`` or a
    ``JobSpecError`` (exit 2), naming the option or the file."""
    env = os.environ if environ is None else environ
    if not images:
        raise UsageError("name at least one image (a name, a glob or an id)")
    if not targets:
        raise UsageError("name at least one target: --to PROFILE:REGION[,REGION...]")
    profiles = _Profiles(env, os_cloud)
    src_profile, src_regions = profiles.resolve(*_place(source or "", "--from"), "--from")
    if len(src_regions) != 1:
        raise UsageError(f"--from names one region, not {len(src_regions)} ({', '.join(src_regions)})")
    places: list[dict[str, str]] = []
    for text in targets:
        profile, regions = profiles.resolve(*_place(text, "--to"), "--to")
        places += [{"auth": profile, "region": region} for region in regions]
    doc: dict[str, Any] = {
        "name": "copy",
        "auth": profiles.tables,
        "source": {"auth": src_profile, "region": src_regions[0], **({"enable_download": True} if enable_download
                                                                     else {})},
        "targets": places,
        "select": _selection(images),
    }  # fmt: skip
    first = parse_job(doc, _SOURCE, env)  # every problem of the places, all at once
    doc["name"] = _job_name(first, profiles.locations)
    doc["run"] = {"journal_dir": str(state_home(env) / "copy" / doc["name"])}
    return CopyJob(parse_job(doc, _SOURCE, env), doc)
