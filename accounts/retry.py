"""When a rate-limited (429) account comes back: the latest reset any header gives.

Pure, never raises on bad input. Reads ``retry-after-ms`` / ``Retry-After``,
used-up Codex windows, Anthropic's unified and per-window resets, Anthropic
API-key families whose ``remaining`` is 0 (formats: :mod:`accounts.quota`), and
OpenAI's ``x-ratelimit-reset-requests`` / ``-tokens`` of the families that
refused (:mod:`accounts.openai_limits`).
"""

from __future__ import annotations

from collections.abc import Mapping

from .header_values import MAX_HORIZON_S, date, delay, instant, lowered, near, number
from .openai_limits import openai_resets
from .quota import API_KEY_FAMILIES, anthropic_readings, codex_slots


def _retry_after_header(h: dict[str, str], now: float) -> float | None:
    ms = delay(h.get("retry-after-ms"))
    if ms is not None:
        return now + ms / 1000.0
    raw = h.get("retry-after")
    if not raw:
        return None
    seconds = delay(raw)
    if seconds is not None:
        return now + seconds
    return date(raw)


def _codex_resets(h: dict[str, str], now: float) -> list[float]:
    """Resets of the Codex windows that are used up."""
    out = []
    for slot in codex_slots(h, now).values():
        remaining = slot.remaining_s(now)
        if slot.used_ratio >= 1.0 and remaining is not None:
            out.append(now + remaining)
    return out


def _absolute(at: float | None, after: float | None, now: float) -> float | None:
    """A reset as epoch seconds, from whichever form it was given in."""
    if at is not None:
        return at
    return None if after is None else now + after


def _anthropic_resets(h: dict[str, str], now: float) -> list[float]:
    """Resets of the Anthropic limits that refused: unified, per window, API-key families."""
    resets: list[float | None] = []
    status = h.get("anthropic-ratelimit-unified-status")
    if status is None or status.lower() == "rejected":
        resets.append(_absolute(*instant(h.get("anthropic-ratelimit-unified-reset"), now), now))
    for reading in anthropic_readings(h, now):
        if reading.used_ratio >= 1.0:
            resets.append(_absolute(reading.reset_at, reading.reset_after_s, now))
    for family in API_KEY_FAMILIES:
        if number(h.get(f"anthropic-ratelimit-{family}-remaining")) == 0:
            resets.append(near(date(h.get(f"anthropic-ratelimit-{family}-reset", "")), now))
    return [r for r in resets if r is not None]


def retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """When a rate-limited account may be used again (epoch s), or None when nothing says.

    Considers ``retry-after-ms`` / ``Retry-After`` (seconds or HTTP date), the
    resets of used-up Codex windows, Anthropic's unified reset (when the status
    is ``rejected`` or absent), used-up unified 5h/7d windows, and API-key
    families whose ``remaining`` is 0, and OpenAI's resets of the families at 0
    (every family given when none is at 0). The latest of them wins: the account is
    blocked until every limit that refused it has lifted. Times in the past or
    beyond the horizon are not usable.
    """
    h = lowered(headers)
    candidates = _codex_resets(h, now) + _anthropic_resets(h, now) + openai_resets(h, now)
    header = _retry_after_header(h, now)
    if header is not None:
        candidates.append(header)
    usable = [c for c in candidates if now <= c <= now + MAX_HORIZON_S]
    return max(usable) if usable else None
