"""Lenient readers of upstream header values: numbers, dates, delays, resets.

Pure functions that never raise on bad input: a missing, malformed, negative,
NaN/inf or out-of-range value reads as None. Used by the quota readings
(:mod:`accounts.quota`) and the rate-limit resets (:mod:`accounts.retry`).
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Mapping
from datetime import UTC, datetime

# No usage window of interest resets further ahead than a month; a larger delay or
# a timestamp further from now than this is garbage, not a reading.
MAX_HORIZON_S = 35 * 86400.0
# Smaller "timestamps" predate 2001: not epoch seconds (small ones are delays).
EPOCH_S_MIN = 1e9
# Epoch seconds stay below this until the year 5138: bigger values are milliseconds.
EPOCH_MS_MIN = 1e11
# A numeric header longer than this is not a number anyone sent on purpose.
MAX_NUMBER_LEN = 40


def lowered(headers: Mapping[str, str]) -> dict[str, str]:
    """A plain dict with lower-cased names and stripped values; junk entries dropped."""
    out: dict[str, str] = {}
    try:
        items = list(headers.items())
    except (AttributeError, TypeError):
        return out
    for name, value in items:
        if isinstance(name, bytes):
            name = name.decode("latin-1")
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if isinstance(name, str) and isinstance(value, str):
            out[name.strip().lower()] = value.strip()
    return out


def number(raw: str | None) -> float | None:
    """A finite float from a header value, or None."""
    if not raw or len(raw) > MAX_NUMBER_LEN:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def date(raw: str) -> float | None:
    """Epoch seconds from an RFC 3339 / ISO 8601 or HTTP date (naive = UTC), or None."""
    if len(raw) > 64:
        return None
    parsed: datetime | None
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if parsed is None:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        ts = parsed.timestamp()
    except (OverflowError, OSError, ValueError):
        return None
    return ts if math.isfinite(ts) else None


def near(ts: float | None, now: float) -> float | None:
    """``ts`` if it lies within the horizon around ``now``, else None."""
    if ts is None or abs(ts - now) > MAX_HORIZON_S:
        return None
    return ts


def instant(raw: str | None, now: float) -> tuple[float | None, float | None]:
    """A reset given leniently, as ``(reset_at, reset_after_s)`` with at most one set.

    Accepts epoch seconds (the real format), epoch milliseconds, a delay in
    seconds, or an RFC 3339 / HTTP date.
    """
    if not raw:
        return None, None
    value = number(raw)
    if value is None:
        return near(date(raw), now), None
    if value >= EPOCH_MS_MIN:
        return near(value / 1000.0, now), None
    if value >= EPOCH_S_MIN:
        return near(value, now), None
    if 0 <= value <= MAX_HORIZON_S:
        return None, value
    return None, None


def delay(raw: str | None) -> float | None:
    """A non-negative delay in seconds within the horizon, or None."""
    value = number(raw)
    if value is None or not 0 <= value <= MAX_HORIZON_S:
        return None
    return value
