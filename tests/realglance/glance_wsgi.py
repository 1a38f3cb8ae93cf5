"""Owns the WSGI entry point uwsgi loads for one real Glance 33 region (``glance_wsgi:application``).

It adds two things in front of Glance's own ``glance.wsgi.api:application``; no Glance API logic is
changed:

* the sqlite ``BEGIN IMMEDIATE`` fix (``sqlite_immediate.py``: concurrent uploads from several uwsgi
  workers on one sqlite file otherwise fail with 500 "database is locked");
* ``dual_auth_filter_factory``, the paste filter of the ``dual-auth`` flavor, used when the harness runs a
  real Keystone next to the regions. A request carrying the identity shim's per-run secret in
  ``X-Imgmig-Trusted-Proxy`` goes on to Glance's context middleware as in the ``trusted-auth`` flavor (the
  shim has validated its own token and set the identity headers). Every other request first goes through
  keystonemiddleware's ``auth_token`` (configured by ``[keystone_authtoken]`` in glance-api.conf), exactly
  as in Glance's ``keystone`` flavor, so a Keystone token is validated against the real Keystone and a
  bad one ends in Glance's 401.

This module runs inside the Glance venv under uwsgi, not in the project's venv; keep it dependency-free.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable
from typing import Any

import sqlite_immediate  # noqa: F401  (installs the sqlite fix before Glance creates its engine)

TRUSTED_PROXY_ENVIRON_KEY = "HTTP_X_IMGMIG_TRUSTED_PROXY"

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class DualAuth:
    """Route shim requests (secret marker present and correct) around auth_token; everything else through."""

    def __init__(self, trusted: WsgiApp, keystone: WsgiApp, secret: str) -> None:
        self.trusted = trusted
        self.keystone = keystone
        self.secret = secret.encode()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        # Always removed, so Glance and auth_token never see it.
        marker = environ.pop(TRUSTED_PROXY_ENVIRON_KEY, None)
        if marker is not None and hmac.compare_digest(marker.encode("latin-1"), self.secret):
            return self.trusted(environ, start_response)
        return self.keystone(environ, start_response)


def dual_auth_filter_factory(global_conf: dict[str, Any], **local_conf: str) -> Callable[[WsgiApp], WsgiApp]:
    """Paste filter factory: ``trusted_proxy_secret`` plus any keystonemiddleware auth_token options."""
    secret = local_conf.pop("trusted_proxy_secret", "")
    if len(secret) < 16:
        raise ValueError("dual-auth needs a trusted_proxy_secret of at least 16 characters")
    from keystonemiddleware import auth_token

    make_auth_token = auth_token.filter_factory(global_conf, **local_conf)

    def _filter(app: WsgiApp) -> WsgiApp:
        return DualAuth(app, make_auth_token(app), secret)

    return _filter


from glance.wsgi.api import application  # noqa: E402  (the sqlite listeners must exist before Glance's engine)

__all__ = ["application", "dual_auth_filter_factory"]
