"""The embedded multi-region emulator of NHN Cloud identity + Image API v2 (Glance 33 behaviour)."""

from __future__ import annotations

from .faults import BodyFault, ByteFault, FaultPlan, LostAnswer, StatusFault
from .serve import DEFAULT_REGIONS, Emulator, running_emulator

__all__ = [
    "DEFAULT_REGIONS",
    "BodyFault",
    "ByteFault",
    "Emulator",
    "FaultPlan",
    "LostAnswer",
    "StatusFault",
    "running_emulator",
]
