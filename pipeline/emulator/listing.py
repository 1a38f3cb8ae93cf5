"""GET /v2/images: Glance's filters, sorting and marker pagination, as pure functions of the store.

Behaviour follows Glance 33's images controller and sqlalchemy API (see glance-behaviour.md): limit,
marker, member_status and sort are taken from their FIRST occurrence in the query (webob's
``MultiDict.pop``), every other filter from its LAST; filters are ANDed; name, id, status, disk_format and
container_format take ``in:a,b`` (and ``eq:``); other image columns match exactly; unknown keys are
exact-match property filters; a page that is full carries ``next``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from .fields import GlanceError
from .store import Caller, ImageRecord, RegionStore

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "SORT_KEYS", "list_images", "page_links"]

#: NHN's current guide, List Images: "limit ... Default is 100, up to max 1000" (Glance 33 defaults to 25).
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
SORT_KEYS = ("name", "status", "container_format", "disk_format", "size", "id", "created_at", "updated_at")
_POPPED = ("limit", "marker", "member_status", "tag", "sort", "sort_key", "sort_dir")
#: Parameters the controller pops once (the others are popped in a loop, every occurrence).
_POPPED_ONCE = ("limit", "marker", "member_status", "sort")
#: Filters that take an operator: eq (default) or in.
_OP_COLUMNS = ("name", "id", "status", "container_format", "disk_format")
#: Other columns of Glance's images table, matched exactly ("hasattr(models.Image, k)").
_COLUMNS = ("size", "virtual_size", "visibility", "checksum", "os_hash_algo", "os_hash_value", "min_disk",
            "min_ram", "owner", "protected", "os_hidden")  # fmt: skip
_INT_COLUMNS = ("size", "virtual_size", "min_disk", "min_ram")
_TIME_OPS: dict[str, Callable[[datetime, datetime], bool]] = {
    "gt": lambda a, b: a > b, "gte": lambda a, b: a >= b, "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b, "eq": lambda a, b: a == b, "neq": lambda a, b: a != b,
}  # fmt: skip
#: Listing walks whose order a region keeps at once (the oldest is dropped first).
_WALKS = 8
_QUOTED = re.compile(r'"([^"\\]*(?:\\.[^"\\]*)*)",?|([^,]+),?|,')


def _first(query: Any, key: str) -> str | None:
    values = query.getall(key, [])
    return values[0] if values else None


def _last(query: Any, key: str) -> str | None:
    values = query.getall(key, [])
    return values[-1] if values else None


def _utc(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _split_op(expr: str) -> tuple[str, str]:
    """Glance's split_filter_op: ``op:value``, except that a bare ISO 8601 datetime is ``eq``."""
    left, sep, right = expr.partition(":")
    if not sep:
        return "eq", expr
    try:
        _utc(expr)
    except ValueError:
        return left, right
    return "eq", expr


def _in_values(value: str) -> list[str]:
    """Glance's split_filter_value_for_quotes: comma-separated, with "double-quoted" items."""
    return [quoted or plain for quoted, plain in _QUOTED.findall(value)]


# === filters: parsed once, up front, so bad values fail even when no image is compared


def _filters(query: Any, *, ignore_properties: bool = False) -> list[Callable[[ImageRecord], bool]]:
    """One predicate per filter in the query, or Glance's 400 for a malformed one. With
    ``ignore_properties`` unknown keys are ignored instead (a server without property filters)."""
    if "changes-since" in query:
        raise GlanceError(400, 'The "changes-since" filter is no longer available on v2.')
    preds: list[Callable[[ImageRecord], bool]] = []
    hidden = (_last(query, "os_hidden") or "false").lower()
    if hidden not in ("true", "false"):
        raise GlanceError(400, f"Invalid value '{hidden}' for 'os_hidden' filter. Valid values are 'true' or "
                               "'false'.")  # fmt: skip
    preds.append(lambda r: r.os_hidden == (hidden == "true"))
    protected = _last(query, "protected")
    if protected is not None:
        if protected not in ("true", "false"):
            raise GlanceError(400, f"Invalid value '{protected}' for 'protected' filter. Valid values are "
                                   "'true' or 'false'.")  # fmt: skip
        preds.append(lambda r: r.protected == (protected == "true"))
    tags = [t.strip() for t in query.getall("tag", [])]
    if tags:
        preds.append(lambda r: all(t in r.tags for t in tags))
    for key in dict.fromkeys(query.keys()):
        values = query.getall(key)
        if key in _POPPED:
            # webob's pop takes only the first occurrence; a repeat stays behind and becomes an
            # exact-match property filter, which matches nothing
            repeats = values[1:] if key in _POPPED_ONCE else []
            if repeats:
                preds.append(_property_filter(key, repeats[-1]))
            continue
        if key in ("visibility", "os_hidden", "protected") or (ignore_properties and _is_property(key)):
            continue
        preds.append(_filter(key, values[-1]))
    return preds


