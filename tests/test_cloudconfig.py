"""Owns the tests of pipeline/cloud/cloudconfig.py: every case resolves a clouds.yaml (or OS_* variables) with
imgmig's loader and with openstacksdk's own ``OpenStackConfig`` and compares what both resolve."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.cloud.auth import PasswordAuth
from pipeline.cloud.cloudconfig import (
    SYSTEM_CONFIG_DIRS,
    CloudConfig,
    cloud_auth,
    config_search_dirs,
    keystone_auth,
    load_cloud,
)
from pipeline.errors import UsageError

KEYS = (
    "auth_url username user_id user_domain_id user_domain_name password project_name project_id project_domain_name "
    "project_domain_id default_domain_id default_domain_name application_credential_id application_credential_name "
    "application_credential_secret tenant_id tenant_name"
).split()
PW = "pw-S3CRET-value"
APP_SECRET = "app-S3CRET-value"


#: Where each test's stand-in for /etc/openstack lives, under its tmp_path (passed as ``system_dirs``).
SYSTEM = Path("system", "openstack")
#: Each test's XDG_CONFIG_DIRS (instead of the default /etc/xdg), under its tmp_path.
SITE = Path("xdg-site")
Loader = Callable[..., CloudConfig]


@pytest.fixture(autouse=True)
def hermetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No OS_* variable, home, XDG or system directory of the machine leaks in: HOME, XDG_CONFIG_DIRS and the
    stand-in for /etc/openstack (``SYSTEM``, which ``load`` passes as ``system_dirs``) are empty directories
    under tmp_path, and so is the cwd."""
    for key in list(os.environ):
        if key.startswith("OS_") or key in ("XDG_CONFIG_HOME", "SNAP_REAL_HOME"):
            monkeypatch.delenv(key)
    for directory in ("home", "cwd", SITE, SYSTEM):
        (tmp_path / directory).mkdir(parents=True)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(tmp_path / SITE))
    monkeypatch.chdir(tmp_path / "cwd")
    return tmp_path


@pytest.fixture
def load(hermetic: Path) -> Loader:
    """imgmig's ``load_cloud`` searching this test's ``SYSTEM`` directory instead of the host's /etc/openstack, so
    no call reads a file of the machine (a call that names no secure_files searches the directories too)."""
    return functools.partial(load_cloud, system_dirs=[str(hermetic / SYSTEM)])


def write(path: Path, clouds: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"clouds": clouds}))
    return path


def oracle(
    name: str | None, files: list[Path], secure: list[Path] | None = None, *, envvars: bool = False
) -> dict[str, Any]:
    """What openstacksdk's loader resolves, reduced to the keys imgmig reads."""
    from openstack import warnings as os_warnings
    from openstack.config import loader

    config = loader.OpenStackConfig(
        config_files=[str(f) for f in files],
        secure_files=[str(f) for f in secure or []],
        vendor_files=[],
        load_envvars=envvars,
    )
    with warnings.catch_warnings():
        # openstacksdk 4.22 hands CloudRegion an influxdb_config of all-None values, which is truthy, so every
        # get_one() warns that InfluxDB support is deprecated: only that warning is ignored, only here.
        warnings.filterwarnings("ignore", "Support for InfluxDB", os_warnings.RemovedInSDK60Warning)
        region = config.get_one(cloud=name)
        regions = [r.region_name for r in config.get_all() if r.name == region.name]
    auth = {k: str(v) for k, v in region.config["auth"].items() if k in KEYS and v}
    return {
        "name": region.name,
        "auth_type": region.config["auth_type"],
        "auth": auth,
        "region_name": region.config["region_name"] or None,
        "regions": [r for r in regions if r],
        "interface": region.get_interface("image"),
        "verify": region.get_requests_verify_args()[0],
    }


def view(cloud: CloudConfig) -> dict[str, Any]:
    """The same reduction of imgmig's CloudConfig (secrets revealed only here, to compare them)."""
    auth: dict[str, str] = {}
    for key in KEYS:
        value = getattr(cloud, key)
        if value is not None:
            auth[key] = value if isinstance(value, str) else value.reveal()
    return {
        "name": cloud.name,
        "auth_type": cloud.auth_type,
        "auth": auth,
        "region_name": cloud.region_name,
        "regions": list(cloud.regions),
        "interface": cloud.interface,
        "verify": cloud.cacert if cloud.verify and cloud.cacert else cloud.verify,
    }


