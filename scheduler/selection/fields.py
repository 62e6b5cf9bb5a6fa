"""The runtime-state hash of an account: every field name, declared once.

Each account's state hash (:meth:`scheduler.selection.store.Keys.state`) holds
only these fields. The Python that writes or parses the hash and the Lua
scripts that touch it use these names and no others: a test reads every
``.lua`` file under ``scheduler/`` and ``snapshot/`` and fails on any field-like
name not declared here.

Times in the hash are Redis server time, in epoch **milliseconds**; the two
helpers at the end convert between that and the seconds Python works in, one
direction each.
"""

from __future__ import annotations

from accounts.model import Window

# Deadlines: the account is held out while Redis TIME < the value.
RATE_LIMITED_UNTIL = "rl_until"
OVERLOADED_UNTIL = "ol_until"
UNSCHEDULABLE_UNTIL = "tu_until"
# Why the account is temporarily unschedulable (text, shown by explain).
UNSCHEDULABLE_REASON = "tu_reason"
# When a lease of the account was last released.
LAST_USED = "last_used"
# What is left of the tightest OpenAI x-ratelimit-* family (remaining / limit), and
# until when that figure holds (its reset): a soft penalty in scoring meanwhile.
RATE_LIMIT_ROOM = "rl_room"
RATE_LIMIT_ROOM_UNTIL = "rl_room_until"
# Exponentially weighted averages of the reported outcomes.
EWMA_ERROR = "ewma_err"
EWMA_LATENCY = "ewma_lat"
EWMA_TTFT = "ewma_ttft"


def window_field(window: Window) -> str:
    """The field holding the latest reading of one quota window (``q:5h``, ``q:7d``)."""
    return "q:" + window.value


WINDOW_FIELDS: dict[str, Window] = {window_field(w): w for w in Window}
DEADLINE_FIELDS = (RATE_LIMITED_UNTIL, OVERLOADED_UNTIL, UNSCHEDULABLE_UNTIL)
STATE_FIELDS: frozenset[str] = frozenset(
    {
        *DEADLINE_FIELDS,
        UNSCHEDULABLE_REASON,
        RATE_LIMIT_ROOM,
        RATE_LIMIT_ROOM_UNTIL,
        LAST_USED,
        EWMA_ERROR,
        EWMA_LATENCY,
        EWMA_TTFT,
        *WINDOW_FIELDS,
    }
)


def ms_to_s(raw: str | None) -> float | None:
    """A hash value in epoch milliseconds as epoch seconds (None when absent or empty)."""
    return float(raw) / 1000.0 if raw else None


def s_to_ms(seconds: float) -> int:
    """Seconds (a duration or an epoch time) as whole milliseconds, for a script argument."""
    return int(seconds * 1000)
