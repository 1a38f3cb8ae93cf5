"""imgmig: asynchronous bulk image migration for NHN Cloud Image API v2 (OpenStack Glance v2)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