def same(name: str | None, files: list[Path], secure: list[Path] | None = None, *, envvars: bool = False) -> None:
    """imgmig and openstacksdk resolve ``name`` alike from exactly these files (neither searches a directory)."""
    mine = view(load_cloud(name, config_files=files, secure_files=secure or [], load_envvars=envvars))
    assert mine == oracle(name, files, secure, envvars=envvars)


PASSWORD_BY_NAMES = {
    "auth": {
        "auth_url": "https://id.example.com:5000/v3",
        "username": "migrator",
        "password": PW,
        "project_name": "src-project",
        "user_domain_name": "Default",
        "project_domain_name": "Default",
    },
    "region_name": "KR1",
}


def test_several_clouds_in_one_file_resolve_like_openstacksdk(hermetic: Path, load: Loader) -> None:
    """Three clouds in one file (names+domain names, ids, app credential) each resolve as openstacksdk does."""
    clouds = {
        "by-names": PASSWORD_BY_NAMES,
        "by-ids": {
            "auth": {"auth_url": "https://id.example.com/", "user_id": "u1", "password": PW, "project_id": "p1"},
            "auth_type": "v3password",
        },
        "app": {
            "auth_type": "v3applicationcredential",
            "auth": {
                "auth_url": "https://id.example.com/v3",
                "application_credential_id": "ac1",
                "application_credential_secret": APP_SECRET,
            },
        },
    }
    path = write(hermetic / "clouds.yaml", clouds)
    for name in clouds:
        same(name, [path])
    assert load("by-names", config_files=[path]).password is not None
    assert PW not in repr(load("by-names", config_files=[path]))


def test_os_cloud_selects_the_cloud(hermetic: Path, monkeypatch: pytest.MonkeyPatch, load: Loader) -> None:
    """OS_CLOUD picks one of several clouds when none is named, for both loaders."""
    other = {**PASSWORD_BY_NAMES, "region_name": "JP1", "interface": "internal"}
    path = write(hermetic / "clouds.yaml", {"a": PASSWORD_BY_NAMES, "b": other})
    monkeypatch.setenv("OS_CLOUD", "b")
    same(None, [path], envvars=True)
    assert load(config_files=[path]).region_name == "JP1"


def test_secure_yaml_is_merged_over_clouds_yaml(hermetic: Path, load: Loader) -> None:
    """secure.yaml adds the password and overrides a region key by key, auth merged, not replaced."""
    public = {"auth": {k: v for k, v in PASSWORD_BY_NAMES["auth"].items() if k != "password"}, "region_name": "KR1"}
    path = write(hermetic / "clouds.yaml", {"c": public})
    secure = write(hermetic / "secure.yaml", {"c": {"auth": {"password": PW}, "region_name": "KR2"}})
    same("c", [path], [secure])
    cloud = load("c", config_files=[path], secure_files=[secure])
    assert cloud.password is not None
    assert cloud.password.reveal() == PW
    assert cloud.username == "migrator"
    assert cloud.region_name == "KR2"


def test_regions_list_first_one_is_the_default(hermetic: Path, load: Loader) -> None:
    """A regions list (names and a name+values entry) gives all names; the first is region_name."""
    cloud = {**PASSWORD_BY_NAMES, "regions": ["KR1", {"name": "KR2", "values": {"interface": "internal"}}, "JP1"]}
    cloud.pop("region_name")
    first_with_values = {**cloud, "regions": [{"name": "JP1", "values": {"interface": "admin"}}, "KR1"]}
    path = write(hermetic / "clouds.yaml", {"r": cloud, "v": first_with_values})
    same("r", [path])
    same("v", [path])
    assert load("r", config_files=[path]).regions == ("KR1", "KR2", "JP1")
    assert load("v", config_files=[path]).interface == "admin"


def test_interface_and_endpoint_type_spellings(hermetic: Path, load: Loader) -> None:
    """interface, the legacy endpoint_type and image_endpoint_type resolve to the image interface as in openstacksdk."""
    path = write(
        hermetic / "clouds.yaml",
        {
            "i": {**PASSWORD_BY_NAMES, "interface": "internal"},
            "e": {**PASSWORD_BY_NAMES, "endpoint_type": "adminURL"},
            "img": {**PASSWORD_BY_NAMES, "interface": "public", "image_endpoint_type": "internal"},
        },
    )
    for name in ("i", "e", "img"):
        same(name, [path])
    assert load("img", config_files=[path]).interface == "internal"
    assert keystone_auth(load("e", config_files=[path]), "p").interface == "admin"


