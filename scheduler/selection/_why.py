"""Explain's sentences: the real reason behind each exclusion, with its deadline.

Pure: takes the verdict, the account, its runtime state, the settings and
``now``; no I/O. Times are RFC 3339 (UTC) with the distance from ``now``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from accounts.model import Account
from accounts.rules import Reason, expires_at_ts, quota_pause
from snapshot.settings import Settings

from .store import RuntimeState


def _at(epoch_s: float, now: float) -> str:
    stamp = datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="seconds")
    stamp = stamp.replace("+00:00", "Z")
    left = epoch_s - now
    return f"{stamp} (in {left:.0f} s)" if left >= 0 else f"{stamp} ({-left:.0f} s ago)"


def _until(label: str, deadline: float | None, now: float) -> str:
    if deadline is None:
        return f"{label} (no deadline recorded)"
    return f"{label} until {_at(deadline, now)}"


def why(
    reason: Reason | str | None,
    account: Account,
    state: RuntimeState,
    model: str,
    cfg: Settings,
    now: float,
) -> str:
    """One sentence: why ``account`` is out for ``model`` (or that it is eligible)."""
    if reason is None:
        return f"eligible: {state.leases} of {account.concurrency} slots leased"
    reason = Reason(reason)
    if reason is Reason.RATE_LIMITED:
        return _until("rate-limited", state.rate_limited_until, now)
    if reason is Reason.OVERLOADED:
        return _until("overloaded", state.overloaded_until, now)
    if reason is Reason.TEMP_UNSCHEDULABLE:
        text = _until("temporarily unschedulable", state.unschedulable_until, now)
        return f"{text}: {state.unschedulable_reason or 'no reason recorded'}"
    if reason in (Reason.QUOTA_PAUSED_5H, Reason.QUOTA_PAUSED_7D):
        decision = quota_pause(account, state.windows, cfg.quota, now)
        text = f"quota paused: {decision.why}"
        return text if decision.until is None else f"{text}; until {_at(decision.until, now)}"
    return _static(reason, account, state, model, cfg, now)


def _static(
    reason: Reason, account: Account, state: RuntimeState, model: str, cfg: Settings, now: float
) -> str:
    """Reasons that no clock lifts: the account's own record, the request, the slots."""
    if reason is Reason.MODEL_UNSUPPORTED:
        return f"does not serve model {model!r} (serves: {', '.join(account.models)})"
    if reason is Reason.DISABLED:
        return "status disabled (switched off by an operator)"
    if reason is Reason.ERROR:
        return f"status error: {account.error_reason or 'no reason recorded'}"
    if reason is Reason.NOT_SCHEDULABLE:
        return "schedulable is off (the admin switch)"
    if reason is Reason.EXPIRED:
        expiry = expires_at_ts(account)
        return "expired" if expiry is None else f"expired at {_at(expiry, now)}"
    if reason is Reason.EXCLUDED_BY_REQUEST:
        return "in the request's exclude list"
    if reason is Reason.FULL:
        return f"full: {state.leases} of {account.concurrency} slots leased"
    if reason is Reason.SLOW:
        ttft = f"{state.ttft_ms:.0f} ms" if state.ttft_ms is not None else "unknown"
        return (
            f"slow: time to first token {ttft} over sticky.slow_ttft_ms {cfg.sticky.slow_ttft_ms}"
        )
    return reason.value
