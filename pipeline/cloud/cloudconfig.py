"""OpenStack cloud profiles: clouds.yaml, secure.yaml and OS_* variables resolved the way openstacksdk's
config loader (``openstack/config/loader.py``) resolves them, for the keys imgmig needs, into a KeystoneAuth.

Search order (the first file that exists and can be read wins; secure.yaml is merged over it key by key):
``$OS_CLIENT_CONFIG_FILE``, then ``clouds.yaml``/``clouds.yml``/``clouds.json`` in the current directory,
``$XDG_CONFIG_HOME/openstack`` (default ``~/.config/openstack``), ``~/.config/openstack`` (``$SNAP_REAL_HOME``
under snaps), ``$XDG_CONFIG_DIRS/openstack`` (default ``/etc/xdg/openstack``) and ``/etc/openstack``;
secure files the same with ``$OS_CLIENT_SECURE_FILE``. A cloud is chosen by name, else ``$OS_CLOUD``, else
the ``envvars`` cloud built from OS_* variables, else the only cloud defined. Then openstacksdk's fix-ups:
the first of ``regions`` (or ``region_name``) with its ``values``, ``tenant_*`` -> ``project_*``,
``*endpoint_type`` -> ``interface``, ``domain_*`` -> ``user_domain_*``/``project_domain_*``, hyphens ->
underscores, and the auth plugin's options moved from the cloud's top level into ``auth``.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.cloud.auth import PasswordAuth
from pipeline.cloud.keystone import KeystoneAuth
from pipeline.cloud.retry import RetryPolicy
from pipeline.cloud.transport import tls_for
from pipeline.config import Secret
from pipeline.errors import UsageError

__all__ = [
    "AUTH_TYPES",
    "SYSTEM_CONFIG_DIRS",
    "CloudConfig",
    "cloud_auth",
    "config_search_dirs",
    "keystone_auth",
    "load_cloud",
    "nhn_auth",
]

#: The system-wide directories openstacksdk searches last; ``system_dirs`` replaces them (tests name their own).
SYSTEM_CONFIG_DIRS: tuple[str, ...] = ("/etc/openstack",)
_SUFFIXES = (".yaml", ".yml", ".json")
_DEFAULTS: dict[str, Any] = {"auth_type": "password", "interface": "public", "verify": True, "cacert": None}
_SELECTORS = {"OS_CLOUD", "OS_REGION_NAME", "OS_CLIENT_CONFIG_FILE", "OS_CLIENT_SECURE_FILE", "OS_CLOUD_NAME"}
_SCOPE: tuple[str, ...] = ("auth_url", "system_scope", "domain_id", "domain_name", "project_id", "project_name")
_SCOPE += ("project_domain_id", "project_domain_name", "trust_id")
_USER = ("user_id", "username", "user_domain_id", "user_domain_name")
_DOMAINS = ("user_domain_id", "user_domain_name", "project_domain_id", "project_domain_name")
_APP_CRED = ("application_credential_secret", "application_credential_id", "application_credential_name")
#: keystoneauth's options per auth plugin (``loader.get_options()``), in its order; "applicationcredential" is
#: imgmig's alias (keystoneauth has no plugin of that name).
_PLUGIN_OPTIONS: dict[str, tuple[str, ...]] = {
    "password": (*_SCOPE, "default_domain_id", "default_domain_name", *_USER, "password"),
    "v3password": (*_SCOPE, *_USER, "password"),
    "v3applicationcredential": (*_SCOPE, *_USER, *_APP_CRED),
    # Keystone v2.0 (keystoneauth's ``v2password``): NHN Cloud's identity, read as an NHN profile
    "v2password": ("auth_url", "trust_id", "tenant_id", "tenant_name", "user_id", "username", "password"),
}
_PLUGIN_OPTIONS["applicationcredential"] = _PLUGIN_OPTIONS["v3applicationcredential"]
_DEPRECATED = {"username": ("user_name",), "project_id": ("tenant_id",), "project_name": ("tenant_name",)}
AUTH_TYPES = tuple(_PLUGIN_OPTIONS)
_STR_FIELDS = tuple(
    "auth_url username user_id user_domain_id user_domain_name project_name project_id project_domain_name "
    "project_domain_id default_domain_id default_domain_name application_credential_id "
    "application_credential_name tenant_id tenant_name".split()
)


@dataclass(frozen=True, slots=True)
class CloudConfig:
    """One resolved cloud: identity, regions, interface and TLS settings; secrets only as ``Secret``."""

    name: str
    source: str  # the clouds file it came from, or "environment"
    auth_type: str
    auth_url: str | None = None
    username: str | None = None
    user_id: str | None = None
    user_domain_id: str | None = None
    user_domain_name: str | None = None
    password: Secret | None = None
    project_name: str | None = None
    project_id: str | None = None
    project_domain_name: str | None = None
    project_domain_id: str | None = None
    default_domain_id: str | None = None
    default_domain_name: str | None = None
    application_credential_id: str | None = None
    application_credential_name: str | None = None
    application_credential_secret: Secret | None = None
    tenant_id: str | None = None  # v2password (Keystone v2.0, NHN Cloud)
    tenant_name: str | None = None
    region_name: str | None = None
    regions: tuple[str, ...] = ()
    interface: str = "public"
    verify: bool = True
    cacert: str | None = None  # only when verifying with a CA bundle of one's own


def config_search_dirs(
    environ: Mapping[str, str] | None = None, cwd: str | None = None, *, system_dirs: Sequence[str] | None = None
) -> list[str]:
    """The directories openstacksdk searches for clouds.yaml and secure.yaml, in its order (on Linux);
    ``system_dirs`` stands in for ``SYSTEM_CONFIG_DIRS`` (``/etc/openstack``), the last ones searched."""
    env = os.environ if environ is None else environ
    home = env.get("HOME") or os.path.expanduser("~")
    xdg_home = env.get("XDG_CONFIG_HOME", "")
    site = [p for p in env.get("XDG_CONFIG_DIRS", "").split(os.pathsep) if os.path.isabs(p)] or ["/etc/xdg"]
    return [
        cwd or os.getcwd(),
        os.path.join(xdg_home if os.path.isabs(xdg_home) else os.path.join(home, ".config"), "openstack"),
        os.path.join(env.get("SNAP_REAL_HOME") or home, ".config", "openstack"),
        *(os.path.join(p, "openstack") for p in site),
        *(SYSTEM_CONFIG_DIRS if system_dirs is None else system_dirs),
    ]


def _load_first(paths: Sequence[str]) -> tuple[str | None, Any]:
    import yaml  # type: ignore[import-untyped,unused-ignore]  # read only when a clouds.yaml profile is used

    for path in paths:
        if not os.path.exists(path):
            continue
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError:
            continue  # like openstacksdk: an unreadable file is skipped
        try:
            return path, json.loads(text) if path.endswith("json") else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:
            mark = getattr(exc, "problem_mark", None) or getattr(exc, "lineno", None)
            where = f" (line {getattr(mark, 'line', -1) + 1})" if mark is not None and hasattr(mark, "line") else ""
            # the parser's message quotes the file's text, which may hold a password: only the position
            raise UsageError(f"{path} is not valid {'JSON' if path.endswith('json') else 'YAML'}{where}") from None
    return None, None


def _candidates(given: Sequence[str | os.PathLike[str]] | None, dirs: Sequence[str], stem: str) -> list[str]:
    if given is not None:
        return [os.fspath(p) for p in given]
    return [os.path.join(d, stem + suffix) for d in dirs for suffix in _SUFFIXES]


def _first(mapping: Mapping[str, Any], names: Sequence[str]) -> Any:
    return next((mapping[n] for n in names if n in mapping), None)


def _normalize_keys(config: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        key = str(key).replace("-", "_")
        if isinstance(value, Mapping):
            out[key] = _normalize_keys(value)
        elif isinstance(value, bool) or (isinstance(value, int) and key in ("verbose_level", "api_timeout")):
            out[key] = value
        else:
            out[key] = str(value) if isinstance(value, int | float) else value
    return out


def _merge(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(old)
    for key, value in new.items():
        out[key] = _merge(out[key], value) if isinstance(value, Mapping) and key in out else value
    return out


def _auth_update(old: dict[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in copy.deepcopy(dict(new)).items():
        if key == "auth" and key in old:
            old[key].update(value or {})
        else:
            old[key] = dict(value or {}) if key == "auth" else value
    return old


def _envvars_cloud(env: Mapping[str, str]) -> dict[str, Any] | None:
    keys = [k for k in env if k.startswith("OS_") and not k.startswith(("OS_TEST", "OS_STD", "OS_LOG"))]
    if not set(keys) - _SELECTORS:
        return None
    return {**_DEFAULTS, **{k.split("_", 1)[-1].lower(): env[k] for k in keys}}


def load_cloud(
    name: str | None = None,
    *,
    config_files: Sequence[str | os.PathLike[str]] | None = None,
    secure_files: Sequence[str | os.PathLike[str]] | None = None,
    environ: Mapping[str, str] | None = None,
    load_envvars: bool = True,
    system_dirs: Sequence[str] | None = None,
) -> CloudConfig:
    """Resolve cloud ``name`` (else $OS_CLOUD, the envvars cloud, or the only cloud) as openstacksdk does;
    ``system_dirs`` replaces ``/etc/openstack`` in the search (see ``config_search_dirs``)."""
    env: Mapping[str, str] = (os.environ if environ is None else environ) if load_envvars else {}
    dirs = config_search_dirs(env or None, system_dirs=system_dirs)
    files = _candidates(config_files, dirs, "clouds")
    secure = _candidates(secure_files, dirs, "secure")
    if env.get("OS_CLIENT_CONFIG_FILE"):
        files.insert(0, env["OS_CLIENT_CONFIG_FILE"])
    if env.get("OS_CLIENT_SECURE_FILE"):
        secure.insert(0, env["OS_CLIENT_SECURE_FILE"])
    searched = f"searched {', '.join(files)}"
    source, doc = _load_first(files)
    secure_source, secure_doc = _load_first(secure)
    for path, data in ((source, doc), (secure_source, secure_doc)):
        if data and not isinstance(data, Mapping):  # an empty file is no error, as in openstacksdk
            raise UsageError(f"{path} is not a mapping with a 'clouds' key")
    merged = _merge(doc or {}, secure_doc) if secure_doc else dict(doc or {})
    clouds: dict[str, Any] = dict(merged.get("clouds") or {})
    env_key = env.get("OS_CLOUD_NAME", "envvars")
    if env_key in clouds:
        raise UsageError(f"{source} defines a cloud named {env_key!r}, which OS_CLOUD_NAME gives the OS_* variables")
    chosen = name or env.get("OS_CLOUD") or None
    env_cloud = _envvars_cloud(env)
    if env_cloud is not None:
        clouds[env_key] = env_cloud
        chosen = chosen or env_key
    if not clouds:
        raise UsageError(
            f"no OpenStack cloud is configured: no clouds.yaml was found ({searched}) and no OS_* authentication "
            "variables are set; write a clouds.yaml or set OS_AUTH_URL and the rest"
        )
    if chosen is None and len(clouds) == 1:
        chosen = next(iter(clouds))
    known = ", ".join(sorted(clouds))
    if chosen is None:
        raise UsageError(f"{source} defines several clouds ({known}): name one, or set OS_CLOUD")
    if chosen not in clouds:
        raise UsageError(f"cloud {chosen!r} is not defined (clouds: {known}; read {source or 'no file'}; {searched})")
    where = "environment" if chosen == env_key and env_cloud is not None else str(source)
    return _resolve(chosen, clouds[chosen] or {}, where)


def _resolve(name: str, ours: Mapping[str, Any], source: str) -> CloudConfig:
    if "profile" in ours or "cloud" in ours:
        raise UsageError(f"cloud {name!r} ({source}) uses a vendor profile, which imgmig does not expand")
    config = _auth_update({**copy.deepcopy(_DEFAULTS), "auth": {}}, ours)
    config.pop("cloud", None)
    raw = _normalize_keys(ours)
    regions: list[Any] = []
    if "regions" in raw:
        regions = list(raw["regions"] or [])
    elif "region_name" in raw:
        value = raw["region_name"]
        regions = list(value) if isinstance(value, list) else str(value).split(",")
    entries: list[Mapping[str, Any]] = [r if isinstance(r, Mapping) else {"name": r} for r in regions]
    if any("name" not in r or not {"name", "values"} >= set(r) for r in entries):
        raise UsageError(f"cloud {name!r} ({source}): every regions entry needs a name (and only values besides)")
    region: Mapping[str, Any] = entries[0] if entries else {"name": ""}
    config.pop("regions", None)
    values: dict[str, Any] = copy.deepcopy(dict(region.get("values") or {}))
    for key, value in {**values, "region_name": region["name"]}.items():
        if value is not None:
            config[key] = _auth_update(config[key], value) if key == "auth" and config.get(key) is not None else value
    config = _normalize_keys(_magic_fixes(config))
    auth_type = config.get("auth_type") or "none"
    if auth_type not in _PLUGIN_OPTIONS:
        supported = ", ".join(AUTH_TYPES)
        raise UsageError(f"cloud {name!r} ({source}): auth_type {auth_type!r} is not supported ({supported})")
    auth: dict[str, Any] = config["auth"]
    for opt in _PLUGIN_OPTIONS[auth_type]:  # _validate_auth: auth's value wins, else the top level's
        names = (opt, *_DEPRECATED.get(opt, ()))
        value = _first(auth, names) or _first(config, names)
        for n in names:
            config.pop(n, None)
            auth.pop(n, None)
        if value:
            auth[opt] = value
    verify, cacert = _verify(config)
    fields: dict[str, Any] = {k: str(auth[k]) for k in _STR_FIELDS if auth.get(k) not in (None, "")}
    fields.update({k: Secret(str(auth[k])) for k in ("password", "application_credential_secret") if auth.get(k)})
    interface = config.get("image_interface") or config.get("interface") or "public"
    regions_found = tuple(str(r["name"]) for r in entries)
    fields.update(region_name=config.get("region_name") or None, interface=str(interface), verify=verify, cacert=cacert)
    return CloudConfig(name=name, source=source, auth_type=auth_type, regions=regions_found, **fields)


def _magic_fixes(config: dict[str, Any]) -> dict[str, Any]:
    """openstacksdk's ``magic_fixes``, the parts that reach the keys imgmig reads."""
    auth = config["auth"]
    auth_type = None
    for key in ("auth_plugin", "auth_type"):  # auth_type wins
        if key in config:
            auth_type = config.pop(key)
    config["auth_type"] = auth_type
    targets: dict[str, tuple[str, ...]] = {
        key: (key, key.replace("_", "-")) for key in ("domain_id", "domain_name", *_DOMAINS)
    }
    if config.get("auth_type") == "v2password":  # openstacksdk maps the other way for Keystone v2.0
        targets["tenant_id"] = ("project_id", "project-id", "tenant_id", "tenant-id")
        targets["tenant_name"] = ("project_name", "project-name", "tenant_name", "tenant-name")
    else:
        targets["project_id"] = ("tenant_id", "tenant-id", "project_id", "project-id")
        targets["project_name"] = ("tenant_name", "tenant-name", "project_name", "project-name")
    for target_key, possible in targets.items():
        target = None
        for key in possible:
            if key in auth:
                target = str(auth.pop(key))
            if key in config:  # the top level (CLI, environment) beats auth
                target = str(config.pop(key))
        if target:
            auth[target_key] = target
    config = {
        k[: -len("endpoint_type")] + "interface" if k.endswith("endpoint_type") else k: v for k, v in config.items()
    }
    scoped = any(k in d for d in (config, auth) for k in ("project_id", "project_name", "tenant_id", "tenant_name"))
    for target_key in ("domain_id", "domain_name"):
        if not scoped:
            if target_key in config and target_key not in auth:
                auth[target_key] = config.pop(target_key)
            continue
        for key in ("user_" + target_key, "project_" + target_key):
            if target_key in auth and key not in auth:
                auth[key] = auth[target_key]
        config.pop(target_key, None)
        auth.pop(target_key, None)
    if "insecure" in config and not isinstance(config["insecure"], bool):
        config["insecure"] = str(config["insecure"]).lower() == "true"
    return config


