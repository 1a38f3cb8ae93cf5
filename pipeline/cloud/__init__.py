"""The Image API v2 client layer: transport, identity and the typed client."""

from __future__ import annotations

from pipeline.cloud.auth import Auth, PasswordAuth, StaticTokenAuth, Token
from pipeline.cloud.client import Download, ImageClient
from pipeline.cloud.transport import TransportConfig, new_session
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
