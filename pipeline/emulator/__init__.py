"""The embedded multi-region emulator of NHN Cloud identity + Image API v2 (Glance 33 behaviour, NHN's rules).

A server, not a client: it imports only its own modules (and aiohttp's server side), never anything from the
client side of ``pipeline`` (contract "emulator-apart"), so real clients can be tested against it.
"""

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
