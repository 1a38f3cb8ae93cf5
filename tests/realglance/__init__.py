"""Owns the real-Glance test backend: Glance 33 regions on loopback behind an NHN-style identity shim, and
optionally a real Keystone 30 serving the same regions."""

from __future__ import annotations

from .harness import (
    GLANCE_REQUIREMENTS,
    GlanceCluster,
    GlanceHarnessError,
    ensure_glance_venv,
    glance_venv_path,
    running_glance,
)
from .ks_harness import (
    KEYSTONE_REQUIREMENTS,
    ApplicationCredential,
    KeystoneCluster,
    KeystoneProject,
    KeystoneUser,
    ensure_keystone_venv,
    keystone_venv_path,
)

__all__ = [
    "GLANCE_REQUIREMENTS",
    "KEYSTONE_REQUIREMENTS",
    "ApplicationCredential",
    "GlanceCluster",
    "GlanceHarnessError",
    "KeystoneCluster",
    "KeystoneProject",
    "KeystoneUser",
    "ensure_glance_venv",
    "ensure_keystone_venv",
    "glance_venv_path",
    "keystone_venv_path",
    "running_glance",
]
