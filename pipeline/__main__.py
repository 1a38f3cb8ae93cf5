"""``python -m pipeline``: the imgmig command line."""

from __future__ import annotations

from pipeline.cli import entry

entry()
