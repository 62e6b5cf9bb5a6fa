"""Turning msgspec's decode errors into (field, reason) pairs.

msgspec reports ``Expected `int` >= 1 - at `$.concurrency``` and, for unknown
fields and ``__post_init__`` errors, the enclosing object's path with the field
named in the message. Config loading and every API body use this one function,
so a bad value is reported the same way wherever it came from.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from .errors import BadRequest, ValidationFailed

T = TypeVar("T")

_PATH_IN_MSG = re.compile(r"\s*-\s*at `\$(.*)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `([^`]+)`$")
_MISSING = re.compile(r"^Object missing required field `([^`]+)`$")
_FIELD_REASON = re.compile(r"^([a-z_][a-z0-9_]*): (.+)$")


def field_error(exc: msgspec.ValidationError | ValueError) -> tuple[str, str]:
    """``(dotted.field.path, reason)`` for one msgspec validation error."""
    message = str(exc)
    match = _PATH_IN_MSG.search(message)
    path = match.group(1).lstrip(".") if match else ""
    reason = _PATH_IN_MSG.sub("", message) if match else message
    for pattern, fixed in (
        (_UNKNOWN, "unknown field"),
        (_MISSING, "required"),
        (_FIELD_REASON, None),
    ):
        m = pattern.match(reason)
        if m:
            name = m.group(1)
            return (f"{path}.{name}" if path else name), fixed or m.group(2)
    return path or "$", reason


def _whole_floats_as_ints(value: Any) -> Any:
    """``2.0`` -> ``2`` everywhere in a decoded JSON value (an int is accepted for a float)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_floats_as_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_floats_as_ints(v) for v in value]
    return value


def decode_json(body: bytes, type_: type[T]) -> T:
    """Decode and validate a JSON body; 400 if not JSON, 422 naming the field otherwise.

    Integer fields accept whole-number floats (``2.0``, ``1e3``), as JSON Schema's
    ``integer`` does: the strict decode runs first (the common case costs nothing
    more) and only a body it refuses is decoded again with whole floats as ints.
    """
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError:
        pass
    except msgspec.DecodeError as exc:
        raise BadRequest([("$", f"body is not valid JSON: {exc}")]) from None
    try:
        # msgspec checks the type of a value before what follows it, so `1<garbage>`
        # failed validation above and fails to decode here: both are answers, not crashes.
        plain = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise BadRequest([("$", f"body is not valid JSON: {exc}")]) from None
    try:
        return msgspec.convert(_whole_floats_as_ints(plain), type_)
    except msgspec.ValidationError as exc:
        raise ValidationFailed([field_error(exc)]) from None


def convert_query(params: Any, type_: type[T]) -> T:
    """Query parameters (all text) into ``type_``: numbers and booleans parsed; 422 on error."""
    try:
        return msgspec.convert(dict(params), type_, strict=False)
    except msgspec.ValidationError as exc:
        raise ValidationFailed([field_error(exc)]) from None


def convert(data: Any, type_: type[T]) -> T:
    """Validate an already-decoded value (CLI input, CSV rows) into ``type_``; 422 on error."""
    try:
        return msgspec.convert(data, type_)
    except msgspec.ValidationError as exc:
        raise ValidationFailed([field_error(exc)]) from None
