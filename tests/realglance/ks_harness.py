"""Owns the real Keystone 30 (identity v3) of the harness: its cached venv, its start-up and its bootstrap data.

``running_glance(..., keystone=True)`` (harness.py) uses this module to run one Keystone under uwsgi on a
free loopback port (sqlite, fernet tokens) next to the Glance regions, and to fill it with:

* domains ``default`` (from ``keystone-manage bootstrap``) and ``other``;
* projects ``default/src-project``, ``default/dst-project``, ``default/service`` and ``other/src-project``
  (the same name in another domain: a name is only unique together with its domain);
* users ``default/admin`` (bootstrap: system and ``admin`` project admin), ``default/migrator`` (member and
  reader on both default projects), ``default/viewer`` (reader only on both), ``other/migrator`` (member
  and reader on ``other/src-project``) and ``default/glance`` (role ``service`` on ``service``: the user
  keystonemiddleware in Glance validates tokens with);
* an application credential ``imgmig-src`` of ``default/migrator`` on ``default/src-project``;
* regions and an ``identity`` and an ``image`` service, with ``public``, ``internal`` and ``admin``
  endpoints per region. The image endpoints are three different ports of the same region's uwsgi (so a
  client's interface choice is visible in the port it talks to). ``KeystoneCluster.image_region(url)`` adds
  one more region for the length of a ``with`` block (an image endpoint elsewhere, e.g. behind an HTTPS proxy).

Users and projects are keyed ``"<domain name>/<name>"``. Everything that goes wrong raises
``GlanceHarnessError``. Keystone is slow to import (about 5 s per worker), so the harness starts it before
the Glance regions and lets both come up together.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .harness import (
    HERE,
    GlanceHarnessError,
    _http_ok,
    _render,
    _spawn,
    _tail,
    _venv_lock,
    ensure_venv,
)

__all__ = [
    "INTERFACES",
    "KEYSTONE_REQUIREMENTS",
    "ApplicationCredential",
    "KeystoneCluster",
    "KeystoneProject",
    "KeystoneUser",
    "ensure_keystone_venv",
    "keystone_venv_path",
]

# keystone 30.0.0 and glance 33.0.0 resolve to the very same oslo.*, keystoneauth1, keystonemiddleware and
# SQLAlchemy versions, but Keystone gets a venv of its own so that adding it never invalidates the Glance
# venv (a one-minute reinstall). Changing this list invalidates the cached Keystone venv.
KEYSTONE_REQUIREMENTS: tuple[str, ...] = ("keystone==30.0.0", "pyuwsgi")
INTERFACES: tuple[str, ...] = ("public", "internal", "admin")
_MARKER_NAME = ".imgmig-keystone-venv-complete"
# Bootstrapped once per venv: schema plus bootstrap's default domain, admin project/user and roles. The
# admin password is part of the name so that changing it can never reuse an old template.
ADMIN_PASSWORD = "imgmig-keystone-admin"
_DB_TEMPLATE_NAME = f".imgmig-keystone-db-template-{base64.b32encode(ADMIN_PASSWORD.encode()).decode()[:16]}.sqlite"
_MANAGE_TIMEOUT_S = 180.0
_HEALTH_TIMEOUT_S = 90.0
_HTTP_TIMEOUT_S = 30.0
DEFAULT_KEYSTONE_PROCESSES = 2


# --------------------------------------------------------------------------------------------- venv


def keystone_venv_path() -> Path:
    """Where the Keystone venv lives: ``IMGMIG_KEYSTONE_VENV`` or the XDG cache dir."""
    explicit = os.environ.get("IMGMIG_KEYSTONE_VENV")
    if explicit:
        return Path(explicit).expanduser().resolve()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser().resolve() / "imgmig" / "keystone-30-venv"


def ensure_keystone_venv() -> Path:
    """Install Keystone 30 and pyuwsgi into their own cached venv, or reuse it; return the venv path."""
    return ensure_venv(keystone_venv_path(), KEYSTONE_REQUIREMENTS, marker_name=_MARKER_NAME,
                       imports="keystone.server.wsgi, pyuwsgi", what="Keystone")  # fmt: skip


# ------------------------------------------------------------------------------------------ data


@dataclass(frozen=True)
class KeystoneUser:
    name: str
    id: str
    domain_id: str
    domain_name: str
    password: str


@dataclass(frozen=True)
class KeystoneProject:
    name: str
    id: str
    domain_id: str
    domain_name: str


@dataclass(frozen=True)
class ApplicationCredential:
    id: str
    name: str
    secret: str
    user_id: str
    project_id: str


@dataclass
class KeystoneCluster:
    """A running real Keystone 30 whose catalog lists the Glance regions (``GlanceCluster.keystone``)."""

    url: str  # identity v3 base, e.g. http://127.0.0.1:P/v3
    admin: KeystoneUser  # default/admin: admin on project default/admin and on the system
    admin_project: KeystoneProject
    domains: dict[str, str]  # domain name -> id
    users: dict[str, KeystoneUser]  # "<domain name>/<user name>" -> user
    projects: dict[str, KeystoneProject]  # "<domain name>/<project name>" -> project
    application_credential: ApplicationCredential  # of default/migrator on default/src-project
    endpoints: dict[str, dict[str, str]]  # region -> interface (public/internal/admin) -> image endpoint URL
    service_user: KeystoneUser  # default/glance, what keystonemiddleware in every region authenticates as
    state_dir: Path = field(default_factory=Path)

    def user(self, name: str, domain: str = "default") -> KeystoneUser:
        return self.users[f"{domain}/{name}"]

    def project(self, name: str, domain: str = "default") -> KeystoneProject:
        return self.projects[f"{domain}/{name}"]

    def password_token(self, user: KeystoneUser, project: KeystoneProject) -> tuple[str, dict[str, Any]]:
        """A project-scoped token (ids only) and its ``token`` body, from POST /v3/auth/tokens."""
        body = {
            "auth": {
                "identity": {"methods": ["password"], "password": {"user": {"id": user.id, "password": user.password}}},
                "scope": {"project": {"id": project.id}},
            }
        }
        return _issue_token(self.url, body)

    def admin_token(self) -> str:
        """A system-scoped admin token (what the Keystone admin API wants under the new default policies)."""
        return _issue_token(self.url, _system_admin_auth(self.admin.password))[0]

    def create_application_credential(
        self, name: str, user: KeystoneUser | None = None, project: KeystoneProject | None = None
    ) -> ApplicationCredential:
        """A new application credential of ``user`` (default/migrator) on ``project`` (default/src-project)."""
        return _create_application_credential(
            self.url, user or self.user("migrator"), project or self.project("src-project"), name
        )

    def delete_application_credential(self, credential: ApplicationCredential | None = None) -> None:
        """Delete (revoke) the application credential, as its owner does (DELETE .../application_credentials)."""
        cred = credential or self.application_credential
        token = self.admin_token()
        _call(self.url, "DELETE", f"/users/{cred.user_id}/application_credentials/{cred.id}", token=token)

    @contextlib.contextmanager
    def image_region(self, url: str, *, prefix: str = "EXTRA") -> Iterator[str]:
        """A new catalog region ``<prefix>-<hex>`` whose public, internal and admin ``image`` endpoints are all
        ``url`` (e.g. an HTTPS proxy in front of a Glance region); yields its id. The endpoints and the region
        are deleted again on exit, also after a failure: the catalog is shared by the whole session and
        other tests expect exactly the harness's regions (a failed deletion raises)."""
        token = self.admin_token()
        services = _call(self.url, "GET", "/services?type=image", token=token)[2]["services"]
        if len(services) != 1:
            raise GlanceHarnessError(f"expected one image service in the catalog, found {len(services)}")
        region = f"{prefix}-{uuid.uuid4().hex[:8]}"
        created: list[str] = []
        made_region = False
        try:
            _call(self.url, "POST", "/regions", token=token, body={"region": {"id": region}})
            made_region = True
            for interface in INTERFACES:
                endpoint = {"service_id": services[0]["id"], "interface": interface, "region_id": region, "url": url}
                doc = _call(self.url, "POST", "/endpoints", token=token, body={"endpoint": endpoint})[2]
                created.append(doc["endpoint"]["id"])
            yield region
        finally:
            errors: list[str] = []
            with contextlib.suppress(GlanceHarnessError):  # the first token may have expired by now
                token = self.admin_token()
            for endpoint_id in created:
                try:
                    _call(self.url, "DELETE", f"/endpoints/{endpoint_id}", token=token)
                except GlanceHarnessError as exc:
                    errors.append(str(exc))
            if made_region:
                try:
                    _call(self.url, "DELETE", f"/regions/{region}", token=token)
                except GlanceHarnessError as exc:
                    errors.append(str(exc))
            if errors:
                raise GlanceHarnessError(f"could not remove region {region} from the catalog: {'; '.join(errors)}")

    def set_token_expiration(self, seconds: int) -> None:
        """Give tokens issued from now on a lifetime of ``seconds`` (live tokens keep their expiry)."""
        if seconds < 0:
            raise ValueError("seconds must not be negative")
        target = self.state_dir / "token-expiration"
        tmp = target.with_suffix(".tmp")
        tmp.write_text(str(int(seconds)))
        os.replace(tmp, target)  # a new inode: the workers notice the change on their next request

    def tokens_issued(self) -> int:
        """How many tokens Keystone has issued (201 answers to POST /v3/auth/tokens) since it started."""
        try:
            with (self.state_dir / "tokens-issued.log").open("rb") as fh:
                return sum(1 for _ in fh)
        except FileNotFoundError:
            return 0

    def log_paths(self) -> list[Path]:
        return [self.state_dir / "keystone.log", self.state_dir / "uwsgi.log"]


