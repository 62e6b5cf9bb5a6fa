"""Pure scheduling rules: may this account take a request right now, and why not.

Everything here takes values and returns values: no I/O, no clock reads (the
caller passes ``now`` in epoch seconds), no logging. Selection calls ``check``
for every candidate on the hot path, so the common case allocates nothing:
"not paused" answers are prebuilt constants and reasons are enum members.

Order of the checks (what selection counts when several apply): the request's
model first, then the account's own state (status, admin switch, expiry), then
the quota auto-pause, then the shared runtime deadlines. Hard reasons come
before soft ones so a sticky binding is dropped whenever any hard reason holds.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from datetime import UTC

import msgspec

from .model import Account, QuotaPolicy, QuotaWindow, Status, Window, model_matches

__all__ = [
    "HARD_REASONS",
    "NOT_PAUSED",
    "AccountRuntime",
    "PauseDecision",
    "Reason",
    "check",
    "expires_at_ts",
    "is_hard",
    "quota_pause",
]


class Reason(enum.StrEnum):
    """Why a candidate was not used: the closed set selection counts and reports.

    Selection adds no reason of its own outside this set; the values appear in
    "no available accounts" answers, the explain endpoint and metric labels.
    """

    # Hard: the account cannot serve this request; a sticky binding to it is dropped.
    MODEL_UNSUPPORTED = "model_unsupported"
    DISABLED = "disabled"
    ERROR = "error"
    NOT_SCHEDULABLE = "not_schedulable"
    EXPIRED = "expired"
    QUOTA_PAUSED_5H = "quota_paused_5h"
    QUOTA_PAUSED_7D = "quota_paused_7d"
    # Soft: a passing condition; a sticky binding is kept and the request spills over.
    EXCLUDED_BY_REQUEST = "excluded_by_request"
    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"
    TEMP_UNSCHEDULABLE = "temp_unschedulable"
    FULL = "full"
    SLOW = "slow"


HARD_REASONS: frozenset[Reason] = frozenset(
    {
        Reason.MODEL_UNSUPPORTED,
        Reason.DISABLED,
        Reason.ERROR,
        Reason.NOT_SCHEDULABLE,
        Reason.EXPIRED,
        Reason.QUOTA_PAUSED_5H,
        Reason.QUOTA_PAUSED_7D,
    }
)


def is_hard(reason: Reason) -> bool:
    """True when ``reason`` means a sticky binding to the account must be dropped."""
    return reason in HARD_REASONS


class AccountRuntime(msgspec.Struct, frozen=True, kw_only=True):
    """The shared, fast-changing state of one account (kept in Redis by selection).

    Deadlines are epoch seconds; the account is blocked while ``now < deadline``
    and usable again from the deadline on. ``None`` means no deadline.
    """

    rate_limited_until: float | None = None
    overloaded_until: float | None = None
    unschedulable_until: float | None = None
    unschedulable_reason: str | None = None
    windows: tuple[QuotaWindow, ...] = ()
    last_used_at: float | None = None


# What an account with no runtime state at all looks like (never used yet).


class PauseDecision(msgspec.Struct, frozen=True, kw_only=True):
    """The verdict of the quota auto-pause rule for one account.

    When ``paused``: ``window`` is the window that pauses it, ``utilisation``
    the reading's used fraction, ``threshold`` the one applied, and ``until``
    the moment the verdict lifts by itself at the latest (the window's reset,
    or when the reading turns stale): paused while ``now < until``. ``why`` is
    a human-readable sentence.
    """

    paused: bool
    reason: Reason | None = None
    window: Window | None = None
    utilisation: float | None = None
    threshold: float | None = None
    until: float | None = None
    why: str = ""


# Why one window does not pause (constant strings, so no formatting on the hot path).
_DISABLED = "auto-pause disabled for this window"
_NO_THRESHOLD = "no threshold"
_NO_READING = "no reading"
_UNUSED = "nothing used"
_RESET = "window already reset"
_STALE = "reading stale"
_BELOW = "below threshold"
_NOTES = (_DISABLED, _NO_THRESHOLD, _NO_READING, _UNUSED, _RESET, _STALE, _BELOW)

# Every "not paused" answer, prebuilt and indexed [5h note][7d note]: the common
# case must not allocate (nested str-keyed dicts are cheaper than a tuple key).
_NOT_PAUSED: dict[str, dict[str, PauseDecision]] = {
    a: {b: PauseDecision(paused=False, why=f"5h: {a}; 7d: {b}") for b in _NOTES} for a in _NOTES
}
NOT_PAUSED = _NOT_PAUSED[_NO_READING][_NO_READING]

_PAUSE_REASON = {
    Window.FIVE_HOURS: Reason.QUOTA_PAUSED_5H,
    Window.SEVEN_DAYS: Reason.QUOTA_PAUSED_7D,
}

# Enum members bound to module names: ``Enum.MEMBER`` goes through the enum
# metaclass and costs ~100 ns a lookup, a module global ~10 ns. The hot path
# reads these, never the class attributes.
_H5 = Window.FIVE_HOURS
_D7 = Window.SEVEN_DAYS
_ACTIVE = Status.ACTIVE
_DISABLED_STATUS = Status.DISABLED
_R_MODEL = Reason.MODEL_UNSUPPORTED
_R_DISABLED = Reason.DISABLED
_R_ERROR = Reason.ERROR
_R_NOT_SCHEDULABLE = Reason.NOT_SCHEDULABLE
_R_EXPIRED = Reason.EXPIRED
_R_RATE_LIMITED = Reason.RATE_LIMITED
_R_OVERLOADED = Reason.OVERLOADED
_R_TEMP = Reason.TEMP_UNSCHEDULABLE


def _judge(
    window: Window, reading: QuotaWindow | None, threshold: float, stale_after_s: float, now: float
) -> PauseDecision | str:
    """One window's verdict given its threshold and latest reading.

    Returns a paused decision, or the note saying why the reading does not count.
    """
    if reading is None:
        return _NO_READING
    used = reading.used_ratio
    if not used > 0:  # also rejects NaN
        return _UNUSED
    resets = reading.reset_at
    if resets is None and reading.reset_after_s is not None:
        resets = reading.observed_at + reading.reset_after_s
    # Written as "not (now < x)" so a NaN deadline or timestamp errs on the side of
    # not pausing: a paused account gets no traffic, so a bad reading must not stick.
    if resets is not None and not now < resets:
        return _RESET
    # Stale from the moment it reaches the age limit, like a reset: every boundary
    # here is "blocked while now < deadline", and computing the deadline once keeps
    # ``until`` below exactly the instant the verdict changes (no float drift).
    until = reading.observed_at + stale_after_s
    if not now < until:
        return _STALE
    if used < threshold:
        return _BELOW
    if resets is not None and resets < until:
        until = resets
    return PauseDecision(
        paused=True,
        reason=_PAUSE_REASON[window],
        window=window,
        utilisation=used,
        threshold=threshold,
        until=until,
        why=f"{window} window {used:.1%} used >= threshold {threshold:.1%}",
    )


def quota_pause(
    account: Account, windows: Iterable[QuotaWindow], policy: QuotaPolicy, now: float
) -> PauseDecision:
    """Decide whether the account's quota readings pause it (5h and 7d independently).

    Per window: its disable flag wins outright; the threshold is the account's
    own, else the policy default, else none (never pauses); the latest reading
    counts only when something was used, its window has not reset yet
    (``now < reset``) and it is not stale (``now < observed_at +
    policy.stale_after_s``); then it pauses when used >= threshold.
    The latest reading of a window is the one with the greatest ``observed_at``
    (on a tie, the one given last). When both windows pause, the one that lifts
    later is reported (the account stays paused until then).
    """
    r5: QuotaWindow | None = None
    r7: QuotaWindow | None = None
    for w in windows:
        if w.window == _H5:
            if r5 is None or w.observed_at >= r5.observed_at:
                r5 = w
        elif w.window == _D7 and (r7 is None or w.observed_at >= r7.observed_at):
            r7 = w
    return _decide(account, r5, r7, policy, now)


def _decide(
    account: Account,
    r5: QuotaWindow | None,
    r7: QuotaWindow | None,
    policy: QuotaPolicy,
    now: float,
) -> PauseDecision:
    """Both windows' verdicts combined (straight-line: this runs for every candidate)."""
    d5: PauseDecision | str
    d7: PauseDecision | str
    if account.auto_pause_5h_disabled:
        d5 = _DISABLED
    else:
        t = account.auto_pause_5h_threshold
        if t is None:
            t = policy.default_5h_threshold
        d5 = _NO_THRESHOLD if t is None else _judge(_H5, r5, t, policy.stale_after_s, now)
    if account.auto_pause_7d_disabled:
        d7 = _DISABLED
    else:
        t = account.auto_pause_7d_threshold
        if t is None:
            t = policy.default_7d_threshold
        d7 = _NO_THRESHOLD if t is None else _judge(_D7, r7, t, policy.stale_after_s, now)
    if isinstance(d5, str):
        return _NOT_PAUSED[d5][d7] if isinstance(d7, str) else d7
    if isinstance(d7, str):
        return d5
    return d7 if (d7.until or 0.0) > (d5.until or 0.0) else d5