def _is_property(key: str) -> bool:
    """Whether ``key`` filters on a custom property (no column, range or time filter has that name)."""
    return not key.endswith(("_min", "_max")) and key not in ("created_at", "updated_at", *_OP_COLUMNS, *_COLUMNS)


def _filter(key: str, value: str) -> Callable[[ImageRecord], bool]:
    if key.endswith(("_min", "_max")):
        column = key[:-4]
        if column not in _INT_COLUMNS:
            raise GlanceError(500)  # Glance 33 looks the column up on its model and crashes
        try:
            bound = int(value)
        except ValueError:
            raise GlanceError(400, "Unable to filter on a range with a non-numeric value.") from None
        if key.endswith("_min"):
            return lambda r: (v := getattr(r, column)) is not None and v >= bound
        return lambda r: (v := getattr(r, column)) is not None and v <= bound
    if key in ("created_at", "updated_at"):
        op, stamp = _split_op(value)
        try:
            threshold = _utc(stamp)
        except ValueError:
            message = f'Bad "{key}" query filter format. Use ISO 8601 DateTime notation.'
            raise GlanceError(400, message) from None
        if op not in _TIME_OPS:
            raise GlanceError(400, "Unable to filter on a unknown operator.")
        compare = _TIME_OPS[op]
        return lambda r: compare(_utc(getattr(r, key)), threshold)
    if key in _OP_COLUMNS:
        op, operand = _split_op(value)
        if op == "in":
            wanted = _in_values(operand)
            return lambda r: getattr(r, key) in wanted
        if op != "eq":
            raise GlanceError(400, f"Unable to filter by unknown operator '{op}'.")
        return lambda r: getattr(r, key) == operand
    if key in _COLUMNS:
        return lambda r: _column_text(getattr(r, key)) == value
    return _property_filter(key, value)


def _property_filter(key: str, value: str) -> Callable[[ImageRecord], bool]:
    return lambda r: r.properties.get(key) == value


