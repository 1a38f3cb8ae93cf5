"""How the journal stores an image x target's evidence (``records``): a digest the target reported that equals one
computed in flight is written once. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["compact_evidence", "expanded_evidence"]

#: A reported value that is one of the computed digests is stored as this prefix plus the digest's name.
_SAME = "="


def compact_evidence(evidence: Mapping[str, Any]) -> dict[str, Any]:
    """Evidence as the journal stores it: a digest the target reported that equals one computed in flight (the
    usual case, the proof) is written once, the report naming it (``"=md5"``)."""
    computed = evidence.get("computed")
    reported = evidence.get("reported")
    if not isinstance(computed, Mapping) or not isinstance(reported, Mapping):
        return dict(evidence)
    by_value = {v: k for k, v in computed.items() if isinstance(v, str)}
    same = {k: _SAME + by_value[v] for k, v in reported.items() if isinstance(v, str) and v in by_value}
    return {**evidence, "reported": {**reported, **same}} if same else dict(evidence)


def expanded_evidence(evidence: Mapping[str, Any]) -> dict[str, Any]:
    """The stored form made whole again (the same string objects as the computed digests: no second copy). Called
    for every image x target that ``imgmig status`` shows: a dict is told from a ``Mapping`` by its type first
    (``isinstance`` of an abstract class costs several times more)."""
    computed = evidence.get("computed")
    reported = evidence.get("reported")
    if not (type(computed) is dict or isinstance(computed, Mapping)) or not (
        type(reported) is dict or isinstance(reported, Mapping)
    ):
        return dict(evidence)
    whole, get = dict(reported), computed.get
    for k, v in reported.items():
        if isinstance(v, str) and v[:1] == _SAME:
            whole[k] = get(v[1:], v)
    out = dict(evidence)
    out["reported"] = whole
    return out
