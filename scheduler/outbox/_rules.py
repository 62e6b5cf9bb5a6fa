"""The outbox's pure rules: states and moves, verdicts on an answer, the retry delay.

No I/O, no clock reads (``now`` and randomness are passed in), so the property
tests can run them exhaustively.

States::

    pending ──claim──▶ published ──2xx──▶ consumed   (final)
       ▲  │                │
       │  └──────┐  retry / hand back
       │         ▼         ▼
       └─operator── dead ◀─┘  (410, other 4xx, max attempts)

``dead`` is final for the dispatcher; only an operator's retry takes it back to
``pending`` (with the attempt count reset). ``consumed`` is final for everyone.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Sequence
from datetime import datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit


class Status(enum.StrEnum):
    PENDING = "pending"
    PUBLISHED = "published"
    CONSUMED = "consumed"
    DEAD = "dead"


TERMINAL = frozenset({Status.CONSUMED, Status.DEAD})

# Moves the dispatcher and the pull path may make. Same-state moves are a
# reschedule (pending) or a lease taken over from a dead holder (published).
_MOVES = frozenset(
    {
        (Status.PENDING, Status.PUBLISHED),
        (Status.PUBLISHED, Status.CONSUMED),
        (Status.PUBLISHED, Status.PENDING),
        (Status.PENDING, Status.DEAD),
        (Status.PUBLISHED, Status.DEAD),
        (Status.PENDING, Status.PENDING),
        (Status.PUBLISHED, Status.PUBLISHED),
    }
)
# The one move out of a terminal state, and only an operator makes it.
_OPERATOR_MOVES = frozenset({(Status.DEAD, Status.PENDING)})


def may_move(old: Status, new: Status, *, operator: bool = False) -> bool:
    """Whether ``old -> new`` is legal (the SQL guard trigger enforces the same table)."""
    return (old, new) in _MOVES or (operator and (old, new) in _OPERATOR_MOVES)


class Verdict(enum.StrEnum):
    """What one delivery attempt means for the event."""

    CONSUMED = "consumed"
    RETRY = "retry"
    DEAD = "dead"


def classify(status_code: int | None) -> Verdict:
    """The verdict on a receiver's answer; ``None`` = no answer (timeout, connection error).

    2xx: the receiver has it. 410: the endpoint is gone for good. Other 4xx
    except 408 (request timeout) and 429 (too many requests): the receiver
    refuses this event and will keep refusing it. Everything else (408, 429,
    5xx, 1xx/3xx we do not follow, no answer) may pass later: retry.
    """
    if status_code is None:
        return Verdict.RETRY
    if 200 <= status_code < 300:
        return Verdict.CONSUMED
    if status_code in (408, 429):
        return Verdict.RETRY
    if 400 <= status_code < 500:
        return Verdict.DEAD
    return Verdict.RETRY


def settle(verdict: Verdict, attempts: int, max_attempts: int) -> Verdict:
    """``verdict`` after counting attempts: a retry with none left is dead."""
    if verdict is Verdict.RETRY and attempts >= max_attempts:
        return Verdict.DEAD
    return verdict


def retry_delay_s(
    attempts: int,
    schedule: Sequence[float],
    *,
    jitter: float,
    rand: float,
    retry_after_s: float | None = None,
) -> float:
    """Seconds to wait before the next attempt, after ``attempts`` (>= 1) have failed.

    ``schedule[attempts - 1]`` (its last entry once past the end), spread by
    ``±jitter`` (a fraction) with ``rand`` in [0, 1) so instances that failed
    together do not retry together. A receiver's ``Retry-After`` is honoured as a
    floor, but capped at the schedule's largest step: a receiver cannot park an
    event for longer than our own slowest retry.
    """
    if not schedule:
        raise ValueError("schedule must not be empty")
    base = schedule[min(max(attempts, 1), len(schedule)) - 1]
    delay = base * (1.0 + jitter * (2.0 * rand - 1.0))
    if retry_after_s is not None and retry_after_s > 0:
        delay = max(delay, min(retry_after_s, max(schedule)))
    return max(delay, 0.0)


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """``Retry-After`` as seconds from ``now``: delta-seconds or an HTTP date; None if unusable."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    seconds = (when - now).total_seconds()
    return seconds if math.isfinite(seconds) and seconds > 0 else 0.0


_ORIGIN = re.compile(r"^[a-zA-Z]+://[^/?#]+")


def origin(url: str) -> str:
    """``scheme://authority`` of a URL: the unit of the per-destination limit.

    The same pattern as the claim query's (``_queries.CLAIM``), so the origins the
    dispatcher leaves alone are exactly those the query skips. May carry userinfo:
    never log it (use :func:`display_url`).
    """
    match = _ORIGIN.match(url)
    return match.group(0) if match else url


def display_url(url: str) -> str:
    """A URL fit for logs and admin reads: no userinfo, no query values (tokens live there)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:  # not a number or out of range: show none rather than fail a read
        port = None
    if port is not None:
        host = f"{host}:{port}"
    shown = f"{parts.scheme}://{host}{parts.path}"
    return shown + ("?…" if parts.query else "")
