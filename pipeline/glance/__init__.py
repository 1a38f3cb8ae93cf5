"""The Image API v2 client layer: transport, identity and the typed client."""

from __future__ import annotations

from .auth import DEFAULT_IDENTITY_URL, Auth, PasswordAuth, Secret, StaticTokenAuth, Token
from .client import Download, ImageClient
from .transport import TransportConfig, new_session

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
