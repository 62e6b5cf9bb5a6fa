"""Lenient readers for usage documents: bad values are no reading, never an exception."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from accounts.quota import MAX_HORIZON_S, MAX_USED_PERCENT

# Epoch seconds above this are milliseconds (the year 5138 in seconds).
_EPOCH_MS_MIN = 1e11


def percent(raw: Any) -> float | None:
    """A used percentage (number or numeric string) within 0..MAX_USED_PERCENT, else None."""
    if raw is None or isinstance(raw, bool):
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value) or not 0 <= value <= MAX_USED_PERCENT:
        return None
    return value


def seconds(raw: Any, hi: float = MAX_HORIZON_S) -> float | None:
    """A non-negative duration in seconds up to ``hi``, else None."""
    if raw is None or isinstance(raw, bool):
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and 0 <= value <= hi else None


def instant(raw: Any, now: float) -> float | None:
    """Epoch seconds from ISO 8601 text or an epoch number (s or ms), within the horizon."""
    ts: float | None = None
    if isinstance(raw, str) and len(raw) <= 64:
        try:
            parsed = datetime.fromisoformat(raw.strip())
        except ValueError:
            parsed = None
        if parsed is not None:
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            ts = parsed.timestamp()
        else:
            ts = seconds(raw, hi=math.inf)
    elif isinstance(raw, int | float) and not isinstance(raw, bool):
        ts = float(raw)
    if ts is None or not math.isfinite(ts):
        return None
    if ts >= _EPOCH_MS_MIN:
        ts /= 1000.0
    return ts if abs(ts - now) <= MAX_HORIZON_S else None


def clip(text: Any, limit: int = 200) -> str:
    """An upstream's message on one line, bounded (it may be shown to operators)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
