"""Fault knobs for one emulated region: latency, bandwidth, dropped/stalled/corrupted streams, error bursts.

A ``FaultPlan`` is plain data that tests mutate directly (in-process) or through the admin endpoint
(``POST /_admin/faults/{region}`` with the JSON form of ``FaultPlan.update``). One-shot byte faults are
consumed by the first stream that reaches them, so "drop the download at 30% and again at 70%" is two
entries, and a resumed download does not hit the first one again.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeVar

import anyio

__all__ = ["OPS", "BodyFault", "ByteFault", "FaultPlan", "LostAnswer", "StatusFault"]

#: Request kinds a status fault can target.
OPS = frozenset({"any", "list", "get", "create", "patch", "delete", "upload", "download", "tags", "members", "schemas",
                 "deactivate", "reactivate"})  # fmt: skip


_BYTE_FAULTS = (
    "drop_download", "stall_download", "corrupt_download", "drop_upload", "stall_upload", "corrupt_upload",
)  # fmt: skip


@dataclass(slots=True)
class ByteFault:
    """Act once when a stream reaches byte ``at`` (absolute offset in the image), optionally per image."""

    at: int
    image_id: str | None = None

    def matches(self, image_id: str) -> bool:
        return self.image_id is None or self.image_id == image_id


@dataclass(slots=True)
class StatusFault:
    """Answer matching requests with ``status`` (and Retry-After), for the next ``count`` or a ``rate``."""

    status: int
    op: str = "any"
    count: int | None = 1
    rate: float = 0.0
    retry_after: float | None = None
    image_id: str | None = None
    #: Let this many matching requests through before the rule starts to fire (e.g. hit only a resume).
    skip: int = 0

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"unknown op {self.op!r}; one of {sorted(OPS)}")
        if not 400 <= self.status <= 599:
            raise ValueError(f"status {self.status} is not an error status")


@dataclass(slots=True)
class BodyFault:
    """Answer matching requests with this raw body instead of the real one (malformed JSON, wrong types,
    HTML, huge bodies): for testing how clients cope with a misbehaving server."""

    body: str
    op: str = "any"
    status: int = 200
    content_type: str = "application/json"
    count: int | None = 1
    #: With ``count=None``: the fraction of matching requests that get this body (default: all of them).
    rate: float = 1.0
    image_id: str | None = None
    repeat: int = 1  # the body is repeated this many times (huge bodies without huge requests)
    #: Let this many matching requests through before the rule starts to fire.
    skip: int = 0

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"unknown op {self.op!r}; one of {sorted(OPS)}")


@dataclass(slots=True)
class LostAnswer:
    """Let a matching request take effect, then drop the connection before its answer goes out: what a
    load balancer or a reset does to a client. ``first_per_image`` loses only the first successful
    request of this kind for each image (for a create: for each image name), so a client that re-checks
    before it re-sends converges; ``count`` bounds how many answers are lost in all (None: no bound)."""

    op: str = "any"
    count: int | None = 1
    image_id: str | None = None
    first_per_image: bool = False
    #: Only requests that change something (not GET).
    writes_only: bool = False
    seen: set[str] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"unknown op {self.op!r}; one of {sorted(OPS)}")

    def take(self, op: str, key: str | None, method: str = "POST") -> bool:
        """Whether the answer to this successful request (``key``: its image) is to be lost."""
        if self.op not in ("any", op) or (self.image_id and self.image_id != key):
            return False
        if (self.count is not None and self.count <= 0) or (self.writes_only and method == "GET"):
            return False
        if self.first_per_image:
            mark = f"{op}:{method}:{key}"
            if key is None or mark in self.seen:
                return False
            self.seen.add(mark)
        if self.count is not None:
            self.count -= 1
        return True


_Rule = TypeVar("_Rule", StatusFault, BodyFault)


@dataclass(slots=True)
class FaultPlan:
    """Every knob of one region; all default to 'no fault'."""

    latency: float = 0.0
    #: Bytes per second per connection, both directions (models a WAN link); None = unlimited.
    bandwidth: float | None = None
    drop_download: list[ByteFault] = field(default_factory=list)
    stall_download: list[ByteFault] = field(default_factory=list)
    corrupt_download: list[ByteFault] = field(default_factory=list)
    drop_upload: list[ByteFault] = field(default_factory=list)
    stall_upload: list[ByteFault] = field(default_factory=list)
    #: Flip the stored byte at this offset of the next matching upload: the target then reports a
    #: checksum that differs from what the client sent.
    corrupt_upload: list[ByteFault] = field(default_factory=list)
    statuses: list[StatusFault] = field(default_factory=list)
    bodies: list[BodyFault] = field(default_factory=list)
    #: Ignore Range headers (answer 200 with the whole image), like a server without Range support.
    ignore_range: bool = False
    #: Hash uploads but keep no bytes (a sink for benchmarks); such images cannot be downloaded.
    discard_uploads: bool = False
    #: Requests that take effect but whose answer is lost (the connection drops instead).
    lose_response: list[LostAnswer] = field(default_factory=list)
    #: Refuse a client-chosen ``id`` on create (403, like a read-only attribute), as a cloud might.
    refuse_client_ids: bool = False
    #: Ignore unknown (property) filters when listing, as a server without property filters would.
    ignore_property_filters: bool = False
    #: In-process tests only: requests of a kind wait for this event before anything else happens to them.
    holds: dict[str, anyio.Event] = field(default_factory=dict, repr=False, compare=False)
    #: In-process tests only: set when a request of a kind arrives (before its hold, if it has one).
    arrivals: dict[str, anyio.Event] = field(default_factory=dict, repr=False, compare=False)
    seed: int | None = None
    rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)
    #: How many faults fired, by kind; tests and the soak report read it.
    fired: dict[str, int] = field(default_factory=dict, compare=False)

    def record(self, kind: str) -> None:
        self.fired[kind] = self.fired.get(kind, 0) + 1

    def take_status(self, op: str, image_id: str | None) -> StatusFault | None:
        """The status fault this request gets, consuming one of a rule's ``count`` (None if none)."""
        rule = self._take(self.statuses, op, image_id)
        if rule is not None:
            self.record(f"status_{rule.status}")
        return rule

    def take_body(self, op: str, image_id: str | None) -> BodyFault | None:
        """The body fault this request gets, consuming one of its ``count`` (None if none)."""
        rule = self._take(self.bodies, op, image_id)
        if rule is not None:
            self.record("body")
        return rule

    def _take(self, rules: list[_Rule], op: str, image_id: str | None) -> _Rule | None:
        """The first rule for this request kind and image that still fires: by count, else by rate."""
        for rule in rules:
            if rule.op not in ("any", op) or (rule.image_id and rule.image_id != image_id):
                continue
            if rule.skip > 0:
                rule.skip -= 1
                continue
            if rule.count is not None:
                if rule.count <= 0:
                    continue
                rule.count -= 1
                return rule
            if rule.rate > 0 and self.rng.random() < rule.rate:
                return rule
        return None

    def take_lost(self, op: str, key: str | None, method: str) -> bool:
        """Whether the answer to this successful request is to be lost (consumes the rule that fires)."""
        for rule in self.lose_response:
            if rule.take(op, key, method):
                self.record("lose_response")
                self.record(f"lose_response_{op}")
                return True
        return False

    @staticmethod
    def take_byte(faults: list[ByteFault], image_id: str, start: int, end: int) -> int | None:
        """Consume the first fault of ``faults`` for ``image_id`` with start <= at < end; its offset."""
        best: ByteFault | None = None
        for f in faults:
            if f.matches(image_id) and start <= f.at < end and (best is None or f.at < best.at):
                best = f
        if best is None:
            return None
        faults.remove(best)
        return best.at

    def corrupted(self, faults: list[ByteFault], kind: str, image_id: str, data: bytes, start: int) -> bytes:
        """``data`` (the image's bytes from ``start``) with one byte flipped if one of ``faults`` falls in it
        (consumed and counted as ``kind``); else ``data`` itself."""
        at = self.take_byte(faults, image_id, start, start + len(data))
        if at is None:
            return data
        self.record(kind)
        flipped = bytearray(data)
        flipped[at - start] ^= 0xFF
        return bytes(flipped)

    def update(self, doc: dict[str, Any]) -> None:
        """Apply a JSON document of knobs (unknown keys raise ValueError)."""
        for key, value in doc.items():
            if key in ("latency",):
                self.latency = float(value)
            elif key == "bandwidth":
                self.bandwidth = None if value in (None, 0) else float(value)
            elif key in _BYTE_FAULTS:
                faults = [ByteFault(**v) if isinstance(v, dict) else ByteFault(int(v)) for v in value]
                setattr(self, key, faults)
            elif key == "statuses":
                self.statuses = [StatusFault(**v) for v in value]
            elif key == "bodies":
                self.bodies = [BodyFault(**v) for v in value]
            elif key == "lose_response":
                self.lose_response = [LostAnswer(**v) for v in value]
            elif key in ("ignore_range", "discard_uploads", "refuse_client_ids", "ignore_property_filters"):
                setattr(self, key, bool(value))
            elif key == "seed":
                self.seed = None if value is None else int(value)
                self.rng.seed(self.seed)
            else:
                raise ValueError(f"unknown fault knob {key!r}")

    def to_json(self) -> dict[str, Any]:
        """The knobs as JSON (without the RNG and the in-process events)."""
        doc = asdict(replace(self, rng=random.Random(), holds={}, arrivals={}))
        for key in ("rng", "holds", "arrivals"):
            doc.pop(key, None)
        for rule in doc["lose_response"]:
            rule["seen"] = sorted(rule["seen"])
        return doc

    def reset(self) -> None:
        """Back to no faults (keeps the fired counters)."""
        fired = self.fired
        self.__init__()  # type: ignore[misc]
        self.fired = fired
