"""The job file: its values, the models that are the spec, and loading one (problems reported all at once).

Owns ``jobs/*.toml`` -> ``JobSpec``. May import only ``pipeline.errors`` and ``pipeline.units`` (and pydantic): no
network, no journal; ``plan`` and every layer above read the spec from here.
"""

from pipeline.config.load import load_job, override, parse_job
from pipeline.config.models import (
    AuthProfile,
    CopyOptions,
    Endpoint,
    JobSpec,
    PruneOptions,
    RunOptions,
    Select,
    Source,
    Target,
    TransferOptions,
)
from pipeline.config.shard import INDEX_VARIABLE, Shard, shard_from_args
from pipeline.config.values import DEFAULT_IDENTITY_URL, DEFAULT_JOURNAL_ROOT, Secret

__all__ = [
    "DEFAULT_IDENTITY_URL",
    "DEFAULT_JOURNAL_ROOT",
    "INDEX_VARIABLE",
    "AuthProfile",
    "CopyOptions",
    "Endpoint",
    "JobSpec",
    "PruneOptions",
    "RunOptions",
    "Secret",
    "Select",
    "Shard",
    "Source",
    "Target",
    "TransferOptions",
    "load_job",
    "override",
    "parse_job",
    "shard_from_args",
]