def test_verify_false_insecure_and_cacert(hermetic: Path, load: Loader) -> None:
    """verify: false, insecure: true, a cacert (expanded from ~) and a cacert that verify: false overrides."""
    from openstack import warnings as os_warnings

    path = write(
        hermetic / "clouds.yaml",
        {
            "noverify": {**PASSWORD_BY_NAMES, "verify": False},
            "insecure": {**PASSWORD_BY_NAMES, "insecure": "True"},
            "ca": {**PASSWORD_BY_NAMES, "cacert": "~/ca.pem"},
            "ca-off": {**PASSWORD_BY_NAMES, "cacert": "/etc/ca.pem", "verify": False},
        },
    )
    for name in ("noverify", "insecure", "ca"):
        same(name, [path])
    with warnings.catch_warnings():
        # openstacksdk warns that the cacert is ignored when verify is off: expected, and only here
        warnings.simplefilter("ignore", os_warnings.ConfigurationWarning)
        same("ca-off", [path])
    ca = load("ca", config_files=[path])
    assert (ca.verify, ca.cacert) == (True, str(hermetic / "home" / "ca.pem"))
    assert load("ca-off", config_files=[path]).verify is False


def test_application_credential_by_id_and_by_name_and_user(hermetic: Path, load: Loader) -> None:
    """App credentials by id and by name + user name + domain resolve alike and map to a no-scope KeystoneAuth."""
    by_name = {
        "application_credential_name": "imgmig",
        "application_credential_secret": APP_SECRET,
        "username": "migrator",
        "user_domain_name": "Default",
        "auth_url": "https://id.example.com",
    }
    by_id = {
        "application_credential_id": "ac1",
        "application_credential_secret": APP_SECRET,
        "auth_url": "https://id.example.com",
        "project_id": "ignored",
    }
    path = write(
        hermetic / "clouds.yaml",
        {
            "name": {"auth_type": "v3applicationcredential", "auth": by_name},
            "id": {"auth_type": "v3applicationcredential", "auth": by_id, "regions": ["KR2"]},
        },
    )
    same("name", [path])
    same("id", [path])
    auth = keystone_auth(load("id", config_files=[path]), "src")
    assert auth.kind == "application credential"
    assert auth.project_name is None  # an application credential token carries its own scope
    assert auth.auth_url == "https://id.example.com/v3"


def test_domain_ids_names_and_the_domain_shorthand(hermetic: Path, load: Loader) -> None:
    """Domain ids vs names, and domain_name/domain_id given once for both user and project, as openstacksdk does."""
    base = {"auth_url": "https://id.example.com/v3", "username": "m", "password": PW, "project_name": "p"}
    path = write(
        hermetic / "clouds.yaml",
        {
            "ids": {"auth": {**base, "user_domain_id": "d1", "project_domain_id": "d2"}},
            "short-name": {"auth": {**base, "domain_name": "other"}},
            "short-id-top": {"auth": base, "domain_id": "d3"},
            "unscoped-domain": {"auth": {k: v for k, v in base.items() if k != "project_name"}, "domain_id": "d4"},
        },
    )
    for name in ("ids", "short-name", "short-id-top", "unscoped-domain"):
        same(name, [path])
    short = load("short-name", config_files=[path])
    assert (short.user_domain_name, short.project_domain_name) == ("other", "other")


def test_tenant_and_hyphenated_spellings(hermetic: Path, load: Loader) -> None:
    """tenant-name, user-domain-name and a numeric project id (made a string) resolve as openstacksdk does."""
    path = write(
        hermetic / "clouds.yaml",
        {
            "old": {
                "auth": {
                    "auth-url": "https://id.example.com",
                    "username": "m",
                    "password": PW,
                    "tenant-name": "p",
                    "user-domain-name": "Default",
                    "project-domain-id": 12345,
                },
                "project_id": 777,
            }
        },
    )
    same("old", [path])
    cloud = load("old", config_files=[path])
    assert (cloud.project_name, cloud.project_id, cloud.project_domain_id) == ("p", "777", "12345")