def _column_text(value: Any) -> str | None:
    """How a column compares with a query string in the database (booleans as 0/1, like sqlite)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return str(int(value))
    return str(value)


def _visible_for(store: RegionStore, caller: Caller, query: Any) -> Iterable[ImageRecord]:
    visibility = _last(query, "visibility")
    if visibility and visibility not in ("public", "private", "shared", "community", "all"):
        raise GlanceError(400, f"Invalid visibility value: {visibility}")
    member_status = _first(query, "member_status") or "accepted"
    if member_status not in ("pending", "accepted", "rejected", "all"):
        raise GlanceError(400, f"Invalid status: {member_status}")
    me = caller.tenant_id
    for rec in store.images.values():
        own = rec.owner == me
        member = rec.members.get(me)
        as_member = (
            rec.visibility == "shared"
            and member is not None
            and (member_status == "all" or member.status == member_status)
        )
        ok = own or rec.visibility in ("public", "community") or as_member
        if not visibility:
            # without a visibility filter, community images show only to their owner
            ok = ok and (own or rec.visibility != "community")
        elif visibility != "all":
            ok = ok and rec.visibility == visibility
        if ok:
            yield rec


# === sorting


def _sort_spec(query: Any) -> list[tuple[str, str]]:
    def key_of(name: str) -> str:
        if name not in SORT_KEYS:
            raise GlanceError(400, f"Invalid sort key: {name}. It must be one of the following: "
                                   f"{', '.join(SORT_KEYS)}.")  # fmt: skip
        return name

    def dir_of(name: str) -> str:
        if name not in ("asc", "desc"):
            raise GlanceError(400, f"Invalid sort direction: {name}")
        return name

    keys, dirs = [], []
    new = _first(query, "sort")
    if new is not None:
        if "sort_key" in query or "sort_dir" in query:
            raise GlanceError(400, "Old and new sorting syntax cannot be combined")
        for part in new.strip().split(","):
            key, _, direction = part.partition(":")
            keys.append(key_of(key.strip()))
            dirs.append(dir_of(direction.strip() or "desc"))
    else:
        keys = [key_of(k.strip()) for k in query.getall("sort_key", [])]
        dirs = [dir_of(d.strip()) for d in query.getall("sort_dir", [])]
        if len(dirs) > 1 and len(dirs) != len(keys):
            raise GlanceError(400, "Number of sort dirs does not match the number of sort keys")
    keys = keys or ["created_at"]
    default = dirs[0] if len(dirs) == 1 else "desc"
    if len(dirs) <= 1:
        dirs = [default] * len(keys)
    spec = list(zip(keys, dirs, strict=True))
    # the database appends created_at and id (in the single or default direction) as tie-breakers
    spec += [(k, default) for k in ("created_at", "id") if k not in keys]
    return spec


def _sorted(records: list[ImageRecord], spec: Sequence[tuple[str, str]]) -> list[ImageRecord]:
    # stable sorts from the last key to the first; None sorts lowest (nulls last when descending)
    out = sorted(records, key=lambda r: r.seq)
    for key, direction in reversed(spec):

        def value(r: ImageRecord, key: str = key) -> tuple[int, Any]:
            v = getattr(r, key)
            if key == "created_at":
                return (1, (v, r.seq))  # sub-second creation order, as the database keeps it
            return (0, 0) if v is None else (1, v)

        out.sort(key=value, reverse=direction == "desc")
    return out


def list_images(
    store: RegionStore, caller: Caller, query: Any, *, ignore_properties: bool = False
) -> tuple[list[ImageRecord], str | None]:
    """One page of images and the marker for the next page (None when this page is not full)."""
    raw_limit = _first(query, "limit")
    limit = DEFAULT_LIMIT
    if raw_limit is not None:
        try:
            limit = int(raw_limit)
        except ValueError:
            raise GlanceError(400, "limit param must be an integer") from None
        if limit < 0:
            raise GlanceError(400, "limit param must be positive")
    limit = min(limit, MAX_LIMIT)
    spec = _sort_spec(query)
    marker = _first(query, "marker")
    walk = (caller.tenant_id, caller.roles, ignore_properties,
            *((k, v) for k, v in query.items() if k not in ("marker", "limit")))  # fmt: skip
    cached = store.walks.get(walk) if marker is not None else None
    if cached is not None and cached[0] == store.version and marker in cached[2]:
        # the next page of a walk over an unchanged region: its order is reused (one sort per walk, not
        # one per page, so that listing 100,000 images is not quadratic)
        records, positions = cached[1], cached[2]
    else:
        preds = _filters(query, ignore_properties=ignore_properties)
        records = _sorted([r for r in _visible_for(store, caller, query) if all(p(r) for p in preds)], spec)
        positions = {r.id: n for n, r in enumerate(records)}
        if len(store.walks) >= _WALKS:
            store.walks.pop(next(iter(store.walks)))
        store.walks[walk] = (store.version, records, positions)
    if marker is not None:
        if marker not in positions:
            visible = store.images.get(marker)
            if visible is None or not store.can_see(visible, caller):
                raise GlanceError(400, f"No image found with ID {marker}")
            # the marker exists but is filtered out: continue after its position in the full order
            records = _sorted([*records, visible], spec)
            positions = {r.id: n for n, r in enumerate(records)}
        records = records[positions[marker] + 1 : positions[marker] + 1 + limit]
    page = records[:limit]
    next_marker = page[-1].id if page and len(page) == limit else None
    return page, next_marker


def page_links(query: Any, next_marker: str | None) -> dict[str, str]:
    """``first`` and ``next`` as Glance builds them: ``urlencode(dict(params))`` without the marker.

    ``dict()`` keeps the LAST value of a repeated key, so ``tag=a&tag=b`` comes back as ``tag=b`` alone
    (a Glance 33 bug kept on purpose: following ``next`` blindly drops filters).
    """
    params = {k: query.getall(k)[-1] for k in dict.fromkeys(query.keys())}
    params.pop("marker", None)
    encoded = urlencode(params)
    links = {"first": f"/v2/images?{encoded}" if encoded else "/v2/images"}
    if next_marker is not None:
        links["next"] = "/v2/images?" + urlencode({**params, "marker": next_marker})
    return links
