"""Owns the WSGI entry point uwsgi loads for the real Keystone 30 (``keystone_wsgi:application``).

It wraps Keystone's own ``keystone.wsgi.api:application`` without changing any Keystone logic:

* the sqlite ``BEGIN IMMEDIATE`` fix (``sqlite_immediate.py``), as for Glance;
* a runtime token lifetime: before each request every worker checks ``$IMGMIG_KEYSTONE_DIR/token-expiration``
  (written atomically by the harness) and, when it changed, overrides ``[token] expiration`` with the
  number of seconds it holds. Keystone reads that option when it issues a token, so tokens issued from then
  on get the new lifetime; tokens already issued keep theirs (the expiry is inside the fernet token);
* a count of issued tokens: every 201 answer to ``POST /v3/auth/tokens`` appends one line to
  ``$IMGMIG_KEYSTONE_DIR/tokens-issued.log`` (O_APPEND, so the workers' lines never interleave).

This module runs inside the Keystone venv under uwsgi, not in the project's venv.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import sqlite_immediate  # noqa: F401  (installs the sqlite fix before Keystone creates its engine)

_STATE_DIR = os.environ["IMGMIG_KEYSTONE_DIR"]
_EXPIRATION_FILE = os.path.join(_STATE_DIR, "token-expiration")
_ISSUED_LOG = os.path.join(_STATE_DIR, "tokens-issued.log")
_lock = threading.Lock()
_seen: tuple[int, int] | None = None


def _apply_expiration() -> None:
    global _seen
    try:
        st = os.stat(_EXPIRATION_FILE)
    except FileNotFoundError:
        return
    stamp = (st.st_mtime_ns, st.st_ino)
    if stamp == _seen:
        return
    with _lock:
        if stamp == _seen:
            return
        with open(_EXPIRATION_FILE, encoding="ascii") as fh:
            seconds = int(fh.read().strip())
        CONF.set_override("expiration", seconds, group="token")
        _seen = stamp


def _record_issued(status: str) -> None:
    if status.startswith("201"):
        fd = os.open(_ISSUED_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{time.time():.3f} {os.getpid()}\n".encode())
        finally:
            os.close(fd)


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    _apply_expiration()
    path = environ.get("PATH_INFO", "").rstrip("/")
    if environ.get("REQUEST_METHOD") != "POST" or path != "/v3/auth/tokens":
        return _keystone(environ, start_response)

    def counting_start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        _record_issued(status)
        return start_response(status, headers, exc_info)

    return _keystone(environ, counting_start_response)


from keystone.conf import CONF  # noqa: E402  (after the sqlite listeners)
from keystone.wsgi.api import application as _keystone  # noqa: E402

__all__ = ["application"]