def test_envvars_cloud_with_password(monkeypatch: pytest.MonkeyPatch, load: Loader) -> None:
    """The envvars cloud built from OS_* variables (no file) resolves like openstacksdk's."""
    env = {
        "OS_AUTH_URL": "https://id.example.com/v3",
        "OS_USERNAME": "m",
        "OS_PASSWORD": PW,
        "OS_PROJECT_NAME": "p",
        "OS_USER_DOMAIN_NAME": "Default",
        "OS_PROJECT_DOMAIN_ID": "default",
        "OS_REGION_NAME": "KR2",
        "OS_INTERFACE": "internal",
        "OS_CACERT": "/etc/ssl/ca.pem",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    same(None, [], envvars=True)
    cloud = load()
    assert (cloud.name, cloud.source, cloud.region_name) == ("envvars", "environment", "KR2")
    assert cloud.cacert == env["OS_CACERT"]


def test_envvars_cloud_with_application_credential(monkeypatch: pytest.MonkeyPatch, load: Loader) -> None:
    """OS_AUTH_TYPE=v3applicationcredential with OS_APPLICATION_CREDENTIAL_ID/SECRET resolves like openstacksdk."""
    env = {
        "OS_AUTH_URL": "https://id.example.com",
        "OS_AUTH_TYPE": "v3applicationcredential",
        "OS_APPLICATION_CREDENTIAL_ID": "ac1",
        "OS_APPLICATION_CREDENTIAL_SECRET": APP_SECRET,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    same(None, [], envvars=True)
    assert keystone_auth(load(), "env").application_credential_id == "ac1"


def test_os_client_config_file_beats_the_current_directory(
    hermetic: Path, monkeypatch: pytest.MonkeyPatch, load: Loader
) -> None:
    """OS_CLIENT_CONFIG_FILE is read before ./clouds.yaml, which is read before ~/.config/openstack/clouds.yaml."""
    cwd = Path.cwd()
    in_cwd = write(cwd / "clouds.yaml", {"x": {**PASSWORD_BY_NAMES, "region_name": "CWD"}})
    in_home = write(hermetic / "home" / ".config" / "openstack" / "clouds.yaml", {"x": PASSWORD_BY_NAMES})
    assert load("x").region_name == "CWD"  # the default search path: cwd before home
    same("x", [in_cwd, in_home])
    override = write(hermetic / "elsewhere.yaml", {"x": {**PASSWORD_BY_NAMES, "region_name": "ENV"}})
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(override))
    cloud = load("x")
    assert (cloud.region_name, cloud.source) == ("ENV", str(override))
    same("x", [in_cwd, in_home], envvars=True)  # openstacksdk puts OS_CLIENT_CONFIG_FILE first as well
    in_cwd.unlink()
    assert load("x", load_envvars=False).source == str(in_home)


def test_search_directories_match_openstacksdk(hermetic: Path) -> None:
    """config_search_dirs gives openstacksdk's CONFIG_SEARCH_PATH for the same HOME, XDG dirs and cwd (whose last
    entry is /etc/openstack); ``system_dirs`` replaces that last entry and nothing else. Only lists are compared:
    no file is read."""
    env = {**os.environ, "XDG_CONFIG_HOME": str(hermetic / "xdg"), "XDG_CONFIG_DIRS": str(hermetic / "site")}
    code = "import json; from openstack.config import loader; print(json.dumps(loader.CONFIG_SEARCH_PATH))"
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code],
        env=env,
        cwd=Path.cwd(),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    theirs = json.loads(out.stdout)
    assert config_search_dirs(env, str(Path.cwd())) == theirs
    assert theirs[-1:] == list(SYSTEM_CONFIG_DIRS) == ["/etc/openstack"]
    system = str(hermetic / SYSTEM)
    assert config_search_dirs(env, str(Path.cwd()), system_dirs=[system]) == [*theirs[:-1], system]


def test_system_directory_is_searched_last(hermetic: Path, load: Loader) -> None:
    """The system directory (here the stand-in passed as ``system_dirs``) is read when nothing before it holds a
    clouds.yaml, its secure.yaml merged in; XDG_CONFIG_DIRS comes before it."""
    public = {"auth": {k: v for k, v in PASSWORD_BY_NAMES["auth"].items() if k != "password"}, "region_name": "SYS"}
    system = write(hermetic / SYSTEM / "clouds.yaml", {"s": public})
    secure = write(hermetic / SYSTEM / "secure.yaml", {"s": {"auth": {"password": PW}}})
    cloud = load("s")
    assert (cloud.source, cloud.region_name) == (str(system), "SYS")
    assert cloud.password is not None
    assert cloud.password.reveal() == PW
    same("s", [system], [secure])
    site = write(hermetic / SITE / "openstack" / "clouds.yaml", {"s": {**PASSWORD_BY_NAMES, "region_name": "SITE"}})
    cloud = load("s")
    assert (cloud.source, cloud.region_name) == (str(site), "SITE")
    same("s", [site, system], [secure])