# ---------------------------------------------------------------------------------------- HTTP


def _call(
    base: str, method: str, path: str, *, token: str | None = None, body: Mapping[str, Any] | None = None
) -> tuple[int, Mapping[str, str], Any]:
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token is not None:
        headers["X-Auth-Token"] = token
    req = urllib.request.Request(base + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=_HTTP_TIMEOUT_S) as resp:
            raw = resp.read()
            return resp.status, dict(resp.headers), json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        raise GlanceHarnessError(
            f"Keystone {method} {path} gave {exc.code}: {raw[:500].decode(errors='replace')}"
        ) from exc
    except (urllib.error.URLError, OSError) as exc:
        raise GlanceHarnessError(f"Keystone {method} {path} failed: {exc!r}") from exc


def _issue_token(base: str, body: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    _, headers, doc = _call(base, "POST", "/auth/tokens", body=body)
    token = headers.get("X-Subject-Token") or headers.get("x-subject-token")
    if not token:
        raise GlanceHarnessError(f"Keystone answered POST /auth/tokens without X-Subject-Token: {headers}")
    return token, dict(doc["token"])


def _system_admin_auth(password: str) -> dict[str, Any]:
    user = {"name": "admin", "domain": {"id": "default"}, "password": password}
    return {
        "auth": {
            "identity": {"methods": ["password"], "password": {"user": user}},
            "scope": {"system": {"all": True}},
        }
    }


def _create_application_credential(
    base: str, user: KeystoneUser, project: KeystoneProject, name: str
) -> ApplicationCredential:
    # Created by the user itself with a token scoped to the project, as a real user does; the secret is
    # only ever shown in this answer.
    auth = {
        "auth": {
            "identity": {"methods": ["password"], "password": {"user": {"id": user.id, "password": user.password}}},
            "scope": {"project": {"id": project.id}},
        }
    }
    token = _issue_token(base, auth)[0]
    body = {"application_credential": {"name": name, "description": "imgmig test harness"}}
    doc = _call(base, "POST", f"/users/{user.id}/application_credentials", token=token, body=body)[2]
    cred = doc["application_credential"]
    return ApplicationCredential(
        cred["id"], cred["name"], cred["secret"], user.id, cred.get("project_id") or project.id
    )


# ------------------------------------------------------------------------------------ start-up


@dataclass
class KeystoneServer:
    """What the harness needs while starting: paths, port and the uwsgi process once spawned."""

    venv: Path
    root: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/v3"


def _write_keys(directory: Path, count: int = 2) -> None:
    # The fernet key format (cryptography's Fernet.generate_key()); 0 is the staged key, the highest the
    # primary one. Writing them here saves two keystone-manage runs (about 1.5 s of imports each).
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for index in range(count):
        path = directory / str(index)
        path.write_bytes(base64.urlsafe_b64encode(os.urandom(32)))
        path.chmod(0o600)


def _write_config(root: Path, *, port: int, token_expiration: int, processes: int) -> None:
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for repo in ("fernet-keys", "fernet-receipts", "credential-keys"):
        _write_keys(root / repo)
    values = {
        "KS_DIR": str(root),
        "PORT": str(port),
        "PROCESSES": str(processes),
        "MODULE_DIR": str(HERE),
        "TOKEN_EXPIRATION": str(int(token_expiration)),
    }
    (root / "etc").mkdir()
    (root / "etc" / "keystone.conf").write_text(_render("keystone.conf.in", values))
    (root / "uwsgi.ini").write_text(_render("keystone-uwsgi.ini.in", values))
    (root / "token-expiration").write_text(str(int(token_expiration)))


def _manage(venv: Path, root: Path, *args: str) -> None:
    log_path = root / "keystone-manage.log"
    cmd = [str(venv / "bin" / "keystone-manage"), "--config-file", str(root / "etc" / "keystone.conf"), *args]
    with log_path.open("a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        try:
            proc = subprocess.run(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=_MANAGE_TIMEOUT_S
            )
        except subprocess.TimeoutExpired as exc:
            raise GlanceHarnessError(f"keystone-manage {args[0]} timed out (log: {log_path})") from exc
    if proc.returncode != 0:
        raise GlanceHarnessError(f"keystone-manage {args[0]} failed ({proc.returncode}):\n{_tail(log_path)}")


def _db_template(venv: Path) -> Path:
    """A synced and bootstrapped Keystone database (no endpoints), built once per venv.

    ``db_sync`` plus ``bootstrap`` cost about 4 s of CPU; the result holds the schema, the default domain,
    the admin project and user (password ``ADMIN_PASSWORD``) and the default roles, nothing port-specific.
    """
    template = venv / _DB_TEMPLATE_NAME
    if template.exists():
        return template
    with _venv_lock(venv):
        if template.exists():
            return template
        work = Path(tempfile.mkdtemp(prefix="keystone-db-template-", dir=venv))
        try:
            root = work / "ks"
            _write_config(root, port=0, token_expiration=3600, processes=1)
            _manage(venv, root, "db_sync")
            _manage(venv, root, "bootstrap", "--bootstrap-password", ADMIN_PASSWORD)
            os.replace(root / "keystone.sqlite", template)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return template


def prepare_keystone(root: Path, port: int, *, token_expiration: int, processes: int) -> KeystoneServer:
    """Install the venv if needed and lay out ``root`` (config, keys, database); nothing is started."""
    venv = ensure_keystone_venv()
    _write_config(root, port=port, token_expiration=token_expiration, processes=processes)
    template = _db_template(venv)
    db_path = root / "keystone.sqlite"
    shutil.copyfile(template, db_path)
    with contextlib.closing(sqlite3.connect(db_path, timeout=60)) as db:
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise GlanceHarnessError(f"could not switch {db_path} to WAL (journal_mode={mode})")
    return KeystoneServer(venv, root, port)


def spawn_keystone(server: KeystoneServer, base_env: Mapping[str, str], open_files: list[Any]) -> None:
    env = {
        **base_env,
        "PATH": f"{server.venv / 'bin'}{os.pathsep}{base_env.get('PATH', '')}",
        "VIRTUAL_ENV": str(server.venv),
        "OS_KEYSTONE_CONFIG_DIR": str(server.root / "etc"),
        "IMGMIG_KEYSTONE_DIR": str(server.root),
    }
    out = (server.root / "uwsgi.stdout.log").open("wb")
    open_files.append(out)
    server.proc = _spawn(
        [str(server.venv / "bin" / "uwsgi"), "--ini", str(server.root / "uwsgi.ini")],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def wait_keystone(server: KeystoneServer) -> None:
    deadline = time.monotonic() + _HEALTH_TIMEOUT_S
    while True:
        assert server.proc is not None
        if server.proc.poll() is not None:
            raise GlanceHarnessError(
                f"Keystone's uwsgi exited with {server.proc.returncode} during start-up.\n"
                f"uwsgi.log:\n{_tail(server.root / 'uwsgi.log')}\nkeystone.log:\n{_tail(server.root / 'keystone.log')}"
            )
        if _http_ok(server.url):
            return
        if time.monotonic() > deadline:
            raise GlanceHarnessError(
                f"Keystone not healthy after {_HEALTH_TIMEOUT_S:.0f}s\nuwsgi.log:\n{_tail(server.root / 'uwsgi.log')}"
            )
        time.sleep(0.2)


def populate_keystone(
    server: KeystoneServer,
    *,
    regions: Sequence[str],
    image_endpoints: Mapping[str, Mapping[str, str]],
    service_password: str,
) -> KeystoneCluster:
    """Create the domains, projects, users, roles, catalog and application credential (module docstring)."""
    url = server.url
    admin_token = _issue_token(url, _system_admin_auth(ADMIN_PASSWORD))[0]

    def call(method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        return _call(url, method, path, token=admin_token, body=body)[2]

    def parallel(jobs: Sequence[tuple[str, str, Mapping[str, Any] | None]]) -> list[Any]:
        # Keystone has two workers; a few client threads keep both busy (about 40 calls in all).
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            return list(pool.map(lambda job: call(*job), jobs))

    other_domain = call("POST", "/domains", {"domain": {"name": "other", "description": "imgmig second domain"}})
    domains = {"default": "default", "other": other_domain["domain"]["id"]}
    roles = {r["name"]: r["id"] for r in call("GET", "/roles")["roles"]}
    for needed in ("admin", "member", "reader", "service"):
        if needed not in roles:
            raise GlanceHarnessError(f"Keystone bootstrap created no {needed!r} role (roles: {sorted(roles)})")

    project_specs = [
        ("default", "src-project"),
        ("default", "dst-project"),
        ("default", "service"),
        ("other", "src-project"),
    ]
    created = parallel(
        [("POST", "/projects", {"project": {"name": name, "domain_id": domains[dom]}}) for dom, name in project_specs]
    )
    projects = {
        f"{dom}/{name}": KeystoneProject(name, doc["project"]["id"], domains[dom], dom)
        for (dom, name), doc in zip(project_specs, created, strict=True)
    }
    user_specs = [
        ("default", "migrator", "migrator-pw"),
        ("default", "viewer", "viewer-pw"),
        ("other", "migrator", "other-migrator-pw"),
        ("default", "glance", service_password),
    ]
    created = parallel(
        [
            ("POST", "/users", {"user": {"name": name, "domain_id": domains[dom], "password": pw}})
            for dom, name, pw in user_specs
        ]
    )
    users = {
        f"{dom}/{name}": KeystoneUser(name, doc["user"]["id"], domains[dom], dom, pw)
        for (dom, name, pw), doc in zip(user_specs, created, strict=True)
    }
    grants = [
        ("default/migrator", "default/src-project", "member"),
        ("default/migrator", "default/src-project", "reader"),
        ("default/migrator", "default/dst-project", "member"),
        ("default/migrator", "default/dst-project", "reader"),
        ("default/viewer", "default/src-project", "reader"),
        ("default/viewer", "default/dst-project", "reader"),
        ("other/migrator", "other/src-project", "member"),
        ("other/migrator", "other/src-project", "reader"),
        ("default/glance", "default/service", "service"),
    ]
    parallel([("PUT", f"/projects/{projects[p].id}/users/{users[u].id}/roles/{roles[r]}", None) for u, p, r in grants])

    parallel([("POST", "/regions", {"region": {"id": region}}) for region in regions])
    identity = call("POST", "/services", {"service": {"type": "identity", "name": "keystone"}})["service"]["id"]
    image = call("POST", "/services", {"service": {"type": "image", "name": "glance"}})["service"]["id"]
    endpoint_jobs: list[tuple[str, str, Mapping[str, Any] | None]] = []
    for region in regions:
        for interface in INTERFACES:
            for service_id, endpoint_url in ((identity, url), (image, image_endpoints[region][interface])):
                endpoint = {"service_id": service_id, "interface": interface, "region_id": region, "url": endpoint_url}
                endpoint_jobs.append(("POST", "/endpoints", {"endpoint": endpoint}))
    parallel(endpoint_jobs)

    migrator, src = users["default/migrator"], projects["default/src-project"]
    app_cred = _create_application_credential(url, migrator, src, "imgmig-src")

    admin_user = call("GET", "/users?name=admin&domain_id=default")["users"][0]
    admin_project = call("GET", "/projects?name=admin&domain_id=default")["projects"][0]
    return KeystoneCluster(
        url=url,
        admin=KeystoneUser("admin", admin_user["id"], "default", "default", ADMIN_PASSWORD),
        admin_project=KeystoneProject("admin", admin_project["id"], "default", "default"),
        domains=domains,
        users={k: v for k, v in users.items() if k != "default/glance"},
        projects=projects,
        application_credential=app_cred,
        endpoints={region: dict(image_endpoints[region]) for region in regions},
        service_user=users["default/glance"],
        state_dir=server.root,
    )


def authtoken_section(server: KeystoneServer, service_password: str) -> str:
    """The ``[keystone_authtoken]`` section of every region's glance-api.conf."""
    return "\n".join(
        [
            "",
            "# keystonemiddleware auth_token of the dual-auth flavor (imgmig test harness, keystone=True).",
            "[keystone_authtoken]",
            f"www_authenticate_uri = {server.url}",
            f"auth_url = {server.url}",
            "auth_type = password",
            "username = glance",
            f"password = {service_password}",
            "user_domain_id = default",
            "project_name = service",
            "project_domain_id = default",
            "interface = public",
            # -1: no token cache, so a token Keystone no longer accepts gets 401 from the next request on (the
            # default caches a validation for 300 s per worker, which would make revocation tests flaky).
            "token_cache_time = -1",
            "http_connect_timeout = 10",
            "",
        ]
    )