def _verify(config: Mapping[str, Any]) -> tuple[bool, str | None]:
    """(verify, CA bundle) as openstacksdk's ``get_requests_verify_args``: insecure wins, a cacert needs verify."""
    if config.get("insecure"):
        return False, None
    verify, cacert = config.get("verify", True), config.get("cacert")
    word = verify.strip().lower() if isinstance(verify, str) else None
    if word is not None and word not in ("true", "yes", "1", "on", "false", "no", "0", "off", ""):
        verify, cacert = True, cacert or verify  # openstacksdk hands a path in verify to requests as a CA bundle
    elif word is not None:
        verify = word in ("true", "yes", "1", "on")
    if verify is not None and not verify:
        return False, None
    return True, os.path.expanduser(str(cacert)) if cacert else None


def cloud_auth(cloud: CloudConfig, profile_name: str, retry: RetryPolicy | None = None) -> KeystoneAuth | PasswordAuth:
    """The identity of ``cloud``: NHN Cloud's Keystone v2.0 for ``v2password``, else Keystone v3."""
    if cloud.auth_type == "v2password":
        return nhn_auth(cloud, profile_name, retry)
    return keystone_auth(cloud, profile_name, retry)


def nhn_auth(cloud: CloudConfig, profile_name: str, retry: RetryPolicy | None = None) -> PasswordAuth:
    """The ``PasswordAuth`` (Keystone v2.0, as NHN Cloud's identity speaks it) of a ``v2password`` cloud."""
    username, password = cloud.username, cloud.password
    for key, value in (("auth_url", cloud.auth_url), ("username", username), ("password", password)):
        if not value:
            raise UsageError(f"cloud {cloud.name!r} ({cloud.source}) has no auth.{key} (auth_type v2password)")
    if not (cloud.tenant_id or cloud.tenant_name):
        raise UsageError(f"cloud {cloud.name!r} ({cloud.source}) has no auth.tenant_id or auth.tenant_name "
                         "(auth_type v2password; NHN Cloud: the tenant id of the API endpoint settings)")  # fmt: skip
    if username is None or password is None:  # for the type checker: checked just above
        raise UsageError(f"cloud {cloud.name!r} ({cloud.source}) has no user or password")
    return PasswordAuth(
        cloud.auth_url or "", cloud.tenant_id or "", username, password, retry=retry or RetryPolicy(),
        profile=profile_name, tenant_name=cloud.tenant_name, tls=tls_for(cloud.verify, cloud.cacert),
        password_source=f"clouds.yaml cloud {cloud.name!r} ({cloud.source})",
    )  # fmt: skip


