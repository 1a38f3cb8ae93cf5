"""GET /v2/images: Glance's filters, sorting and marker pagination, as pure functions of the store.

Behaviour follows glance-behaviour.md: every filter is ANDed; unknown keys are exact-match property
filters; the default view is the caller's own images, public images and shared images it has accepted;
a page that is full carries ``next``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

from .fields import GlanceError
from .store import Caller, ImageRecord, RegionStore

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "SORT_KEYS", "list_images"]

DEFAULT_LIMIT = 25
MAX_LIMIT = 1000
SORT_KEYS = ("name", "status", "container_format", "disk_format", "size", "id", "created_at", "updated_at")
_RESERVED_PARAMS = frozenset(
    {"limit", "marker", "sort_key", "sort_dir", "sort", "visibility", "member_status", "name", "owner",
     "status", "size_min", "size_max", "tag", "disk_format", "container_format", "protected", "id",
     "created_at", "updated_at", "os_hidden"}
)  # fmt: skip
_TIME_OPS: dict[str, Callable[[datetime, datetime], bool]] = {
    "gt": lambda a, b: a > b, "gte": lambda a, b: a >= b, "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b, "eq": lambda a, b: a == b, "neq": lambda a, b: a != b,
}  # fmt: skip


def _one(query: Any, key: str) -> str | None:
    values = query.getall(key, [])
    return values[-1] if values else None


def _int_param(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise GlanceError(400, detail=f"{what} param must be an integer") from None


def _in_values(value: str) -> list[str]:
    return value[3:].split(",") if value.startswith("in:") else [value]


def _visible_for(store: RegionStore, caller: Caller, query: Any) -> Iterable[ImageRecord]:
    visibility = _one(query, "visibility")
    if visibility not in (None, "public", "private", "shared", "community", "all"):
        raise GlanceError(400, detail=f"Invalid visibility value: {visibility}")
    member_status = _one(query, "member_status") or "accepted"
    if member_status not in ("pending", "accepted", "rejected", "all"):
        raise GlanceError(400, detail=f"Invalid status value: {member_status}")
    me = caller.tenant_id
    for rec in store.images.values():
        own = rec.owner == me
        member = rec.members.get(me)
        as_member = (
            rec.visibility == "shared"
            and member is not None
            and not own
            and (member_status == "all" or member.status == member_status)
        )
        if visibility is None:
            ok = own or rec.visibility == "public" or as_member
        elif visibility == "all":
            ok = own or rec.visibility in ("public", "community") or as_member
        elif visibility == "shared":
            ok = rec.visibility == "shared" and (own or as_member)
        elif visibility == "private":
            ok = own and rec.visibility == "private"
        else:  # public, community
            ok = rec.visibility == visibility
        if ok:
            yield rec


def _matches(rec: ImageRecord, query: Any) -> bool:
    name = _one(query, "name")
    if name is not None and rec.name not in _in_values(name):
        return False
    for key in ("owner", "status", "disk_format", "container_format"):
        value = _one(query, key)
        if value is not None and getattr(rec, key) not in _in_values(value):
            return False
    ids = _one(query, "id")
    if ids is not None and rec.id not in _in_values(ids):
        return False
    protected = _one(query, "protected")
    if protected is not None and str(rec.protected).lower() != protected.lower():
        return False
    hidden = (_one(query, "os_hidden") or "false").lower() == "true"
    if rec.os_hidden != hidden:
        return False
    for bound, cmp in (("size_min", lambda s, v: s >= v), ("size_max", lambda s, v: s <= v)):
        value = _one(query, bound)
        if value is not None:
            try:
                limit = int(value)
            except ValueError:
                raise GlanceError(400, detail="Unable to filter on a range with a non-numeric value.") from None
            if rec.size is None or not cmp(rec.size, limit):
                return False
    if any(tag not in rec.tags for tag in query.getall("tag", [])):
        return False
    for key in ("created_at", "updated_at"):
        value = _one(query, key)
        if value is not None and not _time_match(getattr(rec, key), value, key):
            return False
    for key, value in query.items():
        if key not in _RESERVED_PARAMS and rec.properties.get(key) != value:
            return False
    return True


def _validate_filters(query: Any) -> None:
    """Reject malformed filter values even when no image would be compared against them."""
    for bound in ("size_min", "size_max"):
        value = _one(query, bound)
        if value is not None and not value.lstrip("-").isdigit():
            raise GlanceError(400, detail="Unable to filter on a range with a non-numeric value.")
    for key in ("created_at", "updated_at"):
        value = _one(query, key)
        if value is not None:
            _time_match("2000-01-01T00:00:00Z", value, key)


def _time_match(actual: str, expr: str, key: str) -> bool:
    op, _, value = expr.partition(":") if ":" in expr.split("T")[0] else ("eq", "", expr)
    if op not in _TIME_OPS:
        op, value = "eq", expr
    try:
        wanted, have = _utc(value), _utc(actual)
    except ValueError:
        raise GlanceError(400, detail=f'Bad "{key}" query filter format. Use ISO 8601 DateTime notation.') from None
    return _TIME_OPS[op](have, wanted)


def _utc(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _sort_spec(query: Any) -> list[tuple[str, str]]:
    keys, dirs, new = query.getall("sort_key", []), query.getall("sort_dir", []), query.getall("sort", [])
    if new and (keys or dirs):
        raise GlanceError(400, detail="Old and new sorting syntax cannot be combined")
    spec: list[tuple[str, str]] = []
    if new:
        for part in ",".join(new).split(","):
            key, _, direction = part.partition(":")
            spec.append((key.strip(), direction.strip() or "desc"))
    else:
        for i, key in enumerate(keys or ["created_at"]):
            spec.append((key, dirs[i] if i < len(dirs) else (dirs[-1] if dirs else "desc")))
    for key, direction in spec:
        if key not in SORT_KEYS:
            raise GlanceError(400, detail=f"Invalid sort key: {key}. It must be one of the following: "
                                          f"{', '.join(SORT_KEYS)}.")  # fmt: skip
        if direction not in ("asc", "desc"):
            raise GlanceError(400, detail=f"Invalid sort direction: {direction}")
    if not any(k == "id" for k, _ in spec):
        spec.append(("id", spec[-1][1]))
    return spec


def _sorted(records: list[ImageRecord], spec: Sequence[tuple[str, str]]) -> list[ImageRecord]:
    # stable sorts from the last key to the first; None sorts lowest (nulls last when descending)
    out = sorted(records, key=lambda r: r.seq)
    for key, direction in reversed(spec):
        def value(r: ImageRecord, key: str = key) -> tuple[int, Any]:
            v = getattr(r, key)
            if key == "created_at":
                return (1, (v, r.seq))
            return (0, 0) if v is None else (1, v)

        out.sort(key=value, reverse=direction == "desc")
    return out


def list_images(store: RegionStore, caller: Caller, query: Any) -> tuple[list[ImageRecord], str | None]:
    """One page of images and the marker for the next page (None when this page is not full)."""
    raw_limit = _one(query, "limit")
    limit = DEFAULT_LIMIT if raw_limit is None else _int_param(raw_limit, "limit")
    if limit < 0:
        raise GlanceError(400, detail="limit param must be positive")
    limit = min(limit, MAX_LIMIT)
    spec = _sort_spec(query)
    _validate_filters(query)
    records = _sorted([r for r in _visible_for(store, caller, query) if _matches(r, query)], spec)
    marker = _one(query, "marker")
    if marker is not None:
        ids = [r.id for r in records]
        if marker not in ids:
            visible = store.images.get(marker)
            if visible is None or not store.can_see(visible, caller):
                raise GlanceError(400, detail=f"No image found with ID {marker}")
            # the marker exists but is filtered out: continue after its position in the full order
            records = _sorted([*records, visible], spec)
            ids = [r.id for r in records]
        records = records[ids.index(marker) + 1 :]
    page = records[:limit]
    next_marker = page[-1].id if page and len(page) == limit else None
    return page, next_marker
