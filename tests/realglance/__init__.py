"""Owns the real-Glance test backend: Glance 33 regions on loopback behind an NHN-style identity shim."""

from __future__ import annotations

from .harness import (
    GLANCE_REQUIREMENTS,
    GlanceCluster,
    GlanceHarnessError,
    ensure_glance_venv,
    glance_venv_path,
    running_glance,
)

__all__ = [
    "GLANCE_REQUIREMENTS",
    "GlanceCluster",
    "GlanceHarnessError",
    "ensure_glance_venv",
    "glance_venv_path",
    "running_glance",
]