def test_unknown_cloud_and_missing_file_are_usage_errors_without_secrets(hermetic: Path, load: Loader) -> None:
    """An unknown cloud names the file and the clouds; no file at all names the files searched; no secret shows."""
    path = write(hermetic / "clouds.yaml", {"a": PASSWORD_BY_NAMES, "b": PASSWORD_BY_NAMES})
    with pytest.raises(UsageError) as unknown:
        load("nope", config_files=[path])
    assert "'nope'" in str(unknown.value)
    assert "a, b" in str(unknown.value)
    assert str(path) in str(unknown.value)
    with pytest.raises(UsageError) as none:
        load()
    message = str(none.value)
    assert str(Path.cwd() / "clouds.yaml") in message
    assert str(hermetic / SITE / "openstack" / "clouds.yaml") in message
    assert message.index(str(hermetic / SITE)) < message.index(str(hermetic / SYSTEM / "clouds.yaml"))
    assert "/etc/" not in message  # the stand-ins, not the machine's /etc/xdg/openstack and /etc/openstack
    with pytest.raises(UsageError, match="several clouds"):
        load(config_files=[path])
    for exc in (unknown.value, none.value):
        assert PW not in str(exc)


def test_missing_keys_and_broken_yaml_never_show_secrets(hermetic: Path, load: Loader) -> None:
    """A cloud without project scope, or a clouds.yaml that does not parse, is a UsageError with no secret in it."""
    no_scope = {"auth": {k: v for k, v in PASSWORD_BY_NAMES["auth"].items() if not k.startswith("project")}}
    path = write(hermetic / "clouds.yaml", {"noscope": no_scope})
    with pytest.raises(UsageError) as missing:
        keystone_auth(load("noscope", config_files=[path]), "src")
    assert "project_id, or project_name" in str(missing.value)
    assert "'noscope'" in str(missing.value)
    broken = hermetic / "broken.yaml"
    broken.write_text(f"clouds:\n  x:\n    auth:\n      password: {PW}\n   bad: [\n")
    with pytest.raises(UsageError) as bad:
        load("x", config_files=[broken])
    assert str(broken) in str(bad.value)
    for exc in (missing.value, bad.value):
        assert PW not in str(exc)
        assert PW not in repr(exc.args)


def test_generic_password_default_domain_fills_both_domains(hermetic: Path, load: Loader) -> None:
    """auth_type password with default_domain_id (keystoneauth's generic plugin) gives both domains that id."""
    auth = {k: v for k, v in PASSWORD_BY_NAMES["auth"].items() if "domain" not in k}
    path = write(hermetic / "clouds.yaml", {"g": {"auth": {**auth, "default_domain_id": "dd"}}})
    same("g", [path])
    ks = keystone_auth(load("g", config_files=[path]), "g")
    assert (ks.user_domain_id, ks.project_domain_id) == ("dd", "dd")


V2 = "https://api-identity-infrastructure.nhncloudservice.com/v2.0"


@pytest.mark.parametrize(
    "cloud",
    [
        {"auth": {"auth_url": V2, "username": "u@example.com", "password": PW, "tenant_id": "t-1"}},
        {"auth": {"auth_url": V2, "username": "u", "password": PW, "project_id": "t-2"}, "region_name": "KR1"},
        {"auth": {"auth_url": V2, "username": "u", "password": PW, "tenant-name": "name-3"}},
        {"auth": {"auth_url": V2, "username": "u", "password": PW}, "project_name": "top-4", "regions": ["JP1"]},
    ],
    ids=["tenant_id", "project_id", "tenant-name", "top-level-project_name"],
)
def test_v2password_resolves_like_openstacksdk(hermetic: Path, load: Loader, cloud: dict[str, Any]) -> None:
    """``auth_type: v2password`` (keystoneauth's Keystone v2.0 plugin, NHN Cloud's identity): openstacksdk maps
    project_* to tenant_* for it, and so does imgmig; the cloud becomes an NHN ``PasswordAuth`` posting to
    auth_url/tokens with that tenant (by id or by name)."""
    path = write(hermetic / "clouds.yaml", {"nhn": {"auth_type": "v2password", **cloud}})
    same("nhn", [path])
    resolved = load("nhn", config_files=[path])
    auth = cloud_auth(resolved, "nhn")
    assert isinstance(auth, PasswordAuth)
    assert auth.token_url == V2 + "/tokens"
    assert (auth.tenant_id or auth.tenant_name) in ("t-1", "t-2", "name-3", "top-4")
    assert auth.password.reveal() == PW


def test_v2password_without_a_tenant_is_one_paragraph(hermetic: Path, load: Loader) -> None:
    auth = {"auth_url": V2, "username": "u", "password": PW}
    path = write(hermetic / "clouds.yaml", {"nhn": {"auth_type": "v2password", "auth": auth}})
    with pytest.raises(UsageError, match=r"no auth.tenant_id or auth.tenant_name \(auth_type v2password"):
        cloud_auth(load("nhn", config_files=[path]), "nhn")
