"""Per-region state the handlers and middlewares share: the region context, its stats and the request keys."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

from .faults import FaultPlan
from .identity import Identity
from .store import Caller, RegionStore

__all__ = ["CALLER", "CTX", "REQUEST_ID", "RegionContext", "RegionStats", "request_caller"]

#: One order for the requests of every region of the process: which began before which other ended (tests
#: prove that requests overlapped with these numbers, never with a clock).
_ORDER = itertools.count(1)


@dataclass
class RegionStats:
    """What one region served, counted at the server (tests prove their scenario with these)."""

    #: Requests by kind (``faults.OPS``), counted before any fault or check.
    requests: dict[str, int] = field(default_factory=dict)
    uploads_started: int = 0
    uploads_completed: int = 0
    #: Completed uploads per image id (a test maps them to source images through the copies' properties).
    completed_by_image: dict[str, int] = field(default_factory=dict)
    #: Uploads that broke off (client gone, dropped, stalled) before all their bytes arrived.
    uploads_aborted: int = 0
    #: Uploads in progress right now, and the bytes they have received so far (>0: one is mid-transfer).
    uploads_active: int = 0
    active_upload_bytes: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    #: Requests refused with 401 (a missing, unknown, expired or revoked token).
    unauthorized: int = 0
    #: Requests refused with 413 for a quota, by limit name (``quotas.LIMITS``).
    quota_refusals: dict[str, int] = field(default_factory=dict)
    #: When the first upload of each owner (project) began, in seconds since the epoch (the bench's time to
    #: the first byte of a run that writes into a fresh project).
    first_upload_at: dict[str, float] = field(default_factory=dict)

    #: Requests of each kind being handled right now, and the most at once so far.
    in_flight: dict[str, int] = field(default_factory=dict)
    max_in_flight: dict[str, int] = field(default_factory=dict)
    #: Where, in the order of every region's request events (``_ORDER``), the first request of each kind began
    #: and the last one ended (its handler returned).
    first_began: dict[str, int] = field(default_factory=dict)
    last_ended: dict[str, int] = field(default_factory=dict)

    def count(self, op: str) -> None:
        self.requests[op] = self.requests.get(op, 0) + 1

    def began(self, op: str) -> None:
        self.first_began.setdefault(op, next(_ORDER))
        self.in_flight[op] = self.in_flight.get(op, 0) + 1
        self.max_in_flight[op] = max(self.max_in_flight.get(op, 0), self.in_flight[op])

    def ended(self, op: str) -> None:
        self.in_flight[op] -= 1
        self.last_ended[op] = next(_ORDER)

    def refused(self, limit: str) -> None:
        self.quota_refusals[limit] = self.quota_refusals.get(limit, 0) + 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RegionContext:
    """What the handlers of one region need: its name, store, faults and the shared identity."""

    name: str
    store: RegionStore
    faults: FaultPlan
    identity: Identity
    stats: RegionStats = field(default_factory=RegionStats)


CTX: web.AppKey[RegionContext] = web.AppKey("region", RegionContext)
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
CALLER: web.RequestKey[Caller] = web.RequestKey("caller", Caller)


def request_caller(request: web.Request) -> Caller:
    return request[CALLER]
