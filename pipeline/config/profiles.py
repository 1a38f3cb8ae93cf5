"""``[auth.NAME]`` profiles: which form a table has (NHN password, fixed token, Keystone v3, a clouds.yaml
cloud or the OS_* variables), what each form needs, and the secrets its ``*_env`` keys name, put on the
profile from the environment (never from the file, never into a message)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.config.models import AuthProfile
from pipeline.config.problems import Problems, dotted, validate
from pipeline.config.values import Secret, _kind

__all__ = ["auth_profiles"]

_KEYSTONE_KEYS = frozenset({
    "auth_url", "user_id", "user_domain_name", "user_domain_id", "project_name", "project_id",
    "project_domain_name", "project_domain_id", "application_credential_id", "application_credential_name",
    "application_credential_secret_env", "interface",
})  # fmt: skip


def _keystone_form(given: set[str], loc: tuple[str | int, ...], problems: Problems) -> bool:
    """Whether a ``type = "keystone"`` profile names what Keystone v3 needs (problems listed if not)."""
    before = len(problems)
    if "auth_url" not in given:
        problems.append((dotted((*loc, "auth_url")), "missing required key (the Keystone v3 URL)"))
    stray = given - _KEYSTONE_KEYS - {"type", "username", "password_env"}
    problems.extend((dotted((*loc, k)), "not a Keystone v3 key") for k in sorted(stray))
    user = "user_id" in given or ("username" in given and given & {"user_domain_name", "user_domain_id"})
    if given & {"application_credential_id", "application_credential_name", "application_credential_secret_env"}:
        if "application_credential_secret_env" not in given:
            problems.append((dotted((*loc, "application_credential_secret_env")), "missing required key"))
        if "application_credential_id" not in given and not ("application_credential_name" in given and user):
            problems.append((dotted(loc), "an application credential needs application_credential_id, or "
                                           "application_credential_name with the user (user_id, or username "
                                           "and user_domain_name or user_domain_id)"))  # fmt: skip
        return len(problems) == before
    if "password_env" not in given:
        problems.append((dotted((*loc, "password_env")), "missing required key"))
    if not user:
        problems.append((dotted(loc), "needs user_id, or username with user_domain_name or user_domain_id"))
    if "project_id" not in given and not (
        "project_name" in given and given & {"project_domain_name", "project_domain_id"}
    ):
        problems.append((dotted(loc), "needs project_id, or project_name with project_domain_name or "
                                       "project_domain_id"))  # fmt: skip
    return len(problems) == before


def _auth_form(given: set[str], loc: tuple[str | int, ...], problems: Problems) -> bool | None:
    """True for the token form, False for the password form, None (and a problem) for neither or both."""
    token_form = bool(given & {"endpoint", "token_env"})
    if token_form and given & {"username", "password_env"}:
        problems.append((dotted(loc), "use either username + password_env or endpoint + token_env, not both"))
        return None
    if not token_form and not given & {"tenant_id", "username", "password_env"}:
        problems.append((dotted(loc), "needs tenant_id, username and password_env, or endpoint and token_env"))
        return None
    needed = ("endpoint", "token_env") if token_form else ("tenant_id", "username", "password_env")
    missing = [key for key in needed if key not in given]
    problems.extend((dotted((*loc, key)), "missing required key") for key in missing)
    return None if missing else token_form


def _from_env(table: dict[str, Any], loc: tuple[str | int, ...], problems: Problems) -> dict[str, Any] | None:
    """``from_env = true`` is ``cloud = "envvars"`` (the OS_* variables); ``false`` means nothing."""
    value, rest = table["from_env"], {k: v for k, v in table.items() if k != "from_env"}
    if not isinstance(value, bool):
        problems.append((dotted((*loc, "from_env")), f"expected a boolean, got {_kind(value)}"))
        return None
    if value and "cloud" in rest:
        problems.append((dotted(loc), 'use either cloud = "NAME" or from_env = true, not both'))
        return None
    return {**rest, "cloud": "envvars"} if value else rest


def _auth_profile(
    name: str, table: object, env: Mapping[str, str], need_secrets: bool, problems: Problems
) -> AuthProfile | None:
    loc: tuple[str | int, ...] = ("auth", name)
    if isinstance(table, dict) and "from_env" in table:  # openstacksdk's spelling of cloud = "envvars"
        table = _from_env(table, loc, problems)
        if table is None:
            return None
    raw = validate(AuthProfile, table, loc, problems, None)
    given = set(table) if isinstance(table, dict) else set()
    if "cloud" in given:  # clouds.yaml or OS_*: read when the job runs (secrets may sit in those files)
        others = given - {"cloud", "interface"}
        problems.extend((dotted((*loc, k)), "not allowed with cloud (the cloud supplies it)") for k in sorted(others))
        if raw is None or others:
            return None
        return _named(raw, name)
    if isinstance(table, dict) and table.get("type") == "keystone":
        if not _keystone_form(given, loc, problems) or raw is None:
            return None
        return _keystone_profile(name, raw, env, need_secrets, loc, problems)
    # The form is judged on the keys present, so it is reported even when a value is bad.
    stray = given & (_KEYSTONE_KEYS - {"interface"})
    problems.extend((dotted((*loc, k)), 'a Keystone v3 key: set type = "keystone"') for k in sorted(stray))
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
            problems: Problems) -> Secret | None:  # fmt: skip
    """The secret in environment variable ``variable``, or a problem naming the variable (never its value)."""
    if variable is None:
        return None
    value = env.get(variable)
    if value:
        return Secret(value)
    problems.append(
        (dotted((*loc, key)), f"environment variable {variable} is {'not set' if value is None else 'empty'}")
    )
    return None


def _keystone_profile(
    name: str, raw: AuthProfile, env: Mapping[str, str], need_secrets: bool, loc: tuple[str | int, ...],
    problems: Problems,
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


def auth_profiles(
    value: object, env: Mapping[str, str], need_secrets: bool, problems: Problems
) -> dict[str, AuthProfile]:
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
