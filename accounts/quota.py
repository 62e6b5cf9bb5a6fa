"""Upstream usage headers turned into quota readings (5-hour and 7-day windows).

Pure functions: they take the response headers (any ``Mapping[str, str]``,
matched case-insensitively) and ``now`` (epoch seconds) and never raise on bad
input. A missing, malformed, negative, NaN/inf or out-of-range value is simply
not a reading; the rest of the header set is still used.

Header formats, as found in real code:

* OpenAI Codex (ChatGPT OAuth accounts), per window ``x-codex-primary-*`` and
  ``x-codex-secondary-*``: ``used-percent`` a float percentage 0-100,
  ``window-minutes`` an integer, ``reset-at`` epoch seconds (openai/codex
  ``codex-rs/codex-api/src/rate_limits.rs``: ``parse_rate_limit_window`` reads
  ``*-used-percent`` as f64, ``*-window-minutes`` and ``*-reset-at`` as i64)
  and ``reset-after-seconds`` an integer delay (Wei-Shaw/sub2api
  ``backend/internal/service/openai_gateway_service.go``:
  ``ParseCodexRateLimitHeaders``). Which slot is the 5-hour window is not
  fixed: sub2api labels primary "weekly" and secondary "5h", Codex's own CLI
  shows primary as the 5-hour one, so the window length decides.
* Anthropic subscription (OAuth) accounts, ``anthropic-ratelimit-unified-5h-*``
  and ``-7d-*``: ``utilization`` a 0-1 fraction (``0.42``), ``reset`` epoch
  seconds (``1790256000``), ``status`` one of ``allowed``, ``allowed_warning``,
  ``rejected``; plus the overall ``anthropic-ratelimit-unified-status``,
  ``-reset`` and ``-representative-claim`` (``five_hour``, ``seven_day`` ...)
  naming the window that limits the account (seen in several relays' parsers
  and recorded response fixtures, e.g. ccLoad's ``anthropicRateLimit5hReset``).
* Anthropic API-key accounts: ``anthropic-ratelimit-{requests,tokens,
  input-tokens,output-tokens}-{remaining,reset}`` with resets in RFC 3339
  (Anthropic's rate-limit documentation; anthropic-sdk-typescript issue 357
  derives a retry delay from the reset of the family whose remaining is 0).
* ``Retry-After``: delay-seconds or an HTTP date (RFC 9110 section 10.2.3);
  ``retry-after-ms`` as sent by OpenAI and Anthropic and honoured by their SDKs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from .header_values import MAX_HORIZON_S, delay, instant, lowered, number
from .model import Platform, QuotaWindow, Window

__all__ = ["MAX_HORIZON_S", "parse_anthropic", "parse_codex", "parse_usage"]

# Overage can push a Codex window past 100 %; a pause signal must not be lost, but
# a thousand percent is no longer a plausible reading.
MAX_USED_PERCENT = 1000.0
# The same bound for Anthropic's utilisation fraction.
MAX_USED_RATIO = MAX_USED_PERCENT / 100.0
# A single Codex window this short or shorter is the 5-hour one (issue 3).
FIVE_HOUR_MAX_MINUTES = 360.0
# A single Codex window this long or longer is the weekly one ("about 7 days").
SEVEN_DAY_MIN_MINUTES = 6 * 1440.0
# A window length beyond a month is not a usage window.
MAX_WINDOW_MINUTES = 31 * 1440.0
_FIVE_HOURS_S = 5 * 3600.0
_SEVEN_DAYS_S = 7 * 86400.0
_CLAIMS = {"five_hour": Window.FIVE_HOURS, "seven_day": Window.SEVEN_DAYS}
API_KEY_FAMILIES = ("requests", "tokens", "input-tokens", "output-tokens")


class CodexSlot(NamedTuple):
    """One Codex window as sent, before we know whether it is the 5h or the 7d one."""

    used_ratio: float
    minutes: float | None
    reset_after_s: float | None
    reset_at: float | None

    def remaining_s(self, now: float) -> float | None:
        if self.reset_after_s is not None:
            return self.reset_after_s
        return None if self.reset_at is None else self.reset_at - now


def _codex_slot(h: dict[str, str], slot: str, now: float) -> CodexSlot | None:
    prefix = f"x-codex-{slot}-"
    pct = number(h.get(prefix + "used-percent"))
    if pct is None or not 0 <= pct <= MAX_USED_PERCENT:
        return None
    minutes = number(h.get(prefix + "window-minutes"))
    if minutes is not None and not 0 < minutes <= MAX_WINDOW_MINUTES:
        minutes = None
    reset_at, delay_in_at = instant(h.get(prefix + "reset-at"), now)
    if delay_in_at is not None:  # a small number where a timestamp belongs is a delay
        reset_at = now + delay_in_at
    after = delay(h.get(prefix + "reset-after-seconds"))
    return CodexSlot(pct / 100.0, minutes, after, reset_at)


def _window_alone(slot: CodexSlot, default: Window, now: float) -> Window | None:
    """Classify a window seen without a partner of a different length."""
    if slot.minutes is not None:
        if slot.minutes <= FIVE_HOUR_MAX_MINUTES:
            return Window.FIVE_HOURS
        if slot.minutes >= SEVEN_DAY_MIN_MINUTES:
            return Window.SEVEN_DAYS
        return None  # a daily or other window: neither of ours
    remaining = slot.remaining_s(now)
    if remaining is not None and remaining > FIVE_HOUR_MAX_MINUTES * 60:
        return Window.SEVEN_DAYS  # cannot be a 5-hour window if it resets later than that
    return default


def codex_slots(h: dict[str, str], now: float) -> dict[Window, CodexSlot]:
    """The primary/secondary slots assigned to windows, one slot per window at most."""
    primary = _codex_slot(h, "primary", now)
    secondary = _codex_slot(h, "secondary", now)
    if (
        primary
        and secondary
        and primary.minutes
        and secondary.minutes
        and primary.minutes != secondary.minutes
    ):
        short, long = sorted((primary, secondary), key=lambda s: s.minutes or 0.0)
        return {Window.FIVE_HOURS: short, Window.SEVEN_DAYS: long}
    out: dict[Window, CodexSlot] = {}
    for slot, default in ((primary, Window.FIVE_HOURS), (secondary, Window.SEVEN_DAYS)):
        if slot is None:
            continue
        window = _window_alone(slot, default, now)
        if window is None:
            continue
        # Two slots claiming one window: the one whose length is known is the surer.
        held = out.get(window)
        if held is None or (held.minutes is None and slot.minutes is not None):
            out[window] = slot
    return out


def _codex(h: dict[str, str], now: float) -> list[QuotaWindow]:
    return [
        QuotaWindow(
            window=window,
            used_ratio=slot.used_ratio,
            observed_at=now,
            reset_at=slot.reset_at,
            reset_after_s=slot.reset_after_s,
            window_s=slot.minutes * 60.0 if slot.minutes is not None else None,
        )
        for window, slot in sorted(codex_slots(h, now).items())
    ]


def parse_codex(headers: Mapping[str, str], now: float) -> list[QuotaWindow]:
    """Readings from OpenAI Codex ``x-codex-primary-*`` / ``x-codex-secondary-*`` headers.

    The shorter of two windows is the 5-hour one; a lone window of at most 360
    minutes is the 5-hour one and one of about 7 days or more the 7-day one.
    """
    return _codex(lowered(headers), now)


def _fraction(raw: str | None) -> float | None:
    """Anthropic utilisation: a 0-1 fraction; ``42%`` is accepted as a percentage."""
    if raw and raw.endswith("%"):
        pct = number(raw[:-1].strip())
        value = None if pct is None else pct / 100.0
    else:
        value = number(raw)
    if value is None or not 0 <= value <= MAX_USED_RATIO:
        return None
    return value


def _rejected(h: dict[str, str], name: str) -> bool:
    return h.get(name, "").lower() == "rejected"


def anthropic_readings(h: dict[str, str], now: float) -> list[QuotaWindow]:
    out: dict[Window, QuotaWindow] = {}
    for tag, window, length in (
        ("5h", Window.FIVE_HOURS, _FIVE_HOURS_S),
        ("7d", Window.SEVEN_DAYS, _SEVEN_DAYS_S),
    ):
        prefix = f"anthropic-ratelimit-unified-{tag}-"
        used = _fraction(h.get(prefix + "utilization"))
        if _rejected(h, prefix + "status"):
            used = max(used or 0.0, 1.0)  # refused in this window: it is exhausted
        if used is None:
            continue
        reset_at, after = instant(h.get(prefix + "reset"), now)
        out[window] = QuotaWindow(
            window=window,
            used_ratio=used,
            observed_at=now,
            reset_at=reset_at,
            reset_after_s=after,
            window_s=length,
        )
    # A refusal naming its window ("representative claim") with no per-window reading.
    claimed = _CLAIMS.get(h.get("anthropic-ratelimit-unified-representative-claim", "").lower())
    if claimed and claimed not in out and _rejected(h, "anthropic-ratelimit-unified-status"):
        reset_at, after = instant(h.get("anthropic-ratelimit-unified-reset"), now)
        out[claimed] = QuotaWindow(
            window=claimed,
            used_ratio=1.0,
            observed_at=now,
            reset_at=reset_at,
            reset_after_s=after,
            window_s=_FIVE_HOURS_S if claimed is Window.FIVE_HOURS else _SEVEN_DAYS_S,
        )
    return [out[w] for w in sorted(out)]


def parse_anthropic(headers: Mapping[str, str], now: float) -> list[QuotaWindow]:
    """Readings from Anthropic ``anthropic-ratelimit-unified-{5h,7d}-*`` headers.

    ``utilization`` is a 0-1 fraction, ``reset`` epoch seconds (also accepted:
    milliseconds, a delay in seconds, RFC 3339). A window whose ``status`` is
    ``rejected`` reads as at least fully used.
    """
    return anthropic_readings(lowered(headers), now)


def _is_codex(h: dict[str, str]) -> bool:
    return any(name.startswith("x-codex-") for name in h)


def _is_anthropic(h: dict[str, str]) -> bool:
    return any(name.startswith("anthropic-ratelimit-unified-") for name in h)


def parse_usage(
    platform: Platform | str, headers: Mapping[str, str], now: float
) -> list[QuotaWindow]:
    """Quota readings from a response's headers, by platform (or, for others, by header family)."""
    h = lowered(headers)
    if platform == Platform.OPENAI:
        return _codex(h, now)
    if platform == Platform.ANTHROPIC:
        return anthropic_readings(h, now)
    # Platforms with no usage family of their own may sit behind a relay that sends one.
    readings: list[QuotaWindow] = []
    if _is_codex(h):
        readings.extend(_codex(h, now))
    if _is_anthropic(h):
        readings.extend(anthropic_readings(h, now))
    return readings
