"""The prober's pure rules: when to read an account's usage next, and how failures back off.

No I/O, no clock, no randomness: every function takes ``now`` (epoch seconds)
and, where jitter is wanted, a uniform draw ``u`` in [0, 1). Hypothesis tests
check the properties the prober relies on (``tests/usage/test_rules.py``).

When (:func:`next_probe`), from the account's newest readings (passive or
probed) and the shared probe record; the earliest of:

* **after reset**: a reading at or near its threshold whose window resets after
  it was taken is read again ``after_reset_s`` after that reset -- a paused
  account comes back (or is confirmed still used up) right at its reset;
* **paused**: a reading at or over its threshold, ``paused_interval_s`` after the
  newest reading (covers unknown or far resets, and resets that come early);
* **near**: within ``near_margin`` of a threshold, ``near_interval_s`` after it;
* **idle**: otherwise ``idle_interval_s`` after the newest reading or probe;
* **first**: never read and never probed: now (the prober spreads first looks).

Each interval is capped by those of the less used states (paused <= near <=
idle), so a more used account is never looked at later than a less used one.
Intervals count from the newest of the readings and the last probe, so an
account whose responses keep its readings fresh is never probed. Then two
floors: never sooner than ``min_interval_s`` after the last probe, and never
before the record's ``not_before`` (failure backoff, cannot-probe, Retry-After).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import msgspec

from accounts.model import Account, QuotaPolicy, QuotaWindow, Window
from snapshot.settings import UsageSettings

__all__ = [
    "AFTER_RESET",
    "BACKOFF",
    "FIRST",
    "IDLE",
    "NEAR",
    "PAUSED",
    "Due",
    "ProbeRecord",
    "backoff_s",
    "failure",
    "jittered",
    "next_probe",
]

FIRST = "first"
AFTER_RESET = "after_reset"
PAUSED = "paused"
NEAR = "near"
IDLE = "idle"
BACKOFF = "backoff"
# 2**40 times any base backoff is past every cap: bounding the exponent keeps floats finite.
_MAX_EXPONENT = 40


class ProbeRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What every instance knows of one account's probes (kept in Redis, Redis time).

    ``last_at``: the last probe ended (any result); ``fails``: consecutive
    failures; ``not_before``: no probe before this (backoff, Retry-After,
    cannot-probe); ``result``: the last result's name.
    """

    last_at: float | None = None
    fails: int = 0
    not_before: float | None = None
    result: str | None = None


NO_RECORD = ProbeRecord()


class Due(NamedTuple):
    """When to probe (epoch s), why, and the window jitter may push it back by."""

    at: float
    why: str
    spread_s: float


def _latest(windows: Iterable[QuotaWindow]) -> dict[Window, QuotaWindow]:
    """The newest reading of each window (as the pause rule picks them)."""
    out: dict[Window, QuotaWindow] = {}
    for w in windows:
        held = out.get(w.window)
        if held is None or w.observed_at >= held.observed_at:
            out[w.window] = w
    return out


def _threshold(account: Account, policy: QuotaPolicy, window: Window) -> float | None:
    """The threshold the pause rule applies to ``window`` (None: it never pauses it)."""
    if window == Window.FIVE_HOURS:
        if account.auto_pause_5h_disabled:
            return None
        own = account.auto_pause_5h_threshold
        return own if own is not None else policy.default_5h_threshold
    if account.auto_pause_7d_disabled:
        return None
    own = account.auto_pause_7d_threshold
    return own if own is not None else policy.default_7d_threshold


def _window_due(
    reading: QuotaWindow, threshold: float, base: float, cfg: UsageSettings
) -> Due | None:
    """How soon this window wants a read, or None when it is far from its threshold."""
    used = reading.used_ratio
    if not used >= threshold - cfg.near_margin:  # also rejects NaN
        return None
    # Each interval is capped by those of less used states: a more used account is
    # never looked at later than a less used one, whatever the operator set.
    near_s = min(cfg.near_interval_s, cfg.idle_interval_s)
    if used >= threshold:
        every = min(cfg.paused_interval_s, near_s)
        due = Due(base + every, PAUSED, every * cfg.jitter)
    else:
        due = Due(base + near_s, NEAR, near_s * cfg.jitter)
    resets = reading.resets_at()
    # A window that resets after this reading was taken: read it just after the reset.
    if resets is not None and reading.observed_at < resets:
        after = resets + cfg.after_reset_s
        if after < due.at:
            due = Due(after, AFTER_RESET, cfg.after_reset_s * cfg.jitter)
    return due


def next_probe(
    account: Account,
    windows: Iterable[QuotaWindow],
    record: ProbeRecord,
    policy: QuotaPolicy,
    cfg: UsageSettings,
    now: float,
) -> Due:
    """When the account's usage should be read next (see the module docstring)."""
    latest = _latest(windows)
    seen = [w.observed_at for w in latest.values()]
    if record.last_at is not None:
        seen.append(record.last_at)
    if not seen:
        due = Due(now, FIRST, cfg.start_spread_s)
    else:
        base = max(seen)
        due = Due(base + cfg.idle_interval_s, IDLE, cfg.idle_interval_s * cfg.jitter)
        for window, reading in latest.items():
            threshold = _threshold(account, policy, window)
            if threshold is None:
                continue
            wanted = _window_due(reading, threshold, base, cfg)
            if wanted is not None and wanted.at < due.at:
                due = wanted
    return _floors(due, record, cfg)


def _floors(due: Due, record: ProbeRecord, cfg: UsageSettings) -> Due:
    if record.last_at is not None and due.at < record.last_at + cfg.min_interval_s:
        due = Due(record.last_at + cfg.min_interval_s, due.why, due.spread_s)
    if record.not_before is not None and due.at < record.not_before:
        spread = min(cfg.failure_backoff_s, record.not_before - due.at) * cfg.jitter
        due = Due(record.not_before, BACKOFF, spread)
    return due


def jittered(due: Due, u: float) -> float:
    """``due.at`` pushed back by ``u`` (uniform in [0, 1)) of its spread: never earlier."""
    return due.at + max(0.0, min(u, 1.0)) * due.spread_s


def backoff_s(fails: int, cfg: UsageSettings) -> float:
    """The wait after ``fails`` consecutive failures: doubling from the base, capped."""
    exponent = min(max(fails, 1) - 1, _MAX_EXPONENT)
    return min(cfg.failure_backoff_max_s, cfg.failure_backoff_s * 2.0**exponent)


def failure(
    fails: int, result: str, cfg: UsageSettings, retry_after_s: float | None = None
) -> tuple[int, float]:
    """A failed probe's consecutive-failure count and wait, from the count before it.

    ``cannot_probe`` keeps the count (nothing failed: the account cannot be read)
    and waits ``cannot_probe_retry_s``; other failures add one and back off, at
    least as long as the upstream's Retry-After.
    """
    if result == "cannot_probe":
        return fails, cfg.cannot_probe_retry_s
    count = fails + 1
    wait = backoff_s(count, cfg)
    if retry_after_s is not None and retry_after_s > wait:
        wait = min(retry_after_s, cfg.failure_backoff_max_s)
    return count, wait