def expires_at_ts(account: Account) -> float | None:
    """The account's expiry as epoch seconds (a naive datetime is taken as UTC)."""
    exp = account.expires_at
    if exp is None:
        return None
    if exp.tzinfo is None:
        exp = exp.replace(tzinfo=UTC)
    return exp.timestamp()


def _own_state(account: Account, now: float) -> Reason | None:
    """Status, admin switch and expiry: everything that does not live in Redis."""
    status = account.status
    if status != _ACTIVE:
        return _R_DISABLED if status == _DISABLED_STATUS else _R_ERROR
    if not account.schedulable:
        return _R_NOT_SCHEDULABLE
    if account.expires_at is not None and account.auto_pause_on_expired:
        ts = expires_at_ts(account)
        if ts is not None and now >= ts:
            return _R_EXPIRED
    return None


def _deadlines(runtime: AccountRuntime, now: float) -> Reason | None:
    """The three shared deadlines: blocked while ``now`` is before them."""
    until = runtime.rate_limited_until
    if until is not None and now < until:
        return _R_RATE_LIMITED
    until = runtime.overloaded_until
    if until is not None and now < until:
        return _R_OVERLOADED
    until = runtime.unschedulable_until
    if until is not None and now < until:
        return _R_TEMP
    return None


def check(
    account: Account,
    runtime: AccountRuntime | None,
    model: str,
    policy: QuotaPolicy,
    now: float,
) -> Reason | None:
    """The whole candidate filter for one account: the first reason it is excluded, or None.

    Order: model support, own state (status, admin switch, expiry), quota
    auto-pause, runtime deadlines -- hard reasons before soft ones.
    """
    if account.models and not model_matches(account.models, model):
        return _R_MODEL
    reason = _own_state(account, now)
    if reason is not None or runtime is None:
        return reason
    if runtime.windows:
        decision = quota_pause(account, runtime.windows, policy, now)
        if decision.paused:
            return decision.reason
    return _deadlines(runtime, now)
