"""Talking to the cloud: the one aiohttp-client transport, identity (NHN's v2.0 tokens, Keystone v3,
clouds.yaml), retries, and the typed Image API v2 client with its wire details.

May import ``config`` (secrets, defaults) and the shared ``errors``, ``models``; nothing above it, and never
``plan``, ``report`` or ``state`` (contract "layers").
"""

from __future__ import annotations

from pipeline.cloud.auth import Auth, PasswordAuth, StaticTokenAuth, Token
from pipeline.cloud.client import ImageClient
from pipeline.cloud.transport import TransportConfig, new_session
from pipeline.cloud.wire import Download
from pipeline.config.values import DEFAULT_IDENTITY_URL, Secret

__all__ = [
    "DEFAULT_IDENTITY_URL",
    "Auth",
    "Download",
    "ImageClient",
    "PasswordAuth",
    "Secret",
    "StaticTokenAuth",
    "Token",
    "TransportConfig",
    "new_session",
]
