"""OpenAI API-key rate-limit headers: when a 429'd account comes back, how much room is left.

OpenAI (and the many servers that copy its API) answer every request with, per
limit family (``requests``, ``tokens``)::

    x-ratelimit-limit-requests: 500        the limit of the current window
    x-ratelimit-remaining-requests: 499    what is left of it
    x-ratelimit-reset-requests: 120ms      when it is whole again: a Go-style duration
    x-ratelimit-limit-tokens / -remaining-tokens / -reset-tokens   (likewise)

Durations look like ``6m0s``, ``1s``, ``20ms``, ``1h2m3.5s``, ``250us`` (units
``h``, ``m``, ``s``, ``ms``, ``us``/``µs``, ``ns``); a bare number is seconds.

Two uses (pure functions, never raising on bad input; a malformed value is no
reading, the rest is still used):

* :func:`openai_resets` -- on a 429, the resets of the families that refused:
  those whose ``remaining`` is 0; when none is at 0 (a request larger than what
  was left), every family given. The caller takes the latest.
* :func:`openai_headroom` -- on any answer, the smallest ``remaining / limit``
  over the families that give both, and until when it holds (that family's
  reset): a soft penalty in scoring while an account runs low.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import NamedTuple

from .header_values import MAX_HORIZON_S, lowered, number

__all__ = ["Headroom", "openai_headroom", "openai_resets", "parse_duration"]

FAMILIES = ("requests", "tokens")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
# One or more <number><unit> parts, longest units first in the alternation (ms before m).
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|us|µs|ns|h|m|s))+")
# Longer than this is not a duration anyone sent on purpose.
_MAX_LEN = 40


class Headroom(NamedTuple):
    """What is left of the tightest limit (0..1) and until when that reading holds (epoch s)."""

    fraction: float
    until: float


def parse_duration(raw: str | None) -> float | None:
    """Seconds from a Go-style duration (``6m0s``, ``20ms``) or a bare number; None if neither."""
    if not raw or len(raw) > _MAX_LEN:
        return None
    text = raw.strip()
    if _DURATION.fullmatch(text):
        seconds = sum(float(n) * _UNIT_S[unit] for n, unit in _PART.findall(text))
    else:
        value = number(text)
        if value is None:
            return None
        seconds = value
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_HORIZON_S:
        return None
    return seconds


def _family(h: dict[str, str], family: str) -> tuple[float | None, float | None, float | None]:
    """(limit, remaining, reset seconds) of one family, each None when absent or malformed."""
    limit = number(h.get(f"x-ratelimit-limit-{family}"))
    remaining = number(h.get(f"x-ratelimit-remaining-{family}"))
    reset = parse_duration(h.get(f"x-ratelimit-reset-{family}"))
    if limit is not None and limit <= 0:
        limit = None
    if remaining is not None and remaining < 0:
        remaining = None
    return limit, remaining, reset


def openai_resets(headers: Mapping[str, str], now: float) -> list[float]:
    """Resets (epoch s) of the families that refused a request: at 0, else every one given."""
    h = lowered(headers)
    given: list[float] = []
    exhausted: list[float] = []
    for family in FAMILIES:
        _limit, remaining, reset = _family(h, family)
        if reset is None:
            continue
        given.append(now + reset)
        if remaining == 0:
            exhausted.append(now + reset)
    return exhausted or given


def openai_headroom(headers: Mapping[str, str], now: float) -> Headroom | None:
    """The tightest family's ``remaining / limit`` (clamped to 0..1) and its reset, or None."""
    h = lowered(headers)
    best: Headroom | None = None
    for family in FAMILIES:
        limit, remaining, reset = _family(h, family)
        if limit is None or remaining is None or reset is None:
            continue
        room = Headroom(min(1.0, remaining / limit), now + reset)
        if best is None or room.fraction < best.fraction:
            best = room
    return best
