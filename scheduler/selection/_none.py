"""Nothing fits: the "no available accounts" answer, its counts and its retry hint."""

from __future__ import annotations

from collections import Counter

from accounts.errors import NoAccountAvailable
from accounts.model import Account
from accounts.rules import Reason, quota_pause
from snapshot.keys import Bucket
from snapshot.schedule import BucketSnapshot
from snapshot.settings import Settings

from .store import RuntimeState
from .view import RuntimeView

# Hint for "no available accounts" when every candidate was merely full.
FULL_RETRY_S = 1.0
# Hint when only hard reasons (disabled, error, model) excluded everything.
HARD_RETRY_S = 30.0


def no_account(
    bucket: Bucket,
    excluded: dict[str, Reason],
    snap: BucketSnapshot | None,
    view: RuntimeView,
    cfg: Settings,
    now: float,
) -> NoAccountAvailable:
    """The 503 for ``bucket``: every exclusion counted by reason, and when to retry."""
    counts = Counter(r.value for r in excluded.values())
    retry = retry_after_hint(
        [snap.by_id.get(a) if snap is not None else None for a in excluded],
        [view.get(a) for a in excluded],
        list(excluded.values()),
        cfg,
        now,
    )
    return NoAccountAvailable(
        f"no available accounts in {bucket} ({sum(counts.values())} excluded)",
        bucket=str(bucket),
        exclusions=dict(sorted(counts.items())),
        retry_after_s=retry,
    )


def retry_after_hint(
    accounts: list[Account | None],
    states: list[RuntimeState],
    reasons: list[Reason],
    cfg: Settings,
    now: float,
) -> float:
    """Seconds until something could fit: the nearest soft deadline, else a fixed hint."""
    best: float | None = None
    for account, state, reason in zip(accounts, states, reasons, strict=True):
        until: float | None = None
        if reason is Reason.FULL or reason is Reason.SLOW:
            until = now + FULL_RETRY_S
        elif reason is Reason.RATE_LIMITED:
            until = state.rate_limited_until
        elif reason is Reason.OVERLOADED:
            until = state.overloaded_until
        elif reason is Reason.TEMP_UNSCHEDULABLE:
            until = state.unschedulable_until
        elif reason in (Reason.QUOTA_PAUSED_5H, Reason.QUOTA_PAUSED_7D) and account is not None:
            until = quota_pause(account, state.windows, cfg.quota, now).until
        if until is not None and until > now:
            best = until - now if best is None else min(best, until - now)
    return round(best if best is not None else HARD_RETRY_S, 3)