def keystone_auth(cloud: CloudConfig, profile_name: str, retry: RetryPolicy | None = None) -> KeystoneAuth:
    """The ``KeystoneAuth`` for ``cloud`` (password or application credential), errors naming the cloud."""
    app_cred = cloud.auth_type in ("v3applicationcredential", "applicationcredential")
    needed = "application_credential_secret" if app_cred else "password"
    auth_url = cloud.auth_url
    for key, value in (("auth_url", auth_url), (needed, getattr(cloud, needed))):
        if not value:
            raise UsageError(f"cloud {cloud.name!r} ({cloud.source}) has no auth.{key} (auth_type {cloud.auth_type})")
    user_domain = cloud.user_domain_id, cloud.user_domain_name
    project_domain = cloud.project_domain_id, cloud.project_domain_name
    if cloud.auth_type == "password":  # keystoneauth's generic plugin: default_domain_* stand in for both domains
        default = cloud.default_domain_id, cloud.default_domain_name
        user_domain, project_domain = (d if any(d) else default for d in (user_domain, project_domain))
    try:
        return KeystoneAuth(
            auth_url=auth_url or "", profile=profile_name, username=cloud.username, user_id=cloud.user_id,
            user_domain_id=user_domain[0], user_domain_name=user_domain[1],
            password=None if app_cred else cloud.password,
            project_name=None if app_cred else cloud.project_name, project_id=None if app_cred else cloud.project_id,
            project_domain_id=project_domain[0], project_domain_name=project_domain[1],
            application_credential_id=cloud.application_credential_id if app_cred else None,
            application_credential_name=cloud.application_credential_name if app_cred else None,
            application_credential_secret=cloud.application_credential_secret if app_cred else None,
            interface=cloud.interface, retry=retry or RetryPolicy(), tls=tls_for(cloud.verify, cloud.cacert),
        )  # fmt: skip
    except UsageError as exc:
        hint = "" if app_cred else " (for an application credential set auth_type: v3applicationcredential)"
        raise UsageError(f"cloud {cloud.name!r} ({cloud.source}): {exc}{hint}") from None
