"""Owns starting and stopping a real OpenStack Glance 33 cluster on loopback for the test suite.

What it runs (see /work/shared/reference/glance-behaviour.md for why each piece exists):

* a cached virtual environment with ``glance==33.0.0``, ``pyuwsgi`` and the shim's dependencies, kept
  apart from the project's ``.venv`` because Glance pins many OpenStack libraries
  (``IMGMIG_GLANCE_VENV`` or ``${XDG_CACHE_HOME:-~/.cache}/imgmig/glance-33-venv``);
* per region: its own config dir, sqlite database, file store, and one uwsgi server
  (``glance_wsgi.py`` as the WSGI module, trusted-auth paste flavor) on a free loopback port;
* one identity shim (``shim.py``) issuing NHN-style Keystone v2.0 tokens and fronting every region with a
  streaming proxy that turns a token into Glance's trusted identity headers;
* optionally (``keystone=True``, see ks_harness.py) a real Keystone 30 from its own cached venv, whose
  catalog lists the same regions. The regions then run the ``dual-auth`` paste flavor (glance_wsgi.py):
  requests from the shim (marked with a per-run secret) keep the trusted-auth path, every other request is
  validated by keystonemiddleware against that Keystone. Each region's uwsgi then also listens on two more
  ports, the ``internal`` and ``admin`` image endpoints of the Keystone catalog.

``running_glance()`` starts all of it and always stops exactly the processes it started, also when
start-up fails halfway. Anything that cannot be installed or started raises ``GlanceHarnessError``.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import secrets
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .ks_harness import KeystoneCluster

__all__ = [
    "GLANCE_REQUIREMENTS",
    "GlanceCluster",
    "GlanceHarnessError",
    "ensure_glance_venv",
    "glance_venv_path",
    "running_glance",
]

HERE = Path(__file__).resolve().parent

# What the Glance venv holds. aiohttp and webob are for the shim, which runs with the venv's python so that
# its 401 bodies come from the same webob Glance uses. Changing this list invalidates the cached venv.
GLANCE_REQUIREMENTS: tuple[str, ...] = ("glance==33.0.0", "pyuwsgi", "aiohttp>=3.10", "webob")
_MARKER_NAME = ".imgmig-glance-venv-complete"
_DB_TEMPLATE_NAME = ".imgmig-glance-db-template.sqlite"
_INSTALL_TIMEOUT_S = 1800.0
_DB_SYNC_TIMEOUT_S = 180.0
_HEALTH_TIMEOUT_S = 90.0
_SHIM_START_TIMEOUT_S = 30.0
_STOP_GRACE_S = 10.0
# Two workers per region: three regions x four workers would be twelve Glance processes on two cores, and
# two are enough to exercise concurrent writes against sqlite (the BEGIN IMMEDIATE fix).
DEFAULT_PROCESSES = 2


class GlanceHarnessError(RuntimeError):
    """Glance could not be installed, configured or started."""


# --------------------------------------------------------------------------------------------- venv


def glance_venv_path() -> Path:
    """Where the Glance venv lives: ``IMGMIG_GLANCE_VENV`` or the XDG cache dir."""
    explicit = os.environ.get("IMGMIG_GLANCE_VENV")
    if explicit:
        return Path(explicit).expanduser().resolve()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser().resolve() / "imgmig" / "glance-33-venv"


def _marker_text(requirements: Sequence[str]) -> str:
    return json.dumps({"requirements": list(requirements)}, sort_keys=True)


def _venv_complete(venv: Path, marker_name: str, requirements: Sequence[str]) -> bool:
    try:
        return (venv / marker_name).read_text() == _marker_text(requirements) and (venv / "bin" / "uwsgi").exists()
    except OSError:
        return False


def _base_python() -> str:
    # A venv made from inside another venv must still point at a real interpreter, not at the project's
    # .venv (which a `make clean` would pull out from under it).
    base = getattr(sys, "_base_executable", None) or sys.executable
    return base if Path(base).exists() else sys.executable


@contextlib.contextmanager
def _venv_lock(venv: Path) -> Iterator[None]:
    venv.parent.mkdir(parents=True, exist_ok=True)
    with (venv.parent / (venv.name + ".lock")).open("a+") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def ensure_venv(venv: Path, requirements: Sequence[str], *, marker_name: str, imports: str, what: str) -> Path:
    """Install ``requirements`` (with pyuwsgi among them) into the cached venv ``venv``, or reuse it.

    Concurrent callers (several pytest processes) are serialised by an fcntl lock next to the venv; the
    one that finds the completion marker after taking the lock returns at once. ``imports`` is checked in
    the new venv; ``what`` names it in errors (e.g. "Glance").
    """
    if _venv_complete(venv, marker_name, requirements):
        return venv
    log_path = venv.parent / (venv.name + ".install.log")
    with _venv_lock(venv):
        try:
            if _venv_complete(venv, marker_name, requirements):
                return venv
            # A half-built venv from an interrupted install is not trusted: start over.
            if venv.exists():
                shutil.rmtree(venv)
            with log_path.open("w") as log:
                _run_logged([_base_python(), "-m", "venv", str(venv)], log, f"create the {what} venv")
                pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
                _run_logged([*pip, "install", "-q", "--upgrade", "pip"], log, "upgrade pip", check=False)
                _run_logged([*pip, "install", *requirements], log, f"pip install {what}")
                _run_logged([str(venv / "bin" / "python"), "-c", f"import {imports}"], log,
                            f"import {what} in its venv")  # fmt: skip
            if not (venv / "bin" / "uwsgi").exists():
                raise GlanceHarnessError(f"pyuwsgi installed no uwsgi executable in {venv}/bin")
            (venv / marker_name).write_text(_marker_text(requirements))
            return venv
        except GlanceHarnessError:
            raise
        except Exception as exc:  # venv creation, disk full, ...: still one clear error type
            raise GlanceHarnessError(f"installing the {what} venv at {venv} failed: {exc!r}") from exc


def ensure_glance_venv() -> Path:
    """Install Glance 33 and pyuwsgi into their own cached venv, or reuse it; return the venv path."""
    return ensure_venv(glance_venv_path(), GLANCE_REQUIREMENTS, marker_name=_MARKER_NAME,
                       imports="glance, aiohttp, webob, pyuwsgi", what="Glance")  # fmt: skip


def _run_logged(cmd: Sequence[str], log: Any, what: str, *, check: bool = True) -> None:
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    try:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=_INSTALL_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise GlanceHarnessError(f"{what}: timed out after {_INSTALL_TIMEOUT_S:.0f}s (log: {log.name})") from exc
    if check and proc.returncode != 0:
        log.flush()
        raise GlanceHarnessError(
            f"{what} failed with exit code {proc.returncode}; last lines of {log.name}:\n" + _tail(Path(log.name))
        )


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"<cannot read {path}>"
    # pip's index-location warnings are noise on this machine; leave them out of error messages.
    kept = [line for line in text.splitlines() if not line.startswith("WARNING: Location")]
    return "\n".join(kept[-lines:])


# ------------------------------------------------------------------------------------------ cluster


@dataclass
class GlanceCluster:
    """A running set of real Glance regions behind the identity shim."""

    identity_url: str  # e.g. http://127.0.0.1:P/v2.0
    regions: dict[str, str]  # region -> proxy base URL (what the serviceCatalog lists)
    # region -> direct uwsgi URL: no auth in front (debugging only), or with keystone=True the region's
    # keystonemiddleware-guarded public image endpoint (the same as keystone.endpoints[region]["public"]).
    upstreams: dict[str, str]
    admin_url: str  # shim admin base URL, e.g. http://127.0.0.1:P/_admin
    state_dir: Path = field(default_factory=Path)
    # Process-group ids of the children the harness started (each uwsgi master leads its workers).
    process_groups: list[int] = field(default_factory=list)
    # The real Keystone v3 serving the same regions: only with running_glance(keystone=True).
    keystone: KeystoneCluster | None = None

    def set_token_ttl(self, seconds: float, *, existing: bool = False) -> None:
        """Set the lifetime of tokens issued from now on (``existing=True``: also cut live tokens)."""
        self._admin("token-ttl", {"seconds": seconds, "existing": existing})

    def expire_tokens(self) -> None:
        """Expire every token issued so far; the next request with one of them gets 401."""
        self._admin("expire-tokens", {})

    def change_password(self, username: str, password: str) -> None:
        """From now on only ``password`` authenticates ``username`` (issued tokens stay valid)."""
        self._admin("password", {"username": username, "password": password})

    def lose_responses(self, region: str, rules: list[dict[str, Any]]) -> None:
        """Requests matching ``rules`` take effect in ``region``, then the client's connection is dropped."""
        self._admin(f"faults/{region}", {"lose_response": rules})

    def state(self) -> dict[str, Any]:
        """Tokens issued per tenant, requests per kind and region, uploads in progress, answers lost."""
        with urllib.request.urlopen(f"{self.admin_url}/state", timeout=10) as resp:
            doc: dict[str, Any] = json.loads(resp.read())
            return doc

    def log_paths(self, region: str) -> list[Path]:
        """Glance's and uwsgi's log files of one region (useful in assertion messages)."""
        base = self.state_dir / region
        return [base / "glance-api.log", base / "uwsgi.log"]

    def _admin(self, action: str, body: Mapping[str, Any]) -> Any:
        req = urllib.request.Request(
            f"{self.admin_url}/{action}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())


@dataclass
class _Region:
    name: str
    root: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    # With Keystone: the same uwsgi also listens here (the catalog's internal and admin image endpoints).
    internal_port: int | None = None
    admin_port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _free_port() -> int:
    # uwsgi cannot report the port it bound, so pick one here; the short race with other processes is
    # caught by the health wait (uwsgi exits when the bind fails) and reported with its log.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _render(template: str, values: Mapping[str, str]) -> str:
    text = (HERE / template).read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    return text


def _write_region_config(
    region: _Region,
    *,
    processes: int,
    require_format_match: bool,
    keystone_authtoken: str = "",
    trusted_proxy_secret: str = "",
) -> None:
    root = region.root
    # A reused state dir must not hand a fresh database stale image files (glance_store would report
    # Duplicate for a re-created image id), so each start gets an empty region directory.
    if root.exists():
        shutil.rmtree(root)
    for sub in ("etc", "staging", "cache", "images", "locks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    values = {
        "REGION_DIR": str(root),
        "PORT": str(region.port),
        "PROCESSES": str(processes),
        "MODULE_DIR": str(HERE),
        "REQUIRE_FORMAT_MATCH": "true" if require_format_match else "false",
        # Without Keystone the files are exactly the trusted-auth setup (the dualauth filter is never loaded).
        "PASTE_FLAVOR": "dual-auth" if keystone_authtoken else "trusted-auth",
        "KEYSTONE_AUTHTOKEN": keystone_authtoken,
        "TRUSTED_PROXY_SECRET": trusted_proxy_secret,
        "EXTRA_HTTP_SOCKETS": "\n".join(
            f"http-socket = 127.0.0.1:{port}" for port in (region.internal_port, region.admin_port) if port
        ),
    }
    (root / "etc" / "glance-api.conf").write_text(_render("glance-api.conf.in", values))
    (root / "etc" / "glance-api-paste.ini").write_text(_render("glance-api-paste.ini", values))
    (root / "uwsgi.ini").write_text(_render("uwsgi.ini.in", values))


def _db_template(venv: Path) -> Path:
    """A freshly synced, empty Glance database, built once per venv and copied into every region.

    ``glance-manage db sync`` costs about 3 s of CPU per region; the result holds only the schema and
    ``alembic_version`` (nothing region-specific), so one copy serves every region and every run.
    """
    template = venv / _DB_TEMPLATE_NAME
    if template.exists():
        return template
    with _venv_lock(venv):
        if template.exists():
            return template
        work = Path(tempfile.mkdtemp(prefix="glance-db-template-", dir=venv))
        try:
            region = _Region("db-template", work, 0)
            _write_region_config(region, processes=1, require_format_match=True)
            _db_sync(venv, region)
            # Publish atomically so a concurrent reader never copies a half-written file.
            os.replace(work / "glance.sqlite", template)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return template


def _db_sync(venv: Path, region: _Region) -> None:
    conf = region.root / "etc" / "glance-api.conf"
    log_path = region.root / "db-sync.log"
    with log_path.open("w") as log:
        try:
            proc = subprocess.run(
                [str(venv / "bin" / "glance-manage"), "--config-file", str(conf), "db", "sync"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=_DB_SYNC_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise GlanceHarnessError(f"glance-manage db sync timed out (log: {log_path})") from exc
    if proc.returncode != 0:
        raise GlanceHarnessError(f"glance-manage db sync failed ({proc.returncode}):\n{_tail(log_path)}")


def _install_db(template: Path, region: _Region) -> None:
    db_path = region.root / "glance.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(template, db_path)
    # WAL is a property of the database file, so setting it once here covers every uwsgi worker: readers
    # then never wait for the one writer that BEGIN IMMEDIATE admits (see glance_wsgi.py).
    with contextlib.closing(sqlite3.connect(db_path, timeout=60)) as db:
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise GlanceHarnessError(f"could not switch {db_path} to WAL (journal_mode={mode})")


_PR_SET_PDEATHSIG = 1
# Resolved in the parent: after fork only the call itself runs (no dlopen, no imports in the child).
try:
    _PRCTL: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: no parent-death signal, the try/finally still stops all
    _PRCTL = None


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM the child when the harness process dies, so a killed pytest leaks nothing."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def _spawn(cmd: Sequence[str], *, env: Mapping[str, str], stdout: Any, stderr: Any) -> subprocess.Popen[bytes]:
    # A new session makes the child a process-group leader, so stopping it can signal exactly its group
    # (uwsgi master plus its workers) and nothing else. PDEATHSIG is tied to the calling thread, which
    # is why spawning only happens on the thread that runs the context manager.
    in_main = threading.current_thread() is threading.main_thread()
    return subprocess.Popen(
        list(cmd),
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
        preexec_fn=_die_with_parent if in_main else None,
    )


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM a child we started. Only the leader: uwsgi's die-on-term master then SIGINTs its workers
    (immediate exit), whereas a worker that got SIGTERM itself sometimes lingered until uwsgi's mercy
    timeout. Group members that survive are SIGKILLed by _wait_stopped."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)


def _wait_stopped(proc: subprocess.Popen[bytes]) -> None:
    """Wait for an already signalled child and its group; SIGKILL whatever outlives the grace period."""
    pgid = proc.pid  # start_new_session: the child leads a group with its own pid
    try:
        proc.wait(timeout=_STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        proc.wait(timeout=_STOP_GRACE_S)
    # Workers that outlived their master still carry its group id; while any does, the id cannot have
    # been reused, so signalling the group reaches only processes we started.
    deadline = time.monotonic() + _STOP_GRACE_S
    while _group_alive(pgid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            deadline = time.monotonic() + _STOP_GRACE_S
        time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg(…, 0) also succeeds for zombies; a group of only zombies is not alive for our purposes,
    # and those zombies are not ours to reap (they are children of the dead master, reparented to init).
    return _group_has_live_member(pgid)


def _group_has_live_member(pgid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state is [0], pgrp is [2].
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def _wait_healthy(regions: Sequence[_Region]) -> None:
    deadline = time.monotonic() + _HEALTH_TIMEOUT_S
    pending = list(regions)
    while pending:
        for region in list(pending):
            assert region.proc is not None
            if region.proc.poll() is not None:
                raise GlanceHarnessError(
                    f"uwsgi for region {region.name} exited with {region.proc.returncode} during start-up.\n"
                    f"uwsgi.log:\n{_tail(region.root / 'uwsgi.log')}\n"
                    f"glance-api.log:\n{_tail(region.root / 'glance-api.log')}"
                )
            if _http_ok(f"{region.url}/versions"):
                pending.remove(region)
        if not pending:
            return
        if time.monotonic() > deadline:
            names = ", ".join(r.name for r in pending)
            details = "\n".join(f"--- {r.name} uwsgi.log:\n{_tail(r.root / 'uwsgi.log')}" for r in pending)
            raise GlanceHarnessError(f"Glance regions not healthy after {_HEALTH_TIMEOUT_S:.0f}s: {names}\n{details}")
        time.sleep(0.2)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _read_banner(proc: subprocess.Popen[bytes], log_path: Path) -> dict[str, Any]:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + _SHIM_START_TIMEOUT_S
    buf = b""
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise GlanceHarnessError(f"identity shim printed no banner in {_SHIM_START_TIMEOUT_S:.0f}s")
        ready, _, _ = select.select([fd], [], [], min(remaining, 0.5))
        if ready:
            data = os.read(fd, 65536)
            if not data:
                break
            buf += data
        elif proc.poll() is not None:
            break
    line = buf.split(b"\n", 1)[0]
    try:
        banner = json.loads(line)
    except ValueError as exc:
        proc.poll()
        raise GlanceHarnessError(
            f"identity shim did not start (exit {proc.returncode}); stdout {line[:200]!r}; stderr:\n{_tail(log_path)}"
        ) from exc
    # The shim prints nothing else to stdout; keep draining so a stray print can never block it.
    threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()
    return dict(banner)


def _drain(stream: Any) -> None:
    with contextlib.suppress(Exception):
        while stream.read(65536):
            pass


@contextlib.contextmanager
def running_glance(
    regions: Sequence[str] = ("KR1", "KR2", "JP1"),
    *,
    state_dir: Path,
    token_ttl: float | None = None,
    users: dict[str, Any] | None = None,
    processes: int = DEFAULT_PROCESSES,
    require_format_match: bool = True,
    keystone: bool = False,
    keystone_token_expiration: int = 3600,
    keystone_processes: int | None = None,
) -> Iterator[GlanceCluster]:
    """Start one real Glance 33 per region plus the identity shim; stop exactly those processes on exit.

    ``state_dir`` holds one directory per region (config, sqlite db, store, logs). ``users`` switches the
    shim from open mode to the listed users (format: see shim.py's docstring). ``token_ttl`` is the
    initial token lifetime in seconds (shim default: 3600).

    ``keystone=True`` also starts a real Keystone 30 (``state_dir/keystone``) whose catalog lists the regions
    and makes the regions accept its tokens as well (``GlanceCluster.keystone``, see ks_harness.py);
    ``keystone_token_expiration`` is its initial ``[token] expiration`` in seconds.
    """
    if not regions:
        raise ValueError("at least one region is needed")
    if len(set(regions)) != len(regions):
        raise ValueError(f"duplicate region names: {list(regions)}")
    venv = ensure_glance_venv()
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    started: list[tuple[subprocess.Popen[bytes], str]] = []
    open_files: list[Any] = []
    try:
        base_env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "UWSGI_", "PYTHON"))}
        region_objs = [_Region(name, state_dir / name, _free_port()) for name in regions]
        ks_server = None
        authtoken = ""
        trusted_secret = ""
        service_password = ""
        if keystone:
            from . import ks_harness

            for region in region_objs:
                region.internal_port, region.admin_port = _free_port(), _free_port()
            trusted_secret = secrets.token_urlsafe(32)
            service_password = secrets.token_urlsafe(16)
            # Keystone first: its workers import for about 5 s, which overlaps the Glance regions' start-up.
            ks_server = ks_harness.prepare_keystone(
                state_dir / "keystone",
                _free_port(),
                token_expiration=keystone_token_expiration,
                processes=keystone_processes or ks_harness.DEFAULT_KEYSTONE_PROCESSES,
            )
            ks_harness.spawn_keystone(ks_server, base_env, open_files)
            assert ks_server.proc is not None
            started.append((ks_server.proc, "uwsgi keystone"))
            authtoken = ks_harness.authtoken_section(ks_server, service_password)
        for region in region_objs:
            _write_region_config(
                region,
                processes=processes,
                require_format_match=require_format_match,
                keystone_authtoken=authtoken,
                trusted_proxy_secret=trusted_secret,
            )
        template = _db_template(venv)
        for region in region_objs:
            _install_db(template, region)

        base_env["PATH"] = f"{venv / 'bin'}{os.pathsep}{base_env.get('PATH', '')}"
        base_env["VIRTUAL_ENV"] = str(venv)
        for region in region_objs:
            env = {**base_env, "OS_GLANCE_CONFIG_DIR": str(region.root / "etc")}
            out = (region.root / "uwsgi.stdout.log").open("wb")
            open_files.append(out)
            region.proc = _spawn(
                [str(venv / "bin" / "uwsgi"), "--ini", str(region.root / "uwsgi.ini")],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            started.append((region.proc, f"uwsgi {region.name}"))
        keystone_cluster = None
        if ks_server is not None:
            ks_harness.wait_keystone(ks_server)
            # Before any region sees a Keystone token: the service user keystonemiddleware logs in with.
            keystone_cluster = ks_harness.populate_keystone(
                ks_server,
                regions=regions,
                image_endpoints={
                    r.name: {
                        "public": r.url,
                        "internal": f"http://127.0.0.1:{r.internal_port}",
                        "admin": f"http://127.0.0.1:{r.admin_port}",
                    }
                    for r in region_objs
                },
                service_password=service_password,
            )
        _wait_healthy(region_objs)

        shim_cmd = [str(venv / "bin" / "python"), str(HERE / "shim.py"), "--parent-pid", str(os.getpid())]
        for region in region_objs:
            shim_cmd += ["--region", f"{region.name}={region.url}"]
        if token_ttl is not None:
            shim_cmd += ["--token-ttl", str(float(token_ttl))]
        if users is not None:
            users_path = state_dir / "shim-users.json"
            users_path.write_text(json.dumps(users))
            shim_cmd += ["--users", str(users_path)]
        shim_log_path = state_dir / "shim.log"
        shim_log = shim_log_path.open("wb")
        open_files.append(shim_log)
        shim_env = dict(base_env)
        if trusted_secret:
            shim_env["IMGMIG_TRUSTED_PROXY_SECRET"] = trusted_secret
        shim = _spawn(shim_cmd, env=shim_env, stdout=subprocess.PIPE, stderr=shim_log)
        started.append((shim, "identity shim"))
        banner = _read_banner(shim, shim_log_path)
        yield GlanceCluster(
            identity_url=banner["identity_url"],
            regions=dict(banner["regions"]),
            upstreams={r.name: r.url for r in region_objs},
            admin_url=banner["admin_url"],
            state_dir=state_dir,
            process_groups=[proc.pid for proc, _ in started],
            keystone=keystone_cluster,
        )
    finally:
        # Shim first (it fronts the regions), then every uwsgi; each stop is independent so one failure
        # cannot leave the others running.
        errors: list[BaseException] = []
        # Signal everything first, then wait: the uwsgi masters take about a second each to bury workers.
        for proc, _ in reversed(started):
            with contextlib.suppress(Exception):
                _terminate(proc)
        for proc, what in reversed(started):
            try:
                _wait_stopped(proc)
            except Exception as exc:  # keep stopping the rest
                errors.append(RuntimeError(f"{what} (pid {proc.pid}): {exc!r}"))
            if proc.stdout is not None:
                with contextlib.suppress(OSError):
                    proc.stdout.close()
        for fh in open_files:
            with contextlib.suppress(OSError):
                fh.close()
        if errors:
            raise GlanceHarnessError(f"stopping Glance processes failed: {errors!r}")
