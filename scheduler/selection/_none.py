"""Nothing fits: "model not served" (4xx, permanent) or "no available accounts" (503).

A 503 tells a gateway to retry; that is only true when some account of the
bucket could serve the model once a deadline passes or a slot frees. When none
supports the model at all, :func:`model_not_served` answers instead, listing
the models the bucket does serve.
"""

from __future__ import annotations

from collections import Counter

from accounts.errors import ModelNotServed, NoAccountAvailable
from accounts.model import Account, model_matches
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


def model_not_served(snap: BucketSnapshot, model: str) -> ModelNotServed | None:
    """The 404 when no account of the bucket supports ``model`` (None when one does)."""
    if any(model_matches(a.models, model) for a in snap.accounts):
        return None
    served = sorted({m for a in snap.accounts for m in a.models})
    return ModelNotServed(
        f"no account in {snap.bucket} serves model {model!r}",
        bucket=str(snap.bucket),
        model=model,
        served=served,
    )


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
