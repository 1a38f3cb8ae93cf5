"""Job-file problems: pydantic's errors turned into short (dotted key path, message) pairs, the way every
problem of a job file is reported at once (``load`` collects them into one ``JobSpecError``)."""

from __future__ import annotations

import difflib
import json
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from pipeline.config.values import BARE_KEY, _kind

__all__ = ["Problems", "dotted", "unknown_key", "validate"]

_EXPECTED = {
    "int_type": "an integer",
    "string_type": "a string",
    "bool_type": "a boolean",
    "float_type": "a number",
    "list_type": "an array",
    "tuple_type": "an array",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
}
_M = TypeVar("_M", bound=BaseModel)
Problems = list[tuple[str, str]]

# === turning pydantic's errors into short, human (path, message) pairs


def dotted(loc: tuple[str | int, ...]) -> str:
    """("targets", 1, "region") -> "targets[1].region"; keys that are not bare TOML keys get quoted."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "[key]":  # pydantic's marker for "the key itself", not a path element
            key = part if BARE_KEY.fullmatch(part) else json.dumps(part, ensure_ascii=False)
            out = f"{out}.{key}" if out else key
    return out


def unknown_key(key: object, known: list[str]) -> str:
    if key in ("password", "token"):
        return f"unknown key; put the {key} in an environment variable and name it in {key}_env"
    close = difflib.get_close_matches(str(key), known, n=1)
    return f"unknown key (did you mean {close[0]!r}?)" if close else "unknown key"


def _message(error: ErrorDetails, known: list[str]) -> str:
    kind = error["type"]
    if kind == "missing":
        return "missing required key"
    if kind == "extra_forbidden":
        return unknown_key(error["loc"][-1], known)
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {_kind(error['input'])}"
    if kind == "literal_error":
        return f"must be {error.get('ctx', {}).get('expected')}, got {error['input']!r}"
    if kind == "value_error":
        return str(error.get("ctx", {}).get("error", error["msg"]))
    return error["msg"][:1].lower() + error["msg"][1:]


def validate(
    model: type[_M],
    value: object,
    loc: tuple[str | int, ...],
    problems: Problems,
    profiles: list[str] | None,
) -> _M | None:
    try:
        return model.model_validate(value, context={"profiles": profiles})
    except ValidationError as exc:
        known = list(model.model_fields)
        problems.extend((dotted(loc + tuple(e["loc"])), _message(e, known)) for e in exc.errors())
        return None
